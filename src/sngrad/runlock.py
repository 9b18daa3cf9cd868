"""One workflow run per profile at a time; a killed run leaves no stale lock and no duplicates.

Snakemake's own lock (``.snakemake/locks``) outlives a run that was killed (SIGKILL, power
loss) and then refuses the very command that should resume it. The workflow therefore turns
that lock off (``nolock`` in its profile) and takes this one instead, in its ``onstart``
handler, before any job starts.

What the lock records
    A JSON object: the host name, the process id of the running snakemake, that process's
    start time (field 22 of ``/proc/<pid>/stat``, clock ticks since boot), the boot id, the
    profile, a random run id and the start in UTC. The lock file appears complete or not at
    all (written aside, then hard-linked into place, which fails if a lock exists).

When a lock is stale
    By facts, not by a process name: on the same host, the lock is stale when the machine has
    rebooted since (another boot id), when no process has that id, or when the process with
    that id started at another time (the id was reused by an unrelated process). A live holder
    stops the new run with a one-line error naming it. A lock taken on another host cannot be
    checked from here (shared cluster file system): the error says so and names the file to
    remove once that run is over.

The jobs of a dead run
    When only the snakemake process dies (the memory killer, ``kill -9``), the jobs it started
    keep running and keep writing their outputs and checkpoints. Each job inherits the run id
    in the environment variable :data:`RUN_ENV` (set when the lock is taken, before any job
    starts), so the next run finds them in ``/proc/<pid>/environ``. It stops them (SIGTERM,
    then SIGKILL after a grace period) with a message naming each one, before it starts any
    job: a rerun never has two processes writing the same outputs. The stopped jobs' outputs
    are incomplete to Snakemake and are redone (training resumes from its checkpoints).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sngrad.errors import SngradError

RUN_ENV = "SNGRAD_RUN_ID"
GRACE_S = 10.0  # how long a stopped job may take to save its state before SIGKILL


@dataclass(frozen=True)
class Holder:
    """Who holds a lock. ``start_ticks`` None: a lock of an older format (process id only)."""

    pid: int
    host: str | None = None
    start_ticks: int | None = None
    boot_id: str | None = None
    profile: str | None = None
    run_id: str | None = None
    started_utc: str | None = None

    def describe(self) -> str:
        where = f" on host {self.host}" if self.host else ""
        since = f", started {self.started_utc}" if self.started_utc else ""
        return f"pid {self.pid}{where}{since}"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name (field 2) is in parentheses and may itself hold spaces or parentheses
    return text[text.rindex(")") + 2:].split()


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None if it is gone (or a
    zombie, which has finished)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc(5): starttime


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def this_process(profile: str) -> Holder:
    """The holder record of the calling process."""
    pid = os.getpid()
    return Holder(
        pid=pid, host=socket.gethostname(), start_ticks=process_start(pid) if _has_proc() else None,
        boot_id=boot_id(), profile=profile, run_id=uuid.uuid4().hex,
        started_utc=datetime.now(UTC).isoformat(timespec="seconds"),
    )  # fmt: skip


def read(path: str | os.PathLike) -> Holder | None:
    """The lock's holder; None if the file is missing or unreadable."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        raw = json.loads(text)
        return Holder(**{k: raw.get(k) for k in Holder.__dataclass_fields__})
    except (ValueError, TypeError, AttributeError):
        pass
    try:
        return Holder(pid=int(text.split()[0]))  # the older format: a process id alone
    except (ValueError, IndexError):
        return None


def state(holder: Holder) -> str:
    """``"alive"``, ``"gone"``, ``"reused"`` (the id now names another process) or
    ``"elsewhere"`` (held on another host: cannot be checked from here)."""
    if holder.host is not None and holder.host != socket.gethostname():
        return "elsewhere"
    here = boot_id()
    if holder.boot_id and here and holder.boot_id != here:
        return "gone"
    if not _has_proc():  # not Linux: whether some process has the id is all we know
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            pass
        return "alive"
    start = process_start(holder.pid)
    if start is None:
        return "gone"
    if holder.start_ticks is None:  # older format: only the command line can tell
        try:
            cmdline = Path(f"/proc/{holder.pid}/cmdline").read_bytes()
        except OSError:
            return "gone"
        return "alive" if not cmdline or b"snakemake" in cmdline else "reused"
    return "alive" if start == holder.start_ticks else "reused"


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def jobs_of(run_id: str) -> dict[int, int]:
    """Live processes started by the run ``run_id`` (process id -> start ticks), this one
    excluded; found by the run id in each process's initial environment."""
    needle = f"{RUN_ENV}={run_id}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's process
            continue
        if needle in environ.split(b"\0"):
            start = process_start(int(entry.name))
            if start is not None:
                found[int(entry.name)] = start
    return found


def stop(jobs: dict[int, int], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM each job, SIGKILL those left after ``grace_s``; return those still running."""

    def running() -> list[int]:
        return [pid for pid, start in jobs.items() if process_start(pid) == start]

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in running():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
    return running()


def _stop_orphans(path: Path, holder: Holder, grace_s: float) -> None:
    if not holder.run_id or not _has_proc():
        return
    jobs = jobs_of(holder.run_id)
    if not jobs:
        return
    listed = "; ".join(f"pid {pid}: {_command(pid)[:160]}" for pid in sorted(jobs))
    print(
        f"sngrad: the previous run of this profile ({holder.describe()}) is gone but left "
        f"{len(jobs)} process(es) of its jobs running ({listed}); stopping them so that this "
        "run does not start the same jobs twice on the same outputs (they are redone, "
        "training resumes from its checkpoints)",
        file=sys.stderr,
    )
    left = stop(jobs, grace_s)
    if left:
        raise SngradError(
            f"{path}: could not stop process(es) {', '.join(map(str, left))} of the previous "
            "run; stop them (kill -9 PID) and rerun"
        )


def _same_process(a: Holder, b: Holder) -> bool:
    return (a.host, a.pid, a.start_ticks, a.boot_id) == (b.host, b.pid, b.start_ticks, b.boot_id)


def _create(path: Path, holder: Holder) -> bool:
    """Write the lock complete, or return False if one exists."""
    aside = path.with_name(f"{path.name}.{holder.pid}.{holder.run_id}")
    aside.write_text(json.dumps(asdict(holder), indent=1) + "\n")
    try:
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: create exclusively, then write
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            handle.write(aside.read_text())
        return True
    finally:
        aside.unlink(missing_ok=True)


def acquire(path: str | os.PathLike, profile: str = "", *, grace_s: float = GRACE_S) -> Holder:
    """Take the lock at ``path`` for this process (see the module docstring).

    A stale lock is removed after the dead run's remaining jobs are stopped; a live or
    uncheckable holder raises :class:`SngradError`. The run id goes into ``os.environ`` so
    that every job started afterwards carries it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = this_process(profile)
    for _ in range(3):
        if _create(path, me):
            os.environ[RUN_ENV] = me.run_id
            return me
        holder = read(path)
        if holder is None:
            path.unlink(missing_ok=True)  # empty or garbled: no run could have written it
            continue
        if _same_process(holder, me):
            os.environ[RUN_ENV] = holder.run_id or me.run_id
            return holder
        found = state(holder)
        if found == "alive":
            raise SngradError(
                f"{path}: another snakemake run of profile {holder.profile or '?'} is active "
                f"({holder.describe()}); wait for it to finish, or stop it with kill "
                f"{holder.pid}"
            )
        if found == "elsewhere":
            raise SngradError(
                f"{path}: held by a run on another host ({holder.describe()}), which this host "
                f"cannot check; if that run is over, remove {path} and rerun"
            )
        _stop_orphans(path, holder, grace_s)
        if read(path) == holder:  # not a lock another new run took meanwhile
            path.unlink(missing_ok=True)  # its run was killed, or its process id was reused
    raise SngradError(f"{path}: could not take the run lock; remove the file and retry")


def release(path: str | os.PathLike) -> None:
    """Drop the lock if this process holds it."""
    path = Path(path)
    holder = read(path)
    if holder is not None and _same_process(holder, this_process(holder.profile or "")):
        path.unlink(missing_ok=True)
