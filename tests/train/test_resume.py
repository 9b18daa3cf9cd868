"""A killed training job, restarted, ends with exactly the results of an uninterrupted one.

The subprocess test kills a real ``python -m sngrad train`` with SIGKILL (no handler runs, the
hardest case); SIGTERM's default action is the same abrupt exit, so it needs no test of its own.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import spec_dict

from sngrad.data import Splits, save_splits
from sngrad.names import parse_run

EPOCHS = 100  # long enough (about a second of training) to be killed between checkpoints
SPEC = spec_dict(hidden=[32, 32], epochs=EPOCHS, schedule="cosine", checkpoint_every=5,
                 diverge_loss=1e3, tune={
    "seeds": [0, 1], "lr_min": 0.01, "lr_max": 0.1, "lr_bounds": [0.01, 0.1],
    "one_minus_momentum": 0.1,
    "alpha": {"I": [0.5, 2.0], "II": [0.5, 2.0], "III": [0.05, 0.2]}})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rng = np.random.default_rng(0)

    def part(n):
        x = rng.normal(size=(n, 16)).astype(np.float32)
        return x, (x[:, 0] + x[:, 1] > 0).astype(np.int32)

    path = tmp_path_factory.mktemp("data") / "toy.npz"
    save_splits(Splits(*part(1024), *part(128), *part(128), num_classes=2, name="toy"), path)
    return path


def _command(command, data_file, out_dir, *extra):
    return [sys.executable, "-m", "sngrad", command, "--data", str(data_file),
            "--optimizer", "sgd+sngrad1", "--batch-size", "8", "--spec", json.dumps(SPEC),
            "--out-dir", str(out_dir), *extra]


def _env(cache_dir):
    # A shared persistent compilation cache lets the 2nd and 3rd process skip most of XLA's
    # compile time; the executables are the same, so are the numbers.
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _run(cmd, env):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr


def _start_and_kill(cmd, env, checkpoint, sig):
    """Start ``cmd``, wait for its first checkpoint, send ``sig``; return the checkpoint bytes."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 180
        while not checkpoint.exists():
            assert proc.poll() is None, "job ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.005)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -sig, "the job finished before it could be interrupted"
    return checkpoint.read_bytes()


def _rows(path, drop=("wall_time",)):
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def test_train_killed_with_sigkill_resumes_to_identical_results(data_file, tmp_path):
    best = tmp_path / "best.json"
    chosen = {"optimizer": "sgd+sngrad1", "run": "sgd+sngrad1", "batch_size": 8,
              "learning_rate": 0.05, "momentum": None, "alpha": 1.0}
    best.write_text(json.dumps(chosen))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    env = _env(tmp_path / "jax-cache")
    _run(_command("train", data_file, reference, "--hparams", str(best)), env)

    cmd = _command("train", data_file, resumed, "--hparams", str(best))
    checkpoint = resumed / ".checkpoint-train" / "state.npz"
    _start_and_kill(cmd, env, checkpoint, signal.SIGKILL)
    assert not (resumed / "metrics.csv").exists()
    _run(cmd, env)

    prov = json.loads((resumed / "provenance.json").read_text())
    assert 0 < prov["resumed_from_epoch"] < EPOCHS
    assert not (resumed / ".checkpoint-train").exists()
    for name in ("metrics.csv", "diagnostics.csv"):
        ref, got = _rows(reference / name), _rows(resumed / name)
        assert len(got) == len(ref) > 0 and got == ref, name
    wall = [float(r["wall_time"]) for r in _rows(resumed / "metrics.csv", drop=())]
    assert wall[:EPOCHS] == sorted(wall[:EPOCHS])  # the clock continues across the restart


def _interrupt_after_epoch(monkeypatch, epoch):
    """Make the next checkpoint save at ``epoch`` stop the job right after writing it."""
    from sngrad.train import checkpoint as ckpt

    real_save = ckpt.save

    def save_then_stop(directory, fp, state):
        real_save(directory, fp, state)
        if state.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save", save_then_stop)
    return lambda: monkeypatch.setattr(ckpt, "save", real_save)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_stateful_optimizers_resume_byte_identical_in_process(data_file, tmp_path, monkeypatch,
                                                               optimizer):
    """Momentum buffers, Adam moments and the schedule's step count survive the restart."""
    from sngrad.spec import parse_spec
    from sngrad.train import train

    spec = parse_spec({**SPEC, "epochs": 6, "checkpoint_every": 2})
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"run": optimizer, "batch_size": 8, "learning_rate": 0.01,
                                "momentum": 0.9 if optimizer == "momentum" else None}))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train(data_file, parse_run(optimizer), 8, spec, best, reference)
    restore = _interrupt_after_epoch(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train(data_file, parse_run(optimizer), 8, spec, best, resumed)
    assert not (resumed / "metrics.csv").exists()
    restore()
    train(data_file, parse_run(optimizer), 8, spec, best, resumed)
    assert json.loads((resumed / "provenance.json").read_text())["resumed_from_epoch"] == 4
    for name in ("metrics.csv", "diagnostics.csv"):
        assert _rows(resumed / name) == _rows(reference / name), name


def test_tune_interrupted_in_process_resumes_to_identical_results(data_file, tmp_path, monkeypatch):
    """The same for tune, interrupted right after its second checkpoint (no subprocess)."""
    from sngrad.spec import parse_spec
    from sngrad.train import tune

    spec = parse_spec({**SPEC, "epochs": 12, "checkpoint_every": 4})
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    tune(data_file, parse_run("sgd+sngrad1"), 8, spec, reference)
    restore = _interrupt_after_epoch(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        tune(data_file, parse_run("sgd+sngrad1"), 8, spec, resumed)
    assert not (resumed / "best.json").exists()
    restore()
    tune(data_file, parse_run("sgd+sngrad1"), 8, spec, resumed)
    assert json.loads((resumed / "tuning_provenance.json").read_text())["resumed_from_epoch"] == 8
    assert _rows(resumed / "tuning.csv") == _rows(reference / "tuning.csv")
    assert (resumed / "best.json").read_text() == (reference / "best.json").read_text()
    assert not any(p.name.startswith(".") for p in resumed.iterdir()), os.listdir(resumed)


def test_a_checkpoint_of_another_job_is_ignored(tmp_path, capsys):
    from sngrad.train import checkpoint as ckpt

    state = ckpt.Checkpoint(3, 1.5, [np.arange(4.0), np.array(True)], {"loss": np.ones((3, 2))})
    ckpt.save(tmp_path, "job-a", state)
    assert ckpt.load(tmp_path, "job-b") is None
    assert "different job" in capsys.readouterr().err
    back = ckpt.load(tmp_path, "job-a")
    assert (back.epoch, back.elapsed_s) == (3, 1.5)
    np.testing.assert_array_equal(back.leaves[0], np.arange(4.0))
    np.testing.assert_array_equal(back.records["loss"], np.ones((3, 2)))
    (tmp_path / ckpt.FILE_NAME).write_bytes(b"not a zip file")
    assert ckpt.load(tmp_path, "job-a") is None


def _damaged_copies(raw: bytes):
    """The checkpoint's bytes truncated at several lengths, and with one bit flipped at
    positions spread over the whole file (header, arrays, the archive's directory)."""
    for cut in (0, 1, 10, len(raw) // 3, len(raw) // 2, len(raw) - 22, len(raw) - 1):
        yield f"truncated to {cut}", raw[:cut]
    for at in range(0, len(raw), max(1, len(raw) // 40)):
        flipped = bytearray(raw)
        flipped[at] ^= 0x10
        yield f"bit flipped at {at}", bytes(flipped)


def test_a_damaged_checkpoint_is_ignored_with_one_line_never_raised(tmp_path, capsys):
    """Whatever a truncation or a flipped bit does to state.npz, loading it gives back either
    the saved checkpoint exactly (a flip in bytes nothing reads) or None with a one-line note,
    never an exception that would block every rerun."""
    from sngrad.train import checkpoint as ckpt

    leaves = [np.arange(64.0).reshape(8, 8), np.array([True, False])]
    state = ckpt.Checkpoint(3, 1.5, leaves, {"loss": np.linspace(0, 1, 6).reshape(3, 2)})
    ckpt.save(tmp_path, "job", state)
    path = tmp_path / ckpt.FILE_NAME
    raw = path.read_bytes()
    ignored = 0
    for what, damaged in _damaged_copies(raw):
        path.write_bytes(damaged)
        capsys.readouterr()
        back = ckpt.load(tmp_path, "job")
        err = capsys.readouterr().err
        if back is None:
            ignored += 1
            assert err.count("\n") == 1 and "starts over" in err, (what, err)
        else:
            assert (back.epoch, back.elapsed_s) == (3, 1.5), what
            for a, b in zip(back.leaves, leaves, strict=True):
                np.testing.assert_array_equal(a, b, err_msg=what)
            np.testing.assert_array_equal(back.records["loss"], state.records["loss"])
    assert ignored >= 7  # every truncation at least


def test_train_resumes_from_a_truncated_checkpoint_by_starting_over(data_file, tmp_path,
                                                                     monkeypatch, capsys):
    """The whole job: a checkpoint cut short by a crash is set aside with one line and the
    job starts over, to exactly the results of an uninterrupted run."""
    from sngrad.spec import parse_spec
    from sngrad.train import checkpoint as ckpt
    from sngrad.train import train

    spec = parse_spec({**SPEC, "epochs": 4, "checkpoint_every": 2})
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"run": "sgd+sngrad1", "batch_size": 8, "learning_rate": 0.01,
                                "alpha": 1.0}))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train(data_file, parse_run("sgd+sngrad1"), 8, spec, best, reference)
    restore = _interrupt_after_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(data_file, parse_run("sgd+sngrad1"), 8, spec, best, resumed)
    restore()
    saved = ckpt.checkpoint_dir(resumed, "train") / ckpt.FILE_NAME
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    capsys.readouterr()
    train(data_file, parse_run("sgd+sngrad1"), 8, spec, best, resumed)
    assert "ignoring unreadable checkpoint" in capsys.readouterr().err
    assert json.loads((resumed / "provenance.json").read_text())["resumed_from_epoch"] == 0
    for name in ("metrics.csv", "diagnostics.csv"):
        assert _rows(resumed / name) == _rows(reference / name), name


@pytest.mark.parametrize("text", ['{"fingerprint": "x", "rounds": 3}', "[1, 2]", '{"rou',
                                  '{"fingerprint": "x", "rounds": [1]}'])
def test_damaged_tuning_rounds_are_run_again(tmp_path, capsys, text):
    from sngrad.train import commands

    (tmp_path / "rounds.json").write_text(text)
    assert commands._load_rounds(tmp_path, "x") == []
    assert "run again" in capsys.readouterr().err


def test_ctrl_c_while_a_tune_compiles_is_one_line_and_status_130_never_a_crash(data_file,
                                                                                tmp_path):
    # Without a compilation cache every round compiles afresh, so an interrupt soon after the
    # first progress line lands in XLA's compiler; interpreter shutdown there crashed the
    # process (SIGSEGV) in 3 of 10 tries before sngrad.cli.entry skipped the shutdown.
    env = {**os.environ, "SNGRAD_XLA_CACHE": str(tmp_path / "xla-cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    for attempt, delay in enumerate((0.0, 0.3, 0.6)):
        out_dir = tmp_path / f"tune-{attempt}"
        # A test run started in the background of a shell ignores SIGINT, and a child starts
        # with an ignored signal still ignored; a handled one is back to its default after exec
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(_command("tune", data_file, out_dir),
                                    stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    text=True, env=env)
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            first = proc.stderr.readline()  # the first progress line: round 0 is done
            assert "progress" in first, first
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            rest = proc.stderr.read()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, (delay, proc.returncode, rest[-2000:])
        assert rest.splitlines()[-1] == (
            "sngrad: tune interrupted; rerun the same command to resume"), rest[-2000:]
        assert not (out_dir / "best.json").exists()


def test_an_interrupted_command_skips_interpreter_shutdown_but_records_its_phases(tmp_path):
    # An exit handler stands in for the teardown that crashed under running XLA threads.
    phases, marker = tmp_path / "phases.json", tmp_path / "shutdown-ran"
    program = (
        "import atexit, pathlib, sys\n"
        "from sngrad import cli, config\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'ran')\n"
        "def interrupted(argv):\n"
        "    raise KeyboardInterrupt\n"
        "config.cli = interrupted\n"
        "cli.entry(['config', 'check', 'x.yaml'])\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SNGRAD_PHASES": str(phases)})
    assert done.returncode == 130
    assert done.stderr == "sngrad: config interrupted; rerun the same command to resume\n"
    assert not marker.exists()
    assert set(json.loads(phases.read_text())) >= {"compile_s", "scan_s", "cpu_s"}


def test_a_dropped_ctrl_c_is_raised_again_at_the_next_epoch(monkeypatch):
    from sngrad import interrupt

    previous = signal.getsignal(signal.SIGINT)
    monkeypatch.setitem(interrupt._received, "sigint", False)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interrupt.install()  # a background job's ignored SIGINT stays ignored
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupt.install()
        interrupt.check()  # nothing received yet
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what Python does with it inside a garbage-collection callback
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    finally:
        signal.signal(signal.SIGINT, previous)
