"""Reading the tables the notebooks and jobs wrote: missing files become None or empty."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd


def records(frame: pd.DataFrame | None) -> list[dict]:
    if frame is None or frame.empty:
        return []
    return frame.to_dict("records")


def read_csv(path) -> pd.DataFrame | None:
    path = Path(path)
    return pd.read_csv(path) if path.exists() else None


def read_json(path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def truthy(x) -> bool:
    return str(x).strip().lower() in {"true", "1", "1.0", "yes"}


def config_value(config: dict, dotted: str, default=None):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def plain_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with NaN turned into None, so that a template's ``if`` sees no value."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def concat(paths) -> pd.DataFrame:
    frames = [f for f in (read_csv(p) for p in paths) if f is not None and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
