"""The constant-rate arm: ``~schedule`` run names, their checks, their training, and the test
of the theory's prediction (sngrad.names, sngrad.config, sngrad.train.commands,
sngrad.analysis.schedules.schedule_contrast)."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import spec_dict

from sngrad.analysis import paired, schedules
from sngrad.config import rule_problems
from sngrad.errors import SngradError
from sngrad.names import format_run, parse_run
from sngrad.spec import parse_spec
from sngrad.train.commands import own_schedule


def test_a_schedule_suffix_is_part_of_the_run_name_and_of_its_base():
    run = parse_run("sgd+sngrad1@0.1~constant")
    assert (run.optimizer, run.fixed_alpha, run.schedule) == ("sgd+sngrad1", 0.1, "constant")
    assert run.name == "sgd+sngrad1@0.1~constant" == format_run("sgd+sngrad1", 0.1, "constant")
    assert parse_run("sgd+cv~constant").paired_base.name == "sgd~constant"
    assert parse_run("adabelief~constant").paired_base.name == "adam~constant"
    assert parse_run("sgd~constant").paired_base is None
    assert parse_run("sgd+cv").paired_base.name == "sgd"
    assert parse_run("sgd+cv~constant").schedule_or("cosine") == "constant"
    assert parse_run("sgd+cv").schedule_or("cosine") == "cosine"
    # the arm's alpha reference follows its alpha, not its schedule
    assert parse_run("sgd+sngrad1~constant").alpha_reference == "rms"
    for bad, text in (("sgd~step", "unknown schedule 'step'"), ("sgd~", "unknown schedule ''"),
                      ("sgd+sngrad1~constant@0.1", "unknown schedule 'constant@0.1'")):
        with pytest.raises(SngradError, match=text):
            parse_run(bad)


def _quick(**changes):
    config = yaml.safe_load(open("config/quick.yaml"))
    config.update(changes)
    return config


def test_the_profile_check_names_a_redundant_arm_and_an_arm_without_its_base():
    assert rule_problems(_quick()) == []
    (line,) = rule_problems(_quick(optimizers=["sgd", "sgd~cosine"]))
    assert "~cosine is the profile's own schedule (train.schedule); allowed: 'sgd'" in line
    (line,) = rule_problems(_quick(optimizers=["sgd", "sgd+cv", "sgd+cv~constant"]))
    assert "its base 'sgd~constant'" in line and "\n" not in line


SPEC = spec_dict(hidden=[4], epochs=2, seeds=[1], schedule="cosine")


def test_an_arm_trains_with_its_own_schedule_and_the_rest_with_the_profiles():
    spec = parse_spec(SPEC)
    assert own_schedule(spec, parse_run("sgd")).schedule == "cosine"
    arm = own_schedule(spec, parse_run("sgd~constant"))
    assert arm.schedule == "constant" and arm.tune == spec.tune and arm.seeds == spec.seeds


def test_an_arm_run_is_the_constant_rate_run_bit_for_bit(tmp_path):
    """``train`` of ``sgd~constant`` under a cosine profile equals ``sgd`` under a constant
    profile: the suffix changes the schedule and nothing else."""
    from conftest import toy_splits

    from sngrad.data import save_splits
    from sngrad.io import write_json
    from sngrad.train.commands import train

    data = tmp_path / "toy.npz"
    save_splits(toy_splits(), data)
    outs = {}
    for run, schedule in (("sgd~constant", "cosine"), ("sgd", "constant"), ("sgd", "cosine")):
        spec = parse_spec({**SPEC, "schedule": schedule})
        out = tmp_path / f"{run}-{schedule}"
        write_json(out / "best.json", {"run": run, "batch_size": 16, "learning_rate": 0.1,
                                       "momentum": None, "alpha": None, "all_diverged": False})
        train(data, parse_run(run), 16, spec, out / "best.json", out)
        outs[(run, schedule)] = pd.read_csv(out / "metrics.csv")
    arm, constant = outs[("sgd~constant", "cosine")], outs[("sgd", "constant")]
    assert set(arm["optimizer"]) == {"sgd~constant"}
    np.testing.assert_array_equal(arm["train_loss"], constant["train_loss"])
    assert not np.array_equal(arm["train_loss"], outs[("sgd", "cosine")]["train_loss"])


def _metrics(values: dict) -> pd.DataFrame:
    return pd.DataFrame([
        {"optimizer": run, "batch_size": 16, "seed": seed, "epoch": 1, "train_loss": loss,
         "test_accuracy": 0.9, "diverged": False}
        for run, losses in values.items() for seed, loss in enumerate(losses, start=1)])


RUNS = ["sgd", "sgd+cv", "sgd~constant", "sgd+cv~constant"]
PARSED = [parse_run(run) for run in RUNS]


def test_the_prediction_holds_when_the_constant_rate_gain_is_larger():
    """Per seed: the cv arm lowers the constant-rate loss by 0.05 and the cosine one by 0.01.
    The contrast is (const - decay) = -0.04 per seed, so the prediction holds."""
    base = np.linspace(0.30, 0.39, 10)
    noise = np.array([0.001, -0.002, 0.0015, 0.0, -0.001, 0.002, -0.0005, 0.0005, 0.001, -0.001])
    table = schedules.schedule_contrast(_metrics({
        "sgd": base, "sgd+cv": base - 0.01 + noise,
        "sgd~constant": base + 0.1, "sgd+cv~constant": base + 0.1 - 0.05 + noise / 2,
    }), PARSED, [16], dataset="toy", primary="cosine")
    (row,) = table.to_dict("records")
    assert (row["run"], row["arm"], row["n_pairs"]) == ("sgd+cv", "sgd+cv~constant", 10)
    assert row["decay_mean"] == pytest.approx(-0.01 + noise.mean())
    assert row["constant_mean"] == pytest.approx(-0.05 + noise.mean() / 2)
    assert row["contrast_mean"] == pytest.approx(-0.04 - noise.mean() / 2)
    assert row["constant_high"] < 0 and row["contrast_high"] < 0 and row["held"]
    assert row["p_contrast"] == pytest.approx(2 / 1024)
    low, high = paired.sign_flip_interval(-0.04 - noise / 2, 0.05)
    assert (row["contrast_low"], row["contrast_high"]) == pytest.approx((low, high))


def test_the_prediction_fails_when_the_gain_is_the_same_under_both_schedules():
    base = np.linspace(0.30, 0.39, 10)
    noise = np.array([0.001, -0.002, 0.0015, 0.0, -0.001, 0.002, -0.0005, 0.0005, 0.001, -0.001])
    table = schedules.schedule_contrast(_metrics({
        "sgd": base, "sgd+cv": base - 0.03 + noise,
        "sgd~constant": base + 0.1, "sgd+cv~constant": base + 0.1 - 0.03 - noise[::-1],
    }), PARSED, [16], dataset="toy", primary="cosine")
    (row,) = table.to_dict("records")
    assert row["constant_high"] < 0  # the arm still gains at a constant rate
    assert row["contrast_low"] < 0 < row["contrast_high"] and not row["held"]


def test_no_contrast_without_both_arms_or_under_a_constant_profile():
    values = {r: np.linspace(0.3, 0.4, 10) for r in RUNS}
    assert schedules.schedule_contrast(_metrics(values), PARSED[:3], [16], dataset="toy",
                                    primary="cosine").empty
    assert schedules.schedule_contrast(_metrics(values), PARSED, [16], dataset="toy",
                                    primary="constant").empty
    assert math.isnan(paired.sign_flip_interval([0.1], 0.05)[0])
