"""Every tuning and training job says in its log where it stands (epoch, loss, elapsed, ETA)."""

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import binary_splits, spec_dict

from sngrad import profile, resources
from sngrad.cli import main
from sngrad.config import load_profile
from sngrad.names import parse_run
from sngrad.profile import DEFAULT_PROFILE, read_yaml, split_sizes
from sngrad.spec import parse_spec
from sngrad.train import TRAIN_MODE, RunConfig, run_sweep
from sngrad.train.progress import EpochProgress, duration, loss_summary

SPEC = spec_dict(epochs=4)
LINE = re.compile(
    r"^sngrad: progress (?P<label>.+): epoch (?P<epoch>\d+)/(?P<total>\d+), "
    r"loss (?P<loss>\S+) \(median of (?P<k>\d+) run\(s\)(, \d+ not finite)?\), "
    r"elapsed (?P<elapsed>.+?), "
    r"remaining ~(?P<left>.+)$"
)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_give_epoch_loss_elapsed_and_remaining_time():
    out, clock = io.StringIO(), Clock()
    with EpochProgress("train sgd bs64", 10, stream=out, every_s=10, heartbeat_s=0,
                       clock=clock) as progress:  # fmt: skip
        for epoch in range(1, 11):
            clock.now += 4.0  # 4 s per epoch
            progress.update(epoch, np.array([0.5, 0.25, np.nan]))
    lines = out.getvalue().splitlines()
    # the first epoch, then one line each 10 s (every third epoch of 4 s), and the last
    assert [int(LINE.match(x)["epoch"]) for x in lines] == [1, 4, 7, 10]
    first = LINE.match(lines[0])
    assert first["label"] == "train sgd bs64" and first["total"] == "10"
    assert lines[0].endswith("elapsed 4 s, remaining ~36 s")
    assert "loss 0.375 (median of 3 run(s), 1 not finite)" in lines[0]
    assert lines[2].endswith("elapsed 28 s, remaining ~12 s")
    assert lines[3].endswith("elapsed 40 s, remaining ~0 s")


def test_a_resumed_job_estimates_from_the_epochs_it_trained_itself():
    out, clock = io.StringIO(), Clock()
    progress = EpochProgress("tune", 100, start=90, stream=out, heartbeat_s=0, clock=clock)
    clock.now += 6.0
    progress.update(91, [1.0])
    progress.close()
    assert out.getvalue().strip().endswith("epoch 91/100, loss 1 (median of 1 run(s)), "
                                           "elapsed 6 s, remaining ~54 s")


def test_a_long_epoch_still_writes_a_line_every_heartbeat():
    out = io.StringIO()
    progress = EpochProgress("train", 3, stream=out, heartbeat_s=0.2)
    time.sleep(0.75)  # inside one long first epoch
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2
    assert all(re.match(r"sngrad: progress train: epoch 1/3 running, elapsed \d+ s, "
                        r"remaining unknown until an epoch ends$", x) for x in lines)
    assert not progress._thread.is_alive()  # close() ends the heartbeat


def test_formatting():
    assert [duration(s) for s in (41, 234, 9000)] == ["41 s", "3.9 min", "2.5 h"]
    assert loss_summary([np.inf, np.nan]) == "loss not finite in all 2 run(s)"
    assert loss_summary(0.5) == "loss 0.5 (median of 1 run(s))"


def test_a_sweep_writes_one_line_per_epoch_to_its_log_and_the_same_results(capsys):
    """stderr is the job's log (not a terminal): each epoch leaves a line; the numbers are
    those of a sweep without progress lines."""
    splits = binary_splits(96)
    spec = parse_spec(SPEC)
    configs = [RunConfig(0.1, None, None, s) for s in (1, 2)]
    import sngrad.train.progress as progress_module

    every = progress_module.EVERY_S
    progress_module.EVERY_S = 0.0  # a line at every epoch of this fast sweep
    try:
        with_lines = run_sweep(splits, parse_run("sgd"), 16, spec, configs, TRAIN_MODE,
                               progress="train t")
    finally:
        progress_module.EVERY_S = every
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sngrad: progress")]
    assert [int(LINE.match(x)["epoch"]) for x in lines] == [1, 2, 3, 4]
    losses = with_lines.records["train_loss"]
    for line, epoch_loss in zip(lines, losses, strict=True):
        assert float(LINE.match(line)["loss"]) == pytest.approx(np.median(epoch_loss), rel=1e-3)
        assert LINE.match(line)["k"] == "2"
    again = run_sweep(splits, parse_run("sgd"), 16, spec, configs, TRAIN_MODE)
    np.testing.assert_array_equal(again.records["train_loss"], losses)


# ----------------------------------------------------------------------------- the config check


def pinned() -> dict:
    """config/default.yaml with the sizes these tests' numbers follow from pinned."""
    config = read_yaml(DEFAULT_PROFILE)
    config.update(profile="probe", datasets=["mnist", "fashion_mnist"], batch_sizes=[128],
                  optimizers=[r for r in config["optimizers"] if "~" not in r])  # no arm
    config["model"]["hidden"] = [64]
    config["data"].update(val_fraction=0.0833333, train_size=8000)
    config["train"].update(epochs=10, seeds=list(range(1, 11)), snapshot_every=1)
    config["tune"].update(seeds=[100, 101], lr_min=0.001, lr_max=1.0, lr_per_decade=2,
                          axis_points=5, one_minus_momentum=[0.01, 0.3])
    config["noise"].update(min_batch_size=8, max_batch_size=4096, batches=32)
    config["resources"]["mem_mb"].update(tune=3000, train=3000)
    return config


def probe(tmp_path, edit) -> Path:
    """The pinned profile with ``edit`` applied, as a file."""
    config = pinned()
    edit(config)
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_network_too_large_for_the_job_or_the_machine_is_one_line_naming_the_key(
    tmp_path, capsys
):
    path = probe(tmp_path, lambda c: c["model"].update(hidden=[100000, 100000]))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2  # one line per job kind
    # the largest tuning round: momentum+sngrad1's 7 steps x 5 alphas x 5 momenta x 2 seeds
    assert err[0].startswith(f"sngrad: error: {path}: model.hidden = [100000, 100000]: a tune "
                             "job on mnist needs at least 40,715,207 MB (350 vmapped run(s) of "
                             "10,079,600,010 parameters, batch 128), above "
                             "resources.mem_mb.tune = 3000")
    assert err[1].startswith(f"sngrad: error: {path}: model.hidden = [100000, 100000]: a train "
                             "job on mnist needs at least 1,163,524 MB (10 vmapped run(s)")


def test_a_long_run_of_a_small_network_is_warned_by_its_steps(tmp_path, capsys):
    """The smoke profile's network is tiny, so its FLOPs stay far below the default's even
    at a million epochs; its training steps do not."""
    path = tmp_path / "long.yaml"
    config = read_yaml("config/smoke.yaml")
    config["train"]["epochs"] = 1000000
    path.write_text(yaml.safe_dump(config))
    assert resources.work(config)[0] < resources.WORK_WARNING_RATIO * resources.work(
        read_yaml(DEFAULT_PROFILE))[0]
    assert main(["config", "check", str(path)]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sngrad: warning: {path}: about ")
    assert "times the training steps of the default profile" in line


def test_a_long_benchmark_is_warned(tmp_path):
    config = pinned()
    config["benchmark"]["repeats"] *= 100
    (line,) = resources.work_warnings(config, "probe.yaml", pinned())
    assert line.startswith("probe.yaml: the benchmark (`make bench`, not part of a run) times "
                           "about 100 times the default's repeats")
    assert "check benchmark.repeats" in line


def test_the_key_that_multiplies_the_runs_is_named(tmp_path):
    config = read_yaml(probe(tmp_path, lambda c: c["tune"].update(lr_per_decade=100000)))
    (line,) = resources.memory_problems(config, machine=24000.0)
    # 300,001 rates x 5 x 5 x 2 seeds
    assert line.startswith("tune.lr_per_decade = 100000: a tune job on mnist needs at least "
                           "14,156,055 MB (15,000,050 vmapped run(s) of 50,890 parameters")
    assert "above resources.mem_mb.tune = 3000 and this machine's 24000 MB" in line
    # 239 MB for the interpreter and the splits, 0.94 MB per run: 10 seeds need 248 MB
    config = read_yaml(probe(tmp_path, lambda c: c["resources"]["mem_mb"].update(train=245)))
    (line,) = resources.memory_problems(config, machine=24000.0)
    assert line.startswith("train.seeds = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]: a train job on "
                           "mnist needs at least 248 MB (10 vmapped run(s)")
    assert line.endswith("above resources.mem_mb.train = 245; allowed: a network, batch size "
                         "and run count that fit, or a larger resources.mem_mb.train on a "
                         "machine that has it")
    config = read_yaml(probe(tmp_path, lambda c: c["resources"]["mem_mb"].update(train=200)))
    (line,) = resources.memory_problems(config, machine=24000.0)
    assert line.startswith("resources.mem_mb.train = 200: a train job on mnist")


def test_jobs_sharing_a_gpu_are_held_to_its_memory(tmp_path):
    """With an accelerator, ``jobs`` tune or train jobs at once (their arrays, without the
    interpreter) must fit its memory: the line names accelerator.memory_mb and the GPU."""
    config = read_yaml("config/scale.yaml")
    assert resources.memory_problems(config, machine=24000.0) == []
    one = resources.job_mb(profile.architecture(config, "mnist"), 1024, 10,
                           sum(split_sizes(config, "mnist"))) - resources.BASELINE_MB
    config["accelerator"].update(memory_mb=int(3.5 * one), jobs=4)  # 3 train jobs fit, 4 not
    lines = resources.memory_problems(config, machine=10**7)
    train = next(line for line in lines if " train job(s)" in line)
    assert train.startswith(f"accelerator.memory_mb = {int(3.5 * one)}: 4 train job(s) on "
                            f"mnist at once need at least {4 * one:,.0f} MB of "
                            f"{config['accelerator']['name']} (10 vmapped run(s)")
    assert train.endswith("allowed: fewer accelerator.jobs, or a network, batch size and run "
                          "count that fit")
    config["accelerator"].update(jobs=3)
    assert not any(" train job(s)" in line
                   for line in resources.memory_problems(config, machine=10**7))


def test_the_shipped_profiles_fit(capsys):
    for name in ("smoke", "quick", "default", "paper", "scale"):
        load_profile(f"config/{name}.yaml")
    assert "error" not in capsys.readouterr().err
    assert resources.memory_problems(pinned(), machine=4000.0) == []


def test_far_more_work_than_the_default_warns_with_the_time(tmp_path, capsys):
    long = read_yaml(probe(tmp_path, lambda c: c["train"].update(epochs=1000000)))
    (line,) = resources.work_warnings(long, "probe.yaml", pinned())
    # the run-steps grow 100,000-fold, the FLOPs 97,923-fold (the noise study's do not grow):
    # the larger ratio is the better bound on the time. By hand (round 0 and the 2-point
    # refinement, x 2 tuning seeds, + 10 final seeds): 10 runs tuning the rate alone
    # (7 + 2) x 2 + 10 = 28, 5 runs with alpha or momentum (35 + 2) x 2 + 10 = 84, and
    # momentum+sngrad1 with both (175 + 2) x 2 + 10 = 364: 280 + 420 + 364 = 1,064 runs, and
    # the reference run: 1,065 runs x 62 steps x 10 epochs x 2 datasets = 1,320,600
    assert line.startswith("probe.yaml: about 100,000 times the training steps of the default "
                           "profile (132,060,000,000 run-steps against 1,320,600)")
    assert "that is about 100,000 h" in line
    wide = read_yaml(probe(tmp_path, lambda c: c["model"].update(hidden=[4096, 4096])))
    (line,) = resources.work_warnings(wide, "probe.yaml", pinned())
    assert line.startswith("probe.yaml: about ") and "times the counted work" in line
    twice = read_yaml(probe(tmp_path, lambda c: c["train"].update(epochs=20)))
    assert resources.work_warnings(twice, "probe.yaml", pinned()) == []
    load_profile(probe(tmp_path, lambda c: c["train"].update(epochs=1000000)))  # the check
    (printed,) = capsys.readouterr().err.splitlines()
    assert printed.startswith(f"sngrad: warning: {tmp_path / 'probe.yaml'}: about ")
