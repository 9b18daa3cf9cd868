"""The install contract: one lock, the same pins in environment.yml, a working entry point."""

import subprocess
import sys

import pytest
from conftest import ROOT

from sngrad.cli import COMMANDS, main


def _pins(lines):
    return {
        line.strip().lstrip("- ").strip()
        for line in lines
        if "==" in line and not line.lstrip().startswith("#")
    }


def test_environment_yml_has_the_same_pins_as_the_lock():
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    env = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert lock, "requirements.lock pins nothing"
    assert env == lock


def test_lock_pins_every_core_dependency():
    names = {
        pin.split("==")[0].lower()
        for pin in _pins((ROOT / "requirements.lock").read_text().splitlines())
    }
    core = {
        "jax",
        "jaxlib",
        "optax",
        "snakemake",
        "jupytext",
        "papermill",
        "pandas",
        "matplotlib",
        "pytest",
        "pooch",
        "jinja2",
        "scikit-learn",
        "mlxtend",
        "mnist1d",
        "hypothesis",
        "ruff",
    }
    assert core <= names, f"missing from the lock: {sorted(core - names)}"


def test_unknown_command_is_a_one_line_error(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "frobnicate" in err and all(name in err for name in COMMANDS)


@pytest.mark.parametrize("module, function", [(m, f) for m, f, _ in COMMANDS.values()])
def test_every_command_points_at_a_callable(module, function):
    import importlib

    assert callable(getattr(importlib.import_module(module), function))


def test_python_dash_m_entry_point_prints_usage():
    out = subprocess.run(
        [sys.executable, "-m", "sngrad", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: python -m sngrad" in out.stdout


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: python -m sngrad" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "sngrad"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: python -m sngrad" in out.stderr
