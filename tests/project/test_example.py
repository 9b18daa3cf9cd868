"""The flax example trains for a few steps offline (scikit-learn's embedded digits)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

EXAMPLE = ROOT / "examples" / "flax_cnn_fashion.py"


def _load():
    spec = importlib.util.spec_from_file_location("flax_cnn_fashion", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["noise", "cv"])
def test_example_trains_a_flax_cnn_offline(method, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SNGRAD_DATA_DIR", str(tmp_path))
    accuracy = _load().main(["--dataset", "digits", "--steps", "40", "--batch", "32",
                             "--method", method])
    out = capsys.readouterr().out
    assert "step     0" in out and "step    39" in out
    # 10 classes: chance is 0.1; 40 steps of either method reach far above it
    assert accuracy > 0.6
