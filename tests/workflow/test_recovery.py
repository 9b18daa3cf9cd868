"""Recovery loses nothing done: a corrupt splits file is rebuilt in place by the command its
error prints; an all-diverged learning-rate grid is extended downward."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, SNAKEMAKE, binary_splits, copy_tree, spec_dict

from sngrad.data import load_splits, prepare
from sngrad.data.recovery import repair
from sngrad.errors import SngradError
from sngrad.names import parse_run
from sngrad.spec import parse_spec
from sngrad.train import protocol


def built(tmp_path: Path) -> tuple[Path, bytes, int]:
    """A workflow-placed digits splits file, its bytes, and its sidecar's time (an hour ago)."""
    path = tmp_path / "results" / "rec" / "data" / "digits.npz"
    prepare("digits", path, seed=0, val_fraction=0.1)
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for name in (path, path.with_suffix(".json")):
        os.utime(name, ns=(an_hour_ago, an_hour_ago))
    return path, path.read_bytes(), an_hour_ago


def test_a_corrupt_splits_file_is_rebuilt_with_the_same_bytes_and_time(tmp_path, capsys):
    path, good, stamp = built(tmp_path)
    path.write_bytes(good[: len(good) // 2])  # truncated; its time is now
    with pytest.raises(SngradError, match=r"rebuild it with `snakemake --cores 4 --configfile "
                                          r"config/rec\.yaml`"):
        load_splits(path)
    line = repair(path, {hashlib.sha256(good).hexdigest()})  # what the tuning results read
    assert line == (f"{path}: was corrupt; rebuilt from digits with the settings of "
                    f"{path.with_suffix('.json')} (the same bytes as before, so the results "
                    "made from it are kept)")
    assert path.read_bytes() == good
    assert path.stat().st_mtime_ns == stamp == path.with_suffix(".json").stat().st_mtime_ns
    assert repair(path) is None  # intact now: nothing to do


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_a_damaged_sidecar_of_a_good_splits_file_is_rewritten_with_the_same_bytes(tmp_path,
                                                                                damage):
    """The sidecar is the record the .npz also holds: rewritten from it, bytes and time as
    before, so the report and notebooks read it again and nothing is redone."""
    path, good, stamp = built(tmp_path)
    sidecar = path.with_suffix(".json")
    original = sidecar.read_bytes()
    if damage == "truncate":
        sidecar.write_bytes(original[: len(original) // 2])
    else:
        sidecar.unlink()
    line = repair(path)
    assert line == (f"{sidecar}: was damaged or missing; rewritten from the record in {path} "
                    "(the same bytes as before, so the results made from it are kept)")
    assert sidecar.read_bytes() == original and path.read_bytes() == good
    assert sidecar.stat().st_mtime_ns == stamp == path.stat().st_mtime_ns
    assert repair(path) is None


def test_results_made_from_other_bytes_are_redone(tmp_path):
    path, good, stamp = built(tmp_path)
    path.write_bytes(good[:100])
    line = repair(path, {"0" * 64})
    assert line.endswith("but the results made from it read other bytes, so they are redone")
    assert path.read_bytes() == good and path.stat().st_mtime_ns > stamp
    path.write_bytes(good[:100])
    path.with_suffix(".json").write_text("{")
    assert repair(path).endswith("removed, so this run builds it again (and redoes what was "
                                 "made from it)")
    assert not path.exists()


# ----------------------------------------------------------------------------- all diverged


def test_an_all_diverged_grid_extends_downward_until_the_lower_bound():
    spec = spec_dict(tune={"lr_min": 0.1, "lr_max": 0.32, "lr_bounds": [0.01, 10.0]})
    tune = parse_spec(spec).tune
    for name, alphas in (("sgd", 1), ("sgd+sngrad1", 3)):
        run = parse_run(name)
        first = protocol.tuned_axes(run, tune)[0]

        def step_size(t, first=first):
            return t.step if first == "step" else t.learning_rate

        tried = protocol.initial_trials(run, tune, 16)
        rounds = []
        while True:
            new, status = protocol.extension(run, tune, 16, tried, None)
            if not new:
                break
            # one step size below all tried, crossed with every tried alpha
            assert len(new) == alphas and max(map(step_size, new)) < min(map(step_size, tried))
            rounds.append(sorted({round(step_size(t), 12) for t in new}))
            tried += new
        assert status == {first: protocol.BOUND}  # stopped by the lower bound
        assert rounds == [[0.031622776602], [0.01]]  # 0.1 / sqrt(10), then the bound
    # a setting that converges in the extended round ends the downward search: its lr is the
    # smallest tried, so the next round goes further down as an ordinary extension
    run = parse_run("sgd")
    tried = protocol.initial_trials(run, tune, 16)
    new, _ = protocol.extension(run, tune, 16, tried, None)
    tried += new
    lowest = min(range(len(tried)), key=lambda i: tried[i].learning_rate)
    assert protocol.extension(run, tune, 16, tried, lowest)[0][0].learning_rate < (
        tried[lowest].learning_rate)


def test_tuning_output_says_all_diverged_at_the_bound(tmp_path):
    """The tune command trains the downward rounds and best.json records where it stopped."""

    from sngrad.data import save_splits
    from sngrad.train import tune

    data = tmp_path / "toy.npz"
    save_splits(binary_splits(64), data)
    spec = parse_spec(spec_dict(hidden=[4], epochs=1, diverge_loss=1e-9,  # all diverge
                      tune={"lr_min": 0.1, "lr_max": 0.32, "lr_bounds": [0.01, 10.0]}))
    best = tune(data, parse_run("sgd"), 16, spec, tmp_path / "out")
    assert best["all_diverged"] and best["at_bound"]
    assert best["trials"] == 4 and best["rounds"] == 3  # 0.1 and 0.32, then 0.032, then 0.01
    rates = sorted({float(r.split(",")[1]) for r in
                    (tmp_path / "out" / "tuning.csv").read_text().splitlines()[1:]})
    assert rates == pytest.approx([0.01, 0.1 / 10**0.5, 0.1, 0.1 * 10**0.5])


# ----------------------------------------------------------------------------- the workflow


@pytest.mark.slow
def test_corrupt_splits_with_completed_tuning_recover_in_the_printed_command(tmp_path):
    work = copy_tree(tmp_path)
    profile = yaml.safe_load((work / "config" / "smoke.yaml").read_text())
    profile.update(profile="rec", optimizers=["sgd"])
    profile["theory"]["enabled"] = False
    (work / "config" / "rec.yaml").write_text(yaml.safe_dump(profile))
    snakemake = [*SNAKEMAKE, "--cores", "1"]
    base = work / "results" / "rec"
    tuned = base / "digits" / "sgd" / "bs64"
    first = subprocess.run([*snakemake, str(tuned.relative_to(work) / "best.json"),
                            "--configfile", "config/rec.yaml"],
                           cwd=work, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tuned.iterdir() if p.is_file()}
    npz = base / "data" / "digits.npz"
    good = npz.read_bytes()
    npz.write_bytes(good[: len(good) // 2])  # a disk error after tuning finished
    with pytest.raises(SngradError) as err:  # what the next job that reads it says
        load_splits(npz)
    printed = str(err.value).split("rebuild it with `", 1)[1].split("`", 1)[0]
    assert printed == "snakemake --cores 4 --configfile config/rec.yaml"

    again = subprocess.run([sys.executable, "-m", *printed.split()], cwd=work,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"sngrad: {npz.relative_to(work)}: was corrupt; rebuilt" in again.stderr
    assert npz.read_bytes() == good
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept} == kept  # tuning kept
    assert (base / "report.md").is_file()
    assert json.loads((tuned / "best.json").read_text())["run"] == "sgd"


# ------------------------------------------------------------------ one line, no traceback


def test_a_file_where_the_out_folder_should_be_is_one_line(tmp_path, capsys):
    from sngrad.cli import main

    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "digits.npz"
    assert main(["data", "prepare", "digits", "--out", str(out)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sngrad: error: {tmp_path / 'afile'}: ")
    assert line.endswith("move it away or choose another path")


@pytest.mark.parametrize(
    ("code", "what", "advice"),
    [(28, "No space left on device", "free space on that file system"),
     (30, "Read-only file system", "the file system is read-only: choose a writable location"),
     (5, "Input/output error", "the disk reported an I/O error")],
)
def test_a_full_read_only_or_failing_results_folder_is_one_line(
    tmp_path, monkeypatch, capsys, code, what, advice
):
    from sngrad.cli import main
    from sngrad.data import files

    def fail(*args, **kwargs):
        raise OSError(code, what, str(tmp_path / "results"))

    monkeypatch.setattr(files, "_temp_in", fail)
    assert main(["data", "prepare", "digits", "--out", str(tmp_path / "results/d.npz")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sngrad: error: {tmp_path / 'results'}: {what}; {advice}")


@pytest.mark.parametrize("command", ["tune", "train", "reference"])
def test_an_unwritable_out_dir_is_one_line_before_any_data_or_compilation(
    tmp_path, monkeypatch, capsys, command
):
    """The folder is tried first: the data and hparams files named here do not even exist."""
    from sngrad.cli import main
    from sngrad.profile import read_yaml, training_spec

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "results" / "run"
    spec = training_spec(read_yaml(ROOT / "config" / "smoke.yaml"))
    args = [command, "--data", str(tmp_path / "missing.npz"), "--batch-size", "8",
            "--spec", spec, "--out-dir", str(out)]
    if command != "reference":
        args += ["--optimizer", "sgd"]
    if command != "tune":
        args += ["--hparams", str(tmp_path / "missing.json")]
    assert main(args) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sngrad: error: {out}: No space left on device")
    assert list(tmp_path.iterdir()) == []  # the probe is gone, no folder was made


def test_a_full_disk_during_a_write_names_the_file(tmp_path, monkeypatch, capsys):
    """A write or fsync that fails for want of space names no file; the message must."""
    from sngrad import io
    from sngrad.cli import main

    target = tmp_path / "out" / "metrics.csv"
    target.parent.mkdir()
    target.write_text("previous\n")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        io.write_text(target, "new\n")
    assert caught.value.filename == str(target) and caught.value.errno == 28
    assert target.read_text() == "previous\n"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.csv"]  # no temporary left

    def write_fails(argv):
        io.write_text(target, "new\n")

    from sngrad import config

    monkeypatch.setattr(config, "cli", write_fails)
    assert main(["config", "check", "x.yaml"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sngrad: error: {target}: No space left on device")
    assert "(no path)" not in line


def test_ctrl_c_is_one_short_line(monkeypatch, capsys):
    from sngrad import config
    from sngrad.cli import main

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "cli", interrupted)
    assert main(["config", "check", "x.yaml"]) == 130
    assert capsys.readouterr().err == (
        "sngrad: config interrupted; rerun the same command to resume\n")


def test_nested_config_values_are_typed_as_in_a_profile():
    from snakemake.cli import parse_config

    from sngrad.overrides import typed

    raw = parse_config(["train={epochs: 5, diverge_loss: 1e3, seeds: [1, 2]}",
                        "data={train_size: null, val_fraction: 0.5}", "profile=x"])
    assert raw["train"]["epochs"] == "5"  # what Snakemake hands over
    assert typed(raw) == {"train": {"epochs": 5, "diverge_loss": 1000.0, "seeds": [1, 2]},
                          "data": {"train_size": None, "val_fraction": 0.5}, "profile": "x"}
