"""Compare two result trees of one profile: same bytes everywhere except declared timings.

    python tools/compare_results.py BEFORE AFTER [--show N]

BEFORE and AFTER are ``results/<profile>/`` folders (of two checkouts, or of one profile run
twice). Every file present in either is compared; the output is one line per file that
differs or exists on one side only, then a count. Exit status 0 when nothing differs.

What counts as a timing (and is blanked on both sides before comparing):

- CSV columns ``wall_time``, anything ending in ``_s``, ``_ms`` or ``_seconds``, and the
  benchmark's measured ``spread``, ``ratio``, ``peak_rss_mb`` and ``attempts``;
- the same keys in JSON (at any depth), plus ``started_unix``, ``started_utc``, ``command``
  (run_started.json), ``finished_unix`` (a ledger entry), a provenance's ``ledger`` (its
  compile, scan and CPU seconds), the git state a run recorded
  (``git_commit``, ``git_dirty``) and the interpreter in a recorded ``argv`` (its first item),
  which name the checkout rather than a result;
- in the executed notebooks: execution counts and every cell's metadata (papermill's start
  and end times, durations), and durations in minutes or seconds that a cell printed;
- in ``report.md``: elapsed minutes, UTC times, 40- and 64-digit hex digests (the commit,
  the input digest: a digest of files that contain timings), and the ledger's block between
  ``<!-- ledger -->`` and ``<!-- /ledger -->`` (where the run's time went).

A differing CSV is reported with the columns that differ, a differing text file with its
first ``--show`` differing lines, so that each difference can be attributed. Anything else
(figures, arrays) is compared byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import re
import sys
from pathlib import Path

TIMING_COLUMNS = {"wall_time", "spread", "ratio", "peak_rss_mb", "attempts"}
TIMING_SUFFIXES = ("_s", "_ms", "_seconds")
UNTRACKED_KEYS = {"started_unix", "started_utc", "finished_unix", "command", "git_commit",
                  "git_dirty", "ledger"}
IGNORED_FILES = {".snakemake_timestamp"}
REPORT_PATTERNS = (
    # the ledger's block of the reproducibility section: every number in it is a timing
    (re.compile(r"<!-- ledger -->.*?<!-- /ledger -->", re.DOTALL), "<ledger>"),
    (re.compile(r"\b\d+(\.\d+)? min\b"), "<minutes>"),
    (re.compile(r"\b\d+(\.\d+)? s\b"), "<seconds>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?( UTC|\+00:00)?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<sha256>"),
    (re.compile(r"\b[0-9a-f]{40}\b"), "<commit>"),
)


def is_timing(name: str) -> bool:
    """Whether a CSV column or JSON key holds a timing (module docstring)."""
    return name in TIMING_COLUMNS or name.endswith(TIMING_SUFFIXES)


def _csv_rows(text: str) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def compare_csv(before: str, after: str) -> str | None:
    """None when equal apart from timing columns, else which columns or rows differ."""
    columns_b, rows_b = _csv_rows(before)
    columns_a, rows_a = _csv_rows(after)
    if columns_b != columns_a:
        gone = [c for c in columns_b if c not in columns_a]
        new = [c for c in columns_a if c not in columns_b]
        return f"columns differ (only before: {gone}, only after: {new})"
    if len(rows_b) != len(rows_a):
        return f"{len(rows_b)} rows before, {len(rows_a)} after"
    differing = [
        c
        for c in columns_b
        if not is_timing(c) and any(rb[c] != ra[c] for rb, ra in zip(rows_b, rows_a, strict=True))
    ]
    if not differing:
        return None
    n_rows = sum(
        any(rb[c] != ra[c] for c in differing) for rb, ra in zip(rows_b, rows_a, strict=True)
    )
    return f"{n_rows} of {len(rows_b)} rows differ in columns {', '.join(differing)}"


def _without_timings(value):
    if isinstance(value, dict):
        kept = {
            k: _without_timings(v)
            for k, v in value.items()
            if not (is_timing(k) or k in UNTRACKED_KEYS)
        }
        if isinstance(kept.get("argv"), list) and kept["argv"]:
            kept["argv"] = ["<interpreter>", *kept["argv"][1:]]
        return kept
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _notebook(value: dict) -> dict:
    cells = []
    for cell in value.get("cells", []):
        cell = {k: v for k, v in cell.items() if k not in ("metadata", "execution_count", "id")}
        outputs = []
        for output in cell.get("outputs", []):
            outputs.append({k: v for k, v in output.items() if k not in ("metadata",
                                                                          "execution_count")})
        if outputs:
            cell["outputs"] = outputs
        cells.append(cell)
    return {"cells": cells}


def _text_diff(before: str, after: str, show: int) -> str | None:
    if before == after:
        return None
    lines = [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return f"{len(lines)} lines differ" + "".join(f"\n      {line}" for line in lines[:show])


def compare_file(before: Path, after: Path, show: int = 6) -> str | None:
    """None when the two files are equal apart from timings, else what differs (one line or a
    line followed by indented detail)."""
    raw_b, raw_a = before.read_bytes(), after.read_bytes()
    if raw_b == raw_a:
        return None
    suffix = before.suffix
    try:
        text_b, text_a = raw_b.decode(), raw_a.decode()
    except UnicodeDecodeError:
        return "bytes differ"
    if suffix == ".csv":
        return compare_csv(text_b, text_a)
    if suffix in (".json", ".ipynb"):
        value_b, value_a = json.loads(text_b), json.loads(text_a)
        if suffix == ".ipynb":
            value_b, value_a = _notebook(value_b), _notebook(value_a)
        value_b, value_a = _without_timings(value_b), _without_timings(value_a)
        if value_b == value_a:
            return None
        dump = lambda v: json.dumps(v, indent=1, sort_keys=True)  # noqa: E731
        text_b, text_a = dump(value_b), dump(value_a)
        if suffix == ".ipynb":  # what a cell printed: the same durations as in the report
            text_b, text_a = _blank_durations(text_b), _blank_durations(text_a)
            if text_b == text_a:
                return None
        return _text_diff(text_b, text_a, show)
    if before.name == "report.md":
        for pattern, replacement in REPORT_PATTERNS:
            text_b, text_a = pattern.sub(replacement, text_b), pattern.sub(replacement, text_a)
    return _text_diff(text_b, text_a, show)


def _blank_durations(text: str) -> str:
    for pattern, replacement in REPORT_PATTERNS[1:3]:  # minutes and seconds
        text = pattern.sub(replacement, text)
    return text


def files_of(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name not in IGNORED_FILES
    }


def compare_trees(before: Path, after: Path, show: int = 6) -> list[str]:
    """One entry per file that differs or exists on one side only, sorted by path."""
    names_b, names_a = files_of(before), files_of(after)
    out = []
    for name in sorted(names_b | names_a):
        if name not in names_a:
            out.append(f"only in before: {name}")
        elif name not in names_b:
            out.append(f"only in after: {name}")
        else:
            problem = compare_file(before / name, after / name, show)
            if problem is not None:
                out.append(f"differs: {name}: {problem}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--show", type=int, default=6, help="differing lines shown per file")
    args = parser.parse_args(argv)
    for root in (args.before, args.after):
        if not root.is_dir():
            parser.error(f"{root} is not a folder")
    lines = compare_trees(args.before, args.after, args.show)
    for line in lines:
        print(line)
    total = len(files_of(args.before) | files_of(args.after))
    print(f"{len(lines)} of {total} files differ apart from timings")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
