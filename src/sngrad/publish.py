"""Publish the default profile's report: ``results/default/`` -> ``paper/``.

``paper/report.md`` and ``paper/figures/`` are a copy of ``results/default/report.md`` and of
the manifest figures (:data:`sngrad.layout.FIGURES`) in ``results/default/figures/``, made by the
last step of a default run. The report links its figures as ``figures/<name>.png``, so both
copies resolve. Everything is checked before anything is written: the report exists and every
figure it links is there. Figures are copied first and the report last, each atomically, so a
reader never finds a report whose figures are missing; then any PNG in ``paper/figures/`` that
was not just published (a figure that left the manifest or the study) is removed, so the folder
mirrors the report. The marker :meth:`Layout.published_marker` records what was copied (sha256
of each file) and is the publish rule's only output: Snakemake never sees ``paper/``.

Only the ``default`` profile publishes; any other is a one-line error.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path

from sngrad.errors import SngradError
from sngrad.io import copy_file, write_json
from sngrad.layout import FIGURES, PUBLISHING_PROFILE, RESULTS, Layout, published_paths
from sngrad.provenance import git_commit, sha256_file

_LINK = re.compile(r"\]\((figures/[^)\s]+)\)")


def linked_figures(report_text: str) -> list[str]:
    """The ``figures/...`` targets of the report's Markdown links and images, in order."""
    return list(dict.fromkeys(_LINK.findall(report_text)))


def publish(profile: str, results_root: str = RESULTS, destination: str | Path = ".") -> dict:
    """Copy the profile's report and figures under ``destination`` and write the marker."""
    if profile != PUBLISHING_PROFILE:
        raise SngradError(
            f"profile {profile!r} cannot publish; only {PUBLISHING_PROFILE!r} writes paper/ "
            f"(its report stays at {Layout(profile, results_root).report()})"
        )
    layout = Layout(profile, results_root)
    report = Path(layout.report())
    if not report.is_file():
        raise SngradError(f"{report} does not exist; run the {profile} profile first")
    figures_dir = Path(layout.figures_dir())
    figures = [figures_dir / f"{name}.png" for name in FIGURES]
    figures = [f for f in figures if f.is_file()]
    present = {f"figures/{f.name}" for f in figures}
    missing = [link for link in linked_figures(report.read_text()) if link not in present]
    if missing:
        raise SngradError(
            f"{report} links {', '.join(missing)}, not found among the manifest figures in "
            f"{figures_dir}; allowed: figures/<name>.png for a name of sngrad.layout.FIGURES"
        )

    paper_report, paper_figures = published_paths(destination)
    for figure in figures:
        copy_file(figure, paper_figures / figure.name)
    copy_file(report, paper_report)
    published = {f.name for f in figures}
    stale = sorted(p for p in paper_figures.glob("*.png") if p.name not in published)
    for path in stale:
        path.unlink()

    marker = {
        "profile": profile,
        "published_utc": datetime.now(UTC).isoformat(),
        "commit": git_commit(),
        "report": {str(paper_report): sha256_file(paper_report)},
        "figures": {str(paper_figures / f.name): sha256_file(f) for f in figures},
        "removed": [str(p) for p in stale],
    }
    write_json(layout.published_marker(), marker)
    return marker


def cli(argv: list[str]) -> int:
    """``python -m sngrad publish --profile default --results-root results``."""
    parser = argparse.ArgumentParser(
        prog="python -m sngrad publish", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--profile", required=True, help=f"only {PUBLISHING_PROFILE!r} publishes")
    parser.add_argument("--results-root", default=RESULTS, help="folder of the profiles' results")
    parser.add_argument(
        "--destination", default=".", help="folder receiving paper/ (default: the current one)"
    )
    args = parser.parse_args(argv)
    marker = publish(args.profile, args.results_root, args.destination)
    print(
        f"published {len(marker['figures'])} figure(s) and the report into "
        f"{Path(args.destination) / 'paper'}; removed {len(marker['removed'])} stale figure(s)"
    )
    return 0
