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
        paired = parse_run(run).paired_base
        assert (paired.name if paired else None) == base, run
        assert paired is None or paired == parse_run(base)  # the value its name parses to
    assert parse_run("sgd+sngrad1@0.1").fixed_alpha == 0.1
    assert parse_run("sgd+sngrad1").fixed_alpha is None
    assert parse_run("sgd+sngrad3@0.1").variant == "III"
    assert parse_run("sgd+cv").variant is None
    assert parse_run("sgd+sngrad2@0.05").optimizer == "sgd+sngrad2"


# what the engine, the step, the registry and the cost model ask of a parsed run
ASKED = {
    # run: (needs_variance, needs_snapshot, has_momentum, step_kind, alpha_reference)
    "sgd": (False, False, False, "plain", "absolute"),
    "momentum": (False, False, True, "plain", "absolute"),
    "adam": (False, False, False, "plain", "absolute"),
    "msvag": (False, False, False, "plain", "absolute"),
    "adabelief": (False, False, False, "plain", "absolute"),
    "svag": (True, False, False, "moments", "absolute"),
    "sgd+sngrad1": (True, False, False, "moments", "rms"),
    "sgd+sngrad1@0.1": (True, False, False, "moments", "absolute"),
    "sgd+sngrad2": (True, False, False, "moments", "absolute"),
    "momentum+sngrad3": (True, False, True, "moments", "rms"),
    "momentum+sngrad2@0.05~constant": (True, False, True, "moments", "absolute"),
    "adam+sngrad3": (True, False, False, "moments", "rms"),
    "sgd+cv": (False, True, False, "cv", "absolute"),
    "sgd+svrg~constant": (False, True, False, "svrg", "absolute"),
}


@pytest.mark.parametrize(("run", "asked"), sorted(ASKED.items()))
def test_a_parsed_run_answers_what_the_code_asks(run, asked):
    parts = parse_run(run)
    assert (parts.needs_variance, parts.needs_snapshot, parts.has_momentum, parts.step_kind,
            parts.alpha_reference) == asked
    assert str(parts) == parts.name == run  # the canonical spelling, in paths and CSV cells
    assert f"{parts}" == run


def test_every_registry_optimizer_is_asked():
    # the parametrised table above covers each kind of optimizer; every registry name parses
    # and answers the same questions as its parsed optimizer does
    for name in OPTIMIZERS:
        run, optimizer = parse_run(name), parse_optimizer(name)
        assert run == optimizer
        assert run.step_kind in ("plain", "moments", "cv", "svrg")
        assert run.needs_snapshot == (run.step_kind in ("cv", "svrg"))
        assert run.needs_variance == (run.step_kind == "moments")


def test_paired_base_keeps_the_schedule_and_drops_the_alpha():
    assert parse_run("sgd+sngrad1@0.1~constant").paired_base == parse_run("sgd~constant")
    assert parse_run("adabelief~cosine").paired_base.name == "adam~cosine"
    assert parse_run("sgd~constant").paired_base is None
    assert parse_run("sgd+cv~constant").schedule_or("cosine") == "constant"
    assert parse_run("sgd+cv").schedule_or("cosine") == "cosine"


@pytest.mark.parametrize("module", ["sngrad.config", "sngrad.names", "sngrad.layout"])
def test_the_workflow_side_imports_no_jax(module):
    # every Snakemake parse imports these; jax would cost more than a second each time
    code = (f"import sys, {module}; import sngrad.config as c; "
            "c.load_profile('config/smoke.yaml'); "
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)
