"""The report's elapsed time from run_started.json, in each form the file may take."""

import json
import os
import time
from datetime import UTC, datetime

import pytest

from sngrad.layout import Layout
from sngrad.report import elapsed

START = datetime(2026, 11, 23, 19, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("record", [
    {"started_unix": START},
    {"started": "2026-11-23T19:00:00Z"},
    {"started": "2026-11-23T20:00:00+01:00"},
    {"started_at": "2026-11-23T19:00:00"},  # no zone: UTC
])
def test_elapsed_reads_unix_and_iso_start_times(tmp_path, record):
    """Catches an ISO 8601 start (with Z, with an offset, or naive = UTC) misread or
    rejected, e.g. the Z suffix handled wrongly, the offset dropped (an hour off) or a naive
    time read in the machine's zone (run here in UTC+5:30, so that it shows)."""
    layout = Layout("p", str(tmp_path))
    path = tmp_path / "p" / "run_started.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "XST-5:30"  # POSIX form: 5 h 30 east of UTC, no zone files needed
    time.tzset()
    try:
        got = elapsed(layout, now=START + 1800)
    finally:
        if zone is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = zone
        time.tzset()
    assert got["available"] and got["seconds"] == pytest.approx(1800)
    assert got["started"] == "2026-11-23 19:00:00 UTC"
