"""Helpers of local-slurm.sh: the GPU override of the SLURM profile and the result comparison.

    python workflow/cluster/slurmcheck.py overrides workflow/profiles/slurm/config.yaml --gpu 0
    python workflow/cluster/slurmcheck.py compare /tmp/slurmcheck/local /tmp/slurmcheck/slurm

`overrides` prints, one argument a line, the profile's whole `set-resources` mapping as
`rule:key=value` words with every `gpu` count replaced (and optionally its `default-resources`
with a partition added). The whole mapping, because `--set-resources` on the command line
replaces the profile's mapping instead of merging into it: naming only `train:gpu=0` would drop
the runtime the profile asks for every other rule and key.

`compare` checks that two finished runs of the workflow produced the same tables: the same set
of `results/**/*.csv` files, the same header in each, and, for every column that is not a
measurement of the machine (wall times by name; in benchmark tables everything but the columns
naming what was measured), the same value in every cell: the same text, or the same number
written two ways. Every row of a paired table is compared, the equal-compute family included: it
pairs runs at counted costs (sngrad.costs), not at measured times. Exact equality is the right
test here: both runs execute the same programs with the same seeds and thread counts on the same
machine; only the launcher differs.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import yaml

# Columns that measure the machine instead of the computation (wall times of training): a run
# through SLURM cannot reproduce them and need not.
MEASURED_COLUMNS = re.compile(r"time|wall|seconds|_ms$|_s$")
# A table under a benchmark/ folder is the machine timing itself (step times, their spread and
# ratios, memory peaks, and the retries and flags that depend on them): of it only the columns
# that say what was measured are compared.
BENCHMARK_KEYS = {"network", "batch_size", "method", "repeats", "runs", "mode", "threads",
                  "steps_per_epoch", "epochs"}  # fmt: skip


class CheckError(Exception):
    """Bad input to a helper: one line naming what was wrong."""


def profile_overrides(profile: Path, gpu: int, partition: str | None = None) -> list[str]:
    """Command-line arguments restating the profile's resources, with every `gpu` set to `gpu`.

    Returns `--set-resources rule:key=value ...` (and, with a partition,
    `--default-resources key=value ... slurm_partition='<partition>'`), one argument per item.
    """
    if gpu < 0:
        raise CheckError(f"--gpu must be a count >= 0, got {gpu}")
    try:
        settings = yaml.safe_load(profile.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CheckError(f"cannot read the profile {profile}: {error}") from None
    per_rule = settings.get("set-resources") or {}
    defaults = settings.get("default-resources") or {}
    if not isinstance(per_rule, dict) or not isinstance(defaults, dict):
        raise CheckError(f"{profile}: set-resources and default-resources must be mappings")
    words = []
    for rule, resources in per_rule.items():
        if not isinstance(resources, dict):
            raise CheckError(f"{profile}: set-resources.{rule} must map resource names to values")
        for key, value in resources.items():
            words.append(f"{rule}:{key}={gpu if key == 'gpu' else value}")
    arguments = ["--set-resources", *words] if words else []
    if partition is not None:
        if not partition.replace("_", "").replace("-", "").isalnum():
            raise CheckError(f"--partition must be a SLURM partition name, got {partition!r}")
        defaults = {**defaults, "slurm_partition": f"'{partition}'"}
        arguments += ["--default-resources", *(f"{k}={v}" for k, v in defaults.items())]
    return arguments


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1:]) if rows else ([], [])


def measured_columns(relative: Path, header: list[str]) -> list[str]:
    """The columns of a result table that are measurements of the machine."""
    if "benchmark" in relative.parts[:-1]:
        return [name for name in header if name not in BENCHMARK_KEYS]
    return [name for name in header if MEASURED_COLUMNS.search(name)]


def same_cell(text: str, other: str) -> bool:
    """Equal text, or the same number written two ways (a column's 2 against 2.0)."""
    if text == other:
        return True
    try:
        return float(text) == float(other)
    except ValueError:
        return False


def compare_table(expected: Path, actual: Path, relative: Path) -> tuple[list[str], list[str]]:
    """(differences, the measured columns set aside) between two CSV files."""
    header, rows = read_table(expected)
    other_header, other_rows = read_table(actual)
    if header != other_header:
        return [f"header differs: {header} vs {other_header}"], []
    if len(rows) != len(other_rows):
        return [f"{len(rows)} rows vs {len(other_rows)}"], []
    measured = measured_columns(relative, header)
    compared = [i for i, name in enumerate(header) if name not in measured]
    differences = []
    for line, (row, other) in enumerate(zip(rows, other_rows, strict=True), start=2):
        for i in compared:
            if not same_cell(row[i], other[i]):
                differences.append(f"line {line}, {header[i]}: {row[i]!r} vs {other[i]!r}")
    return differences, measured


def compare_runs(expected_root: Path, actual_root: Path) -> tuple[int, list[str], dict]:
    """(files compared, problems, {file: what was set aside}) for two run directories."""

    def tables(root: Path) -> set[Path]:
        if not (root / "results").is_dir():
            raise CheckError(f"{root} has no results/ directory: did the run finish?")
        return {p.relative_to(root) for p in (root / "results").rglob("*.csv")}

    expected, actual = tables(expected_root), tables(actual_root)
    problems = [f"only in {expected_root}: {p}" for p in sorted(expected - actual)]
    problems += [f"only in {actual_root}: {p}" for p in sorted(actual - expected)]
    set_aside = {}
    for relative in sorted(expected & actual):
        differences, measured = compare_table(
            expected_root / relative, actual_root / relative, relative
        )
        if measured:
            set_aside[str(relative)] = measured
        problems += [f"{relative}: {d}" for d in differences[:5]]
        if len(differences) > 5:
            problems.append(f"{relative}: ... {len(differences) - 5} more differing cells")
    return len(expected & actual), problems, set_aside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    overrides = commands.add_parser("overrides", help="resource arguments, GPUs replaced")
    overrides.add_argument("profile", type=Path)
    overrides.add_argument("--gpu", type=int, required=True)
    overrides.add_argument("--partition", help="also name this partition for every job")
    compare = commands.add_parser("compare", help="compare results/**/*.csv of two runs")
    compare.add_argument("expected", type=Path)
    compare.add_argument("actual", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "overrides":
            print("\n".join(profile_overrides(args.profile, args.gpu, args.partition)))
            return 0
        count, problems, set_aside = compare_runs(args.expected, args.actual)
    except CheckError as error:
        print(f"slurmcheck: {error}", file=sys.stderr)
        return 2
    for relative, columns in set_aside.items():
        print(f"  {relative}: set aside (measured): {', '.join(columns)}")
    for problem in problems:
        print(f"  DIFFERENT {problem}")
    if not count:
        print("  no result CSV file in common: nothing was compared")
    verdict = "identical" if not problems and count else "DIFFERENT"
    print(f"compared {count} result CSV files: {verdict}")
    return 0 if verdict == "identical" else 1


if __name__ == "__main__":
    sys.exit(main())
