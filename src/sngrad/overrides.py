"""Values given on the command line with ``snakemake --config KEY=VALUE``, typed as in a profile.

Snakemake types a top-level value itself (int, float, bool, else YAML) but reads a nested
one (``--config 'train={epochs: 5}'``) with YAML's base loader, which keeps every leaf a
string, so ``5`` would reach the profile check as ``"5"``. :func:`typed` gives each string
leaf the type it has in a YAML file (``5`` int, ``1e-3`` and ``0.5`` float, ``true`` bool,
``null`` None); any other text stays a string.
"""

from __future__ import annotations

from typing import Any

import yaml


def _scalar(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)  # also 1e-3, which YAML 1.1 would leave a string
    except ValueError:
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, bool) else text


def typed(value: Any) -> Any:
    """``value`` with every string leaf of its mappings and lists typed (see module doc)."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [typed(item) for item in value]
    if isinstance(value, str):
        return _scalar(value)
    return value
