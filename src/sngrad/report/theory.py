"""The theory section (theory.md.j2): the theory notebook's checks and summary as written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sngrad.layout import Layout
from sngrad.report.read import (
    plain_records,
)


def theory(layout: Layout) -> dict | None:
    """The theory tables as the theory partial reads them (missing cells are None)."""
    checks, summary = Path(layout.theory("checks.csv")), Path(layout.theory("summary.json"))
    if not (checks.exists() and summary.exists()):
        return None
    stationary = Path(layout.theory("stationary_1d.csv"))
    return {
        "checks": {r["name"]: r for r in plain_records(pd.read_csv(checks))},
        "stationary_1d": plain_records(pd.read_csv(stationary)) if stationary.exists() else [],
        "summary": json.loads(summary.read_text()),
    }
