"""The reproducibility section (reproducibility.md.j2): what the report was made from.

The report rule's inputs (``--inputs``, else enumerated from the config) are digested, with
what their provenance sidecars recorded (commits, devices); the elapsed time runs from the
workflow's start (``run_started.json``) to the rendering."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from sngrad import provenance
from sngrad.errors import SngradError
from sngrad.layout import Layout, report_inputs
from sngrad.report.format import NA, minutes
from sngrad.report.read import (
    read_json,
)
from sngrad.spec import read_json_arg


def config_hash(config: dict) -> str:
    """sha256 of the resolved config as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def expected_inputs(layout: Layout, config: dict) -> list[str]:
    """The files the report reads (:func:`sngrad.layout.report_inputs`, the report rule's
    inputs), enumerated from the config when no --inputs is given."""
    return [f for files in report_inputs(layout, config).values() for f in files]


def _started(record: dict | None) -> float | None:
    """Unix time from run_started.json (a number, or an ISO 8601 time)."""
    if not record:
        return None
    for key in ("started_unix", "unix_time", "timestamp", "time", "started", "started_at"):
        value = record.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    return None


def elapsed(layout: Layout, now: float | None = None) -> dict:
    """Wall time from the workflow's start (run_started.json) to this rendering."""
    started = _started(read_json(layout.run_started()))
    now = time.time() if now is None else now
    if started is None:
        return {"available": False, "text": NA, "started": NA}
    start = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {
        "available": True,
        "text": minutes(now - started),
        "started": start,
        "seconds": now - started,
    }


def input_provenance(paths: list[str]) -> dict:
    """Digest of the inputs and what their own provenance records say.

    ``digest``: sha256 over the lines "<sha256 of file>  <path>" of the existing inputs in
    sorted order; ``commits``/``dirty``: what the run provenance files recorded.
    """
    files, absent = set(), 0
    for p in dict.fromkeys(paths):
        path = Path(p)
        if path.is_dir():  # e.g. a reference run's folder of checkpoints: every file in it
            files.update(str(f) for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            files.add(str(path))
        else:
            absent += 1
    present = sorted(files)
    lines = [f"{provenance.sha256_file(p)}  {p}" for p in present]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    commits, devices, dirty = set(), set(), False
    for p in present:
        if not p.endswith("provenance.json"):
            continue
        record = json.loads(Path(p).read_text())
        if record.get("git_commit"):
            commits.add(str(record["git_commit"]))
        dirty = dirty or bool(record.get("git_dirty"))
        device = record.get("device")
        for d in device if isinstance(device, list) else [device]:
            if d:
                devices.add(str(d))
    return {
        "n_inputs": len(present),
        "n_missing": absent,
        "digest": digest,
        "run_commits": sorted(commits),
        "runs_dirty": dirty,
        "devices": sorted(devices),
    }


def inputs_arg(value: str | None) -> list[str] | None:
    """The report rule's input files: a JSON list, given inline or as ``@file``."""
    if value is None:
        return None
    listed = read_json_arg(value, "--inputs")
    if not isinstance(listed, list):
        raise SngradError(f"--inputs must be a JSON list of paths, got {type(listed).__name__}")
    return [str(p) for p in listed]


def commands(profile: str) -> list[str]:
    configfile = "" if profile == "default" else f" --configfile config/{profile}.yaml"
    layout = Layout(profile)
    return [
        f"snakemake --cores 4{configfile}",
        f"snakemake --cores 4 {layout.report()}{configfile}",
    ]
