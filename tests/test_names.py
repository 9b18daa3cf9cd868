"""Run names (sngrad.names): the grammar, the registry lists, the paired base; no jax."""

import subprocess
import sys

import pytest

from sngrad import names
from sngrad.errors import SngradError
from sngrad.names import BASES, OPTIMIZERS, RunName, parse_optimizer, parse_run


def test_names_are_the_study_registry():
    assert BASES == ("sgd", "momentum", "adam", "msvag", "svag", "adabelief")
    assert len(OPTIMIZERS) == len(set(OPTIMIZERS)) == 6 + 3 * 3 + 2
    assert {"sgd+cv", "sgd+svrg", "adam+sngrad3"} <= set(OPTIMIZERS)
    assert not any(n.startswith(("msvag+", "svag+", "adabelief+")) for n in OPTIMIZERS)
    assert parse_optimizer("sgd") == RunName("sgd", "sgd", None, None, None)
    assert parse_optimizer("adam+sngrad1") == RunName("adam+sngrad1", "adam", "I", None, None)
    assert parse_optimizer("momentum+sngrad2") == RunName(
        "momentum+sngrad2", "momentum", "II", None, None)
    assert parse_optimizer("sgd+cv") == RunName("sgd+cv", "sgd", None, "optimal", None)
    assert parse_optimizer("sgd+svrg") == RunName("sgd+svrg", "sgd", None, 1.0, None)


def test_run_names_split_into_optimizer_and_fixed_alpha():
    assert parse_run("sgd+sngrad1@0.1") == RunName("sgd+sngrad1", "sgd", "I", None, 0.1)
    assert parse_run("sgd+sngrad1@0.1").name == "sgd+sngrad1@0.1"
    assert parse_run("adam") == RunName("adam", "adam", None, None, None)
    assert names.format_run("sgd+sngrad2", 0.050) == "sgd+sngrad2@0.05"
    assert names.format_run("adam") == "adam"
    for bad, needle in [("sgd@0.1", r"needs a \+sngrad"), ("sgd+sngrad1@x", "must be a number"),
                        ("sgd+sngrad1@-1", "finite and > 0"), ("sgdd", "unknown optimizer"),
                        ("sgd+sngrad1@0.10", r"write it as 'sgd\+sngrad1@0.1'"),
                        ("sgd+sngrad1@nan", "finite and > 0")]:
        with pytest.raises(SngradError, match=needle):
            parse_run(bad)
    with pytest.raises(SngradError, match="must be a string"):
        parse_run(1.0)


def test_paired_base_follows_the_contract():
    cases = {
        "sgd+sngrad1": "sgd",
        "momentum+sngrad2": "momentum",
        "adam+sngrad3": "adam",
        "sgd+sngrad2@0.05": "sgd",
        "svag": "sgd",
        "msvag": "sgd",
        "adabelief": "adam",
        "sgd+cv": "sgd",
        "sgd+svrg": "sgd",
        "sgd": None,
        "momentum": None,
        "adam": None,
    }
    for run, base in cases.items():
        assert names.paired_base(run) == base, run
    assert names.fixed_alpha("sgd+sngrad1@0.1") == 0.1
    assert names.fixed_alpha("sgd+sngrad1") is None
    assert names.variant_of("sgd+sngrad3@0.1") == "III"
    assert names.variant_of("sgd+cv") is None
    assert names.optimizer_of("sgd+sngrad2@0.05") == "sgd+sngrad2"


@pytest.mark.parametrize("module", ["sngrad.config", "sngrad.names", "sngrad.layout"])
def test_the_workflow_side_imports_no_jax(module):
    # every Snakemake parse imports these; jax would cost more than a second each time
    code = (f"import sys, {module}; import sngrad.config as c; "
            "c.load_profile('config/smoke.yaml'); "
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)
