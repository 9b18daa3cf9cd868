"""When the run that made a profile's results began (``results/<profile>/run_started.json``).

The report states the elapsed wall time from this start to its rendering, so the start must
be that of the first job of the results it reports, not of the last command. The workflow
records it when a run begins (its ``onstart`` handler) and keeps it across later runs of the
same profile: a run resumed after a kill, a rerun of the report alone, a rerun after a
corrupt file. It begins a new start when there is none (a fresh results folder) or when the
profile itself changed (the sha256 of its checked content differs), since the results are
then made again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sngrad.io import write_json


def record(path: str | Path, profile_json: str, argv: Sequence[str],
           now: float | None = None) -> bool:
    """Write a new start into ``path`` unless it holds one of the same profile; True if so."""
    path = Path(path)
    digest = hashlib.sha256(profile_json.encode()).hexdigest()
    try:
        kept = json.loads(path.read_text()).get("profile_sha256") == digest
    except (OSError, ValueError, AttributeError):
        kept = False
    if kept:
        return False
    now = time.time() if now is None else now
    write_json(path, {
        "started_unix": now,
        "started_utc": datetime.fromtimestamp(now, UTC).isoformat(),
        "command": list(argv),
        "profile_sha256": digest,
    })
    return True
