"""The ledger of a run: where each job's time went.

Every job of the workflow runs inside a small shell frame (``workflow/rules/common.smk``): the
shell notes the wall clock before the job, and after it asks bash for the CPU time of the
job's processes (the ``times`` builtin: user and system seconds of every child the shell
waited for, threads and grandchildren such as a notebook's kernel included) and calls
``python -m sngrad.ledger record``, which writes the job's entry
``results/<profile>/ledger/<stage>/<name>.json`` (named as the job's log:
:meth:`Layout.of_log`, :meth:`Layout.ledger`).

A sngrad command adds two figures of its own through the side file that ``$SNGRAD_PHASES``
names, written when the process exits (:func:`watch`):

- ``compile_s``: seconds JAX spent turning programs into executables: tracing, lowering to
  MLIR, and XLA's compilation or the read of a cached executable (``jax.monitoring``);
- ``scan_s``: seconds of the training scans (the engine's epochs, snapshots included), and
  ``scan_cpu_s``, the CPU time of the process during them: where jobs share cores, the wall
  time of a scan includes the time it waited, its CPU time does not.

An entry's columns add up: ``wall_s = compile_s + scan_s + other_s``, where ``other_s`` is the
rest of the job (interpreter start-up and imports, data loading, the initialisation, the
evaluation passes, writing results). A job that is not a sngrad command (a notebook) has no
side file; its ``compile_s`` and ``scan_s`` are null ("not measured") and ``other_s`` is its
wall time. ``cpu_s`` can exceed ``wall_s`` when a job uses several threads.

The command's own view (compilation, scans and the CPU time of its process) also goes into its
provenance record (:func:`phases`).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import sys
import time
from pathlib import Path

from sngrad.errors import SngradError
from sngrad.io import write_json
from sngrad.layout import Layout

PHASES_ENV = "SNGRAD_PHASES"
# the durations jax.monitoring reports for one program's way to an executable; they do not
# overlap (jax._src.dispatch times the three steps one after the other)
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
COLUMNS = ("wall_s", "cpu_s", "compile_s", "scan_s", "scan_cpu_s", "other_s")

_phases = {"compile_s": 0.0, "scan_s": 0.0, "scan_cpu_s": 0.0}
_watching = {"compilation": False, "exit": False}


def _on_duration(event: str, duration: float, **_kwargs) -> None:
    if event in COMPILE_EVENTS:
        _phases["compile_s"] += float(duration)


def watch_compilation() -> None:
    """Count JAX's compilation time from now on (once per process; imports jax)."""
    if _watching["compilation"]:
        return
    from jax import monitoring

    monitoring.register_event_duration_secs_listener(_on_duration)
    _watching["compilation"] = True


def add_scan(seconds: float, cpu_seconds: float) -> None:
    """Count a training scan of ``seconds`` wall and ``cpu_seconds`` CPU time (called by the
    engine after each epoch)."""
    _phases["scan_s"] += float(seconds)
    _phases["scan_cpu_s"] += float(cpu_seconds)


def phases() -> dict[str, float]:
    """This process so far: compile_s, scan_s, scan_cpu_s and cpu_s (user + system time of
    the process)."""
    times = os.times()
    return {**_phases, "cpu_s": times.user + times.system}


def _write_phases(path: str) -> None:
    try:
        Path(path).write_text(json.dumps(phases()))
    except OSError:
        pass  # the ledger is bookkeeping: never fail a finished job over it


def flush() -> None:
    """Write :func:`phases` now if :func:`watch` is on (for a process that ends without its
    exit handlers)."""
    path = os.environ.get(PHASES_ENV)
    if path and _watching["exit"]:
        _write_phases(path)


def watch() -> None:
    """Under the workflow (``$SNGRAD_PHASES`` set): write :func:`phases` there at exit."""
    path = os.environ.get(PHASES_ENV)
    if path and not _watching["exit"]:
        atexit.register(_write_phases, path)
        _watching["exit"] = True


# ----------------------------------------------------------------------------- one entry
_BASH_TIME = re.compile(r"(\d+)m(\d+(?:[.,]\d+)?)s")


def parse_times(text: str) -> float:
    """CPU seconds from the output of bash's ``times``: user and system time of the shell
    (first line) and of its children (second line), all four added."""
    found = _BASH_TIME.findall(text)
    if len(found) != 4:
        raise SngradError(f"cannot read the output of bash's `times`: {text!r}; expected two "
                          "lines of two times like 0m1.250s")
    return sum(60 * int(m) + float(s.replace(",", ".")) for m, s in found)


def entry(*, stage: str, job: str, wall_s: float, cpu_s: float, threads: int,
          phases_record: dict | None, finished_unix: float) -> dict:
    """One job's ledger entry; ``phases_record``: the sngrad command's side file, or None."""
    compile_s = scan_s = scan_cpu_s = None
    if phases_record is not None:
        compile_s = float(phases_record.get("compile_s", 0.0))
        scan_s = float(phases_record.get("scan_s", 0.0))
        scan_cpu_s = float(phases_record.get("scan_cpu_s", 0.0))
    other_s = wall_s - (compile_s or 0.0) - (scan_s or 0.0)
    return {
        "stage": stage,
        "job": job,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "compile_s": compile_s,
        "scan_s": scan_s,
        "other_s": other_s,
        "scan_cpu_s": scan_cpu_s,
        "threads": int(threads),
        "machine_cores": machine_cores(),
        "finished_unix": finished_unix,
    }


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_phases(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def record(log: str, started: str, times_file: str, threads: int) -> Path:
    """Write the ledger entry of the job whose log is ``log``; remove the two side files."""
    layout, stage, names = Layout.of_log(log)
    now = time.time()
    try:
        start = float(started.replace(",", "."))
    except ValueError:
        raise SngradError(f"--started must be the shell's $EPOCHREALTIME (seconds since the "
                          f"epoch); got {started!r}") from None
    times_path = Path(times_file)
    cpu_s = parse_times(times_path.read_text())
    phases_path = Path(phases_file(log))
    record_ = entry(stage=stage, job="/".join(names), wall_s=now - start, cpu_s=cpu_s,
                    threads=threads, phases_record=_read_phases(phases_path),
                    finished_unix=now)
    out = write_json(layout.ledger(stage, *names), record_)
    for side in (times_path, phases_path):
        side.unlink(missing_ok=True)
    return out


def phases_file(log: str) -> str:
    """The side file a job's sngrad command writes its phases to: next to its log."""
    return f"{log}.phases"


def times_file(log: str) -> str:
    """The file the job's shell writes bash's ``times`` to: next to its log."""
    return f"{log}.times"


def read_entries(layout: Layout) -> list[dict]:
    """Every ledger entry of a profile (those that cannot be read are left out)."""
    entries = []
    for path in sorted(Path(layout.ledger_dir()).glob("**/*.json")):
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(value, dict) and "stage" in value and "wall_s" in value:
            entries.append(value)
    return entries


JOB_COLUMNS = ("stage", "job", *COLUMNS, "threads", "finished_unix")


def write_jobs(layout: Layout, out: str | Path) -> int:
    """Every ledger entry of a profile as one CSV row (:data:`JOB_COLUMNS`, in the order the
    jobs finished): the measured wall time of each job. Returns the number of rows."""
    import csv
    import io

    from sngrad.io import write_text

    entries = sorted(read_entries(layout), key=lambda e: e.get("finished_unix") or 0.0)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=JOB_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(entries)
    write_text(out, buffer.getvalue())
    return len(entries)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sngrad.ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="write one job's ledger entry (the workflow's frame)")
    rec.add_argument("--log", required=True, help="the job's log: logs/<profile>/<stage>/...")
    rec.add_argument("--started", required=True, help="$EPOCHREALTIME when the job started")
    rec.add_argument("--threads", required=True, type=int)
    jobs = sub.add_parser("jobs", help="every job's ledger entry of a profile as a CSV")
    jobs.add_argument("--profile", required=True)
    jobs.add_argument("--results-root", default="results")
    jobs.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "jobs":
        count = write_jobs(Layout(args.profile, args.results_root), args.out)
        print(f"wrote {args.out}: {count} jobs")
        return 0
    try:
        record(args.log, args.started, times_file(args.log), args.threads)
    except (SngradError, OSError, ValueError) as err:
        # bookkeeping: the job itself succeeded, so its results stand without an entry
        print(f"sngrad: warning: no ledger entry for {args.log}: {err}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
