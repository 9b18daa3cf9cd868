"""Where the run's time went (reproducibility.md.j2): the ledger's entries per stage.

Per stage: jobs, counted FLOPs (:mod:`sngrad.costs`), CPU minutes, job-minutes of wall time
(the sum over the stage's jobs, which overlap in time when several cores run), and of them
the minutes spent compiling and in the training scans (:mod:`sngrad.ledger`).

The run's efficiency: the training scans' own rate, r = counted training FLOPs (tuning, final
training, reference) / the CPU seconds of the scans (their wall time would count the time a
scan waited for a core that another job held), says how long the counted training work takes
at the speed the engine trains at, T = FLOPs / (r x cores) = scan CPU seconds / cores.
Efficiency is T over the run's elapsed wall time: the share of the machine the run spent in
training arithmetic. The report and publish jobs run after the report is rendered and are not
in the table.
"""

from __future__ import annotations

from sngrad import costs
from sngrad import ledger as job_ledger
from sngrad.layout import Layout
from sngrad.names import parse_run
from sngrad.report.read import read_csv

# the workflow's stages in the order the data flows (the log folder of each rule)
STAGES = ("data", "tune", "train", "reference", "noise", "notebooks", "benchmark")
TRAINING = ("tune", "train", "reference")
NOT_IN_TABLE = ("report", "publish")  # they come after this rendering
# sngrad.costs.profile_stages' names of the stages it counts from the profile alone
COUNTED_FROM_PROFILE = {"train": "final training", "reference": "reference", "noise": "noise"}


def tuning_flops(layout: Layout, config: dict) -> float | None:
    """Counted FLOPs of the tuning runs that ran: every row of every tuning.csv (one setting,
    one tuning seed), extension rounds included; None when no tuning table exists."""
    total, found = 0.0, False
    for dataset in config.get("datasets", []):
        for run in map(parse_run, config.get("optimizers", [])):
            for batch in config.get("batch_sizes", []):
                table = read_csv(layout.run_file("tuning.csv", dataset, run.name, batch))
                if table is None:
                    continue
                found = True
                total += len(table) * costs.tuning_trial_flops(config, dataset, run, batch)
    return total if found else None


def counted_flops(layout: Layout, config: dict) -> dict[str, float | None]:
    """Counted FLOPs per ledger stage (None where nothing is counted)."""
    from_profile = {s.name: s.flops for s in costs.profile_stages(config)}
    # a profile without the noise study counts no reference run and no noise jobs
    counted = {stage: from_profile.get(name) for stage, name in COUNTED_FROM_PROFILE.items()}
    counted["tune"] = tuning_flops(layout, config)
    return counted


def _sum(entries: list[dict], key: str) -> float | None:
    """Sum of ``key`` over the entries that measured it; None when none did."""
    values = [e[key] for e in entries if e.get(key) is not None]
    return sum(values) if values else None


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60


def stage_rows(entries: list[dict], flops: dict[str, float | None]) -> list[dict]:
    """One row per stage with entries, in :data:`STAGES` order (unknown stages after)."""
    present = [e for e in entries if e["stage"] not in NOT_IN_TABLE]
    names = [s for s in STAGES if any(e["stage"] == s for e in present)]
    names += sorted({e["stage"] for e in present} - set(STAGES))
    rows = []
    for name in names:
        mine = [e for e in present if e["stage"] == name]
        rows.append({
            "stage": name,
            "jobs": len(mine),
            "flops": flops.get(name),
            "cpu_min": _minutes(_sum(mine, "cpu_s")),
            "wall_min": _minutes(_sum(mine, "wall_s")),
            "compile_min": _minutes(_sum(mine, "compile_s")),
            "scan_min": _minutes(_sum(mine, "scan_s")),
        })
    return rows


def efficiency(entries: list[dict], training_flops: float | None,
               elapsed_s: float | None) -> dict | None:
    """The engine's rate in the run's own scans and the run's efficiency (module docstring)."""
    training = [e for e in entries
                if e["stage"] in TRAINING and e.get("scan_cpu_s") is not None]
    core_seconds = sum(e["scan_cpu_s"] for e in training)
    if not training or core_seconds <= 0 or not training_flops:
        return None
    cores = max(e.get("machine_cores", 1) for e in training)
    ideal_s = core_seconds / cores
    return {
        "rate_per_core": training_flops / core_seconds,
        "training_flops": training_flops,
        "cores": cores,
        "ideal_min": ideal_s / 60,
        "elapsed_min": None if elapsed_s is None else elapsed_s / 60,
        "efficiency": None if not elapsed_s else ideal_s / elapsed_s,
    }


def context(layout: Layout, config: dict, elapsed_s: float | None) -> dict | None:
    """The ledger section's numbers; None when the run wrote no ledger."""
    entries = job_ledger.read_entries(layout)
    if not entries:
        return None
    flops = counted_flops(layout, config)
    rows = stage_rows(entries, flops)
    known = [flops[s] for s in TRAINING if flops.get(s) is not None]
    training_flops = sum(known) if known else None
    return {"rows": rows, "efficiency": efficiency(entries, training_flops, elapsed_s)}
