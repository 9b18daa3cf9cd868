"""The run lock knows its holder by facts (host, pid, start time) and the jobs of a dead run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import SNAKEMAKE, copy_tree

from sngrad import runlock
from sngrad.errors import SngradError


def sleeper(*extra: str, env=None) -> subprocess.Popen:
    """A live process (its command line holds ``extra``), started and visible in /proc."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", *extra], env=env
    )
    while runlock.process_start(child.pid) is None or not Path(
        f"/proc/{child.pid}/cmdline"
    ).read_bytes():
        time.sleep(0.01)
    return child


def test_lock_records_host_pid_start_time_and_profile(tmp_path):
    lock = tmp_path / "p" / ".run.lock"
    me = runlock.acquire(lock, "smoke")
    raw = json.loads(lock.read_text())
    assert raw["host"] == socket.gethostname() and raw["pid"] == os.getpid()
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert raw["start_ticks"] == int(stat[stat.rindex(")") + 2:].split()[19])
    assert raw["profile"] == "smoke" and raw["run_id"] == me.run_id
    assert os.environ[runlock.RUN_ENV] == me.run_id
    assert runlock.acquire(lock, "smoke") == me  # taking it again in the same run is a no-op
    runlock.release(lock)
    assert not lock.exists()


def test_a_live_holder_blocks_with_its_facts(tmp_path):
    lock = tmp_path / ".run.lock"
    live = sleeper()
    try:
        holder = replace(runlock.this_process("default"), pid=live.pid,
                         start_ticks=runlock.process_start(live.pid))  # fmt: skip
        lock.write_text(json.dumps(holder.__dict__))
        with pytest.raises(SngradError) as err:
            runlock.acquire(lock, "default")
        text = str(err.value)
        assert f"profile default is active (pid {live.pid} on host {socket.gethostname()}" in text
        assert f"kill {live.pid}" in text and "\n" not in text
        runlock.release(lock)  # not ours: left alone
        assert lock.exists()
    finally:
        live.kill()
        live.wait()


def test_a_reused_process_id_is_stale_even_if_it_is_a_snakemake(tmp_path):
    """The id now names another process (started at another time): the lock is stale."""
    lock = tmp_path / ".run.lock"
    other = sleeper("snakemake")
    try:
        dead_run = replace(runlock.this_process("default"), pid=other.pid,
                           start_ticks=runlock.process_start(other.pid) - 1)  # fmt: skip
        lock.write_text(json.dumps(dead_run.__dict__))
        assert runlock.state(dead_run) == "reused"
        assert runlock.acquire(lock, "default").pid == os.getpid()
        assert other.poll() is None  # the unrelated process is left alone
    finally:
        other.kill()
        other.wait()
        runlock.release(lock)


def test_a_gone_holder_or_another_boot_is_stale_and_another_host_is_not_guessed(tmp_path):
    lock = tmp_path / ".run.lock"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    base = runlock.this_process("default")
    assert runlock.state(replace(base, pid=int(gone.stdout))) == "gone"
    assert runlock.state(replace(base, boot_id="another-boot")) == "gone"
    elsewhere = replace(base, host="node-17.cluster")
    lock.write_text(json.dumps(elsewhere.__dict__))
    with pytest.raises(SngradError, match=f"another host .*node-17.cluster.*remove {lock}"):
        runlock.acquire(lock, "default")


def test_the_jobs_of_a_dead_run_are_stopped_before_the_lock_is_taken(tmp_path, capsys):
    lock = tmp_path / ".run.lock"
    dead = replace(runlock.this_process("default"), pid=2**22 + 1, run_id="deadbeef")
    lock.write_text(json.dumps(dead.__dict__))
    env = {**os.environ, runlock.RUN_ENV: "deadbeef"}
    orphan, bystander = sleeper("tune", env=env), sleeper("tune")
    try:
        assert runlock.jobs_of("deadbeef") == {orphan.pid: runlock.process_start(orphan.pid)}
        runlock.acquire(lock, "default", grace_s=5)
        assert orphan.wait(timeout=5) == -signal.SIGTERM
        assert bystander.poll() is None
        err = capsys.readouterr().err
        assert f"left 1 process(es) of its jobs running (pid {orphan.pid}:" in err
        assert "stopping them" in err
    finally:
        for child in (orphan, bystander):
            child.kill()
            child.wait()
        runlock.release(lock)


# ----------------------------------------------------------------------------- the workflow


@pytest.mark.slow
def test_killing_only_snakemake_then_rerunning_at_once_never_duplicates_a_job(tmp_path):
    """kill -9 of the snakemake process alone: its tune job keeps running; the rerun stops it
    (with a message) before starting any job, then completes the target."""
    work = copy_tree(tmp_path)
    profile = yaml.safe_load((work / "config" / "smoke.yaml").read_text())
    profile["profile"] = "lockprobe"
    profile["train"]["epochs"] = 60  # a tune job that runs long enough to be caught
    (work / "config" / "lockprobe.yaml").write_text(yaml.safe_dump(profile))
    target = "results/lockprobe/digits/sgd/bs64/best.json"
    command = [*SNAKEMAKE, "--cores", "1", target,
               "--configfile", "config/lockprobe.yaml"]  # fmt: skip
    first = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    lock = work / "results" / "lockprobe" / ".run.lock"
    tune_jobs = {}
    deadline = time.monotonic() + 240
    while not tune_jobs and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
        holder = runlock.read(lock)
        if holder is not None and holder.run_id:
            jobs = runlock.jobs_of(holder.run_id)
            tune_jobs = {p: s for p, s in jobs.items() if "sngrad tune" in runlock._command(p)}
    assert tune_jobs, "the tune job was not caught running"
    os.kill(first.pid, signal.SIGKILL)  # the snakemake process alone
    first.wait()
    assert all(runlock.process_start(p) == s for p, s in tune_jobs.items())  # orphans run on

    rerun = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "is gone but left" in rerun.stderr and "stopping them" in rerun.stderr
    assert all(runlock.process_start(p) != s for p, s in tune_jobs.items())
    best = json.loads((work / target).read_text())
    assert best["run"] == "sgd" and best["batch_size"] == 64
    assert not lock.exists()


# ----------------------------------------------------------------------------- the run's start


def test_the_start_is_that_of_the_run_that_made_the_results(tmp_path):
    from sngrad import runstart

    path = tmp_path / "run_started.json"
    profile = json.dumps({"profile": "smoke", "train": {"epochs": 2}})
    assert runstart.record(path, profile, ["snakemake"], now=1000.0)
    # a resumed run, then a rerun of the report alone after the report existed: same start
    assert not runstart.record(path, profile, ["snakemake", "--forcerun", "report"], now=5000.0)
    started = json.loads(path.read_text())
    assert started["started_unix"] == 1000.0 and started["command"] == ["snakemake"]
    # a changed profile makes new results: a new start
    other = json.dumps({"profile": "smoke", "train": {"epochs": 3}})
    assert runstart.record(path, other, ["snakemake"], now=9000.0)
    assert json.loads(path.read_text())["started_unix"] == 9000.0
    # a start file of the older format (no profile digest) is replaced
    path.write_text(json.dumps({"started_unix": 1.0}))
    assert runstart.record(path, other, ["snakemake"], now=9500.0)
