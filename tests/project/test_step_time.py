"""The step-time benchmark's consistency rule and argument parsing (no timing here)."""

import importlib.util

import pytest
from conftest import ROOT

PATH = ROOT / "benchmarks" / "step_time.py"
spec = importlib.util.spec_from_file_location("step_time", PATH)
step_time = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_time)


def _res(median, sgd, spread=0.1, sgd_spread=0.1):
    return {"median_ms": median, "sgd_ms": sgd, "ratio": median / sgd, "spread": spread,
            "sgd_spread": sgd_spread}


def test_rows_that_contradict_the_table_are_named():
    sgd_row = _res(1.0, 1.0)
    assert step_time._disagreement("sgd+sngrad1", _res(1.5, 1.05), sgd_row) == ""
    assert step_time._disagreement("sgd+sngrad1", _res(0.9, 1.0), sgd_row) == "faster than sgd"
    assert "sgd reference off" in step_time._disagreement("sgd+cv", _res(3.0, 1.5), sgd_row)
    # within the larger spread of the two: consistent
    assert step_time._disagreement("sgd+cv", _res(3.0, 1.4, sgd_spread=0.5), sgd_row) == ""
    assert step_time._disagreement("sgd", _res(1.0, 1.0), None) == ""


def test_networks_and_methods_parse_or_fail_with_the_allowed_values():
    assert step_time._networks("784-64-10,784-1024-1024-1024-10") == [
        [784, 64, 10], [784, 1024, 1024, 1024, 10]]
    with pytest.raises(Exception, match="expected comma-separated networks"):
        step_time._networks("784x64")
    with pytest.raises(Exception, match="valid: sgd"):
        step_time._methods(step_time.STEP_METHODS)("sgd,adamw")
