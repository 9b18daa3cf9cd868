"""The implementation section (implementation.md.j2): the step-time benchmark as measured."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pandas as pd

from sngrad.layout import Layout
from sngrad.report.format import NA, fmt
from sngrad.report.read import (
    read_csv,
    read_json,
)


def engine_rows(layout: Layout) -> dict | None:
    """The engine benchmark (``benchmark/engine.csv``) as written: every row, every column."""
    path = layout.benchmark_engine()
    if read_csv(path) is None:
        return None
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {"columns": list(text.columns),
            "rows": [[_cell(v) for v in row] for row in text.itertuples(index=False)]}


def benchmark(layout: Layout, devices: list[str]) -> dict | None:
    table = read_csv(layout.benchmark())
    if table is None:
        return None
    record = {}
    for side in (
        Path(layout.benchmark()).with_suffix(".json"),
        Path(layout.benchmark()).with_name("provenance.json"),
    ):
        record = record or read_json(side) or {}
    machine = record.get("machine") or record.get("device")
    if isinstance(machine, list):
        machine = ", ".join(map(str, machine))
    for column in ("machine", "device", "cpu"):
        if not machine and column in table and table[column].notna().any():
            machine = ", ".join(sorted(set(map(str, table[column].dropna()))))
    if not machine:
        machine = (
            f"the machine that rendered this report ({_cpu_model()}, "
            f"{os.cpu_count()} CPU cores; devices {', '.join(devices) or NA})"
        )
    columns = list(table.columns)
    # the file's own text, numbers shortened to 4 significant digits; an empty cell (e.g. no
    # `flag`) stays empty
    text = pd.read_csv(layout.benchmark(), dtype=str, keep_default_na=False)
    rows = [[_cell(v) for v in row] for row in text.itertuples(index=False)]
    return {"columns": columns, "rows": rows, "machine": str(machine)}


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown CPU"


def _cell(text: str) -> str:
    if text == "":
        return ""
    try:
        value = float(text)
    except ValueError:
        return text.replace("|", "\\|")
    return fmt(value, 4)
