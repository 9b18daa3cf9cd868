"""Publish the default profile's report: ``results/default/`` -> ``paper/``, as one set.

``paper/report.md`` and ``paper/figures/`` are a copy of ``results/default/report.md`` and of
the manifest figures (:data:`sngrad.layout.FIGURES`) in ``results/default/figures/``, made by the
last step of a default run. The report links its figures as ``figures/<name>.png``, so both
copies resolve. Everything is checked before anything is written: the report exists and every
figure it links is there. Any PNG in ``paper/figures/`` that is not published this time (a
figure that left the manifest or the study) is dropped, so the folder mirrors the report.

All or nothing
    The report and its figures change together or not at all. The new ``paper/`` is built
    beside the old one, in ``.paper.staging/``: the old folder's files are linked (or copied)
    there, then the figures and the report are written over them. One rename then puts the
    staging folder in place. On Linux that rename atomically exchanges the two folders
    (``renameat2`` with ``RENAME_EXCHANGE``), so ``paper/`` is at every instant either the old
    complete set or the new one, whatever stops the command (a kill, a full disk, an I/O
    error). Elsewhere the old folder is first renamed to ``.paper.previous/``, and the next
    publish (or a reader calling :func:`recover`) moves it back if the command stopped between
    the two renames. A leftover staging folder is removed on the next publish.

The marker :meth:`Layout.published_marker` records what was published (sha256 of each file)
and is the publish rule's only output: Snakemake never sees ``paper/``. Only the ``default``
profile publishes; any other is a one-line error.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sngrad.errors import SngradError
from sngrad.io import copy_file, write_json
from sngrad.layout import FIGURES, PUBLISHING_PROFILE, RESULTS, Layout, published_paths
from sngrad.provenance import git_commit, sha256_file

_LINK = re.compile(r"\]\((figures/[^)\s]+)\)")
STAGING = ".paper.staging"
PREVIOUS = ".paper.previous"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def linked_figures(report_text: str) -> list[str]:
    """The ``figures/...`` targets of the report's Markdown links and images, in order."""
    return list(dict.fromkeys(_LINK.findall(report_text)))


def _op(action: Callable, *args):
    """Every change publishing makes to the file system goes through here.

    One seam, so that a test can stop publishing at the k-th operation, for every k.
    """
    return action(*args)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step; False where the system cannot (then nothing moved)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False  # the file system has no exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _link_or_copy(source: str, destination: str) -> None:
    # a hard link costs no space (a full disk cannot stop it); files are only ever replaced
    # by rename, never written through, so the old folder's files stay as they were
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _staged_copy(source: str, destination: str) -> None:
    _op(_link_or_copy, source, destination)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(destination: str | Path = ".") -> None:
    """Put back the previous ``paper/`` if a publish stopped between its two renames.

    Only the fallback path (no atomic exchange) can leave ``paper/`` missing; this restores
    the old complete set and removes any staging folder a stopped publish left behind.
    """
    root = Path(destination)
    paper, previous, staging = root / "paper", root / PREVIOUS, root / STAGING
    if previous.exists():
        if not paper.exists():
            _op(os.rename, previous, paper)
        else:
            _op(shutil.rmtree, previous)
    if staging.exists():
        _op(shutil.rmtree, staging)


def _switch(staging: Path, paper: Path, previous: Path) -> None:
    """Make ``staging`` the new ``paper`` in one step; the old set ends up in ``staging``."""
    if not paper.exists():
        _op(os.rename, staging, paper)
        return
    if _op(_exchange, staging, paper):
        return
    _op(os.rename, paper, previous)
    _op(os.rename, staging, paper)
    _op(os.rename, previous, staging)


def _checked_inputs(profile: str, results_root: str) -> tuple[Layout, Path, list[Path]]:
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
    return layout, report, figures


def publish(profile: str, results_root: str = RESULTS, destination: str | Path = ".") -> dict:
    """Publish the profile's report and figures as ``destination/paper``; write the marker."""
    layout, report, figures = _checked_inputs(profile, results_root)
    root = Path(destination)
    paper_report, paper_figures = published_paths(root)
    paper = paper_report.parent
    staging, previous = root / STAGING, root / PREVIOUS
    recover(root)

    try:
        if paper.is_dir():
            _op(shutil.copytree, paper, staging, True, None, _staged_copy)
        else:
            _op(os.makedirs, staging)
        staged_report = staging / paper_report.relative_to(paper)
        staged_figures = staging / paper_figures.relative_to(paper)
        for figure in figures:
            _op(copy_file, figure, staged_figures / figure.name)
        _op(copy_file, report, staged_report)
        published = {f.name for f in figures}
        stale = sorted(p for p in staged_figures.glob("*.png") if p.name not in published)
        for path in stale:
            _op(path.unlink)
        _op(_fsync_dir, staged_figures if figures else staging)
        _switch(staging, paper, previous)
    except OSError:
        # a full disk or an I/O error: paper/ is still one complete set; drop the half-built one
        shutil.rmtree(staging, ignore_errors=True)
        raise

    try:  # paper/ holds the new set from here on
        _op(_fsync_dir, root)
        _op(shutil.rmtree, staging)
        marker = {
            "profile": profile,
            "published_utc": datetime.now(UTC).isoformat(),
            "commit": git_commit(),
            "report": {str(paper_report): sha256_file(paper_report)},
            "figures": {str(paper_figures / f.name): sha256_file(f) for f in figures},
            "removed": [str(paper_figures / p.name) for p in stale],
        }
        write_json(layout.published_marker(), marker)
    except OSError as err:
        raise PublishedUnrecorded(err.errno, err.strerror, err.filename) from err
    return marker


class PublishedUnrecorded(OSError):
    """paper/ holds the new set, but finishing (the old set's removal, the marker) failed."""


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
    paper = Path(args.destination) / "paper"
    try:
        marker = publish(args.profile, args.results_root, args.destination)
    except PublishedUnrecorded as err:
        where = err.filename or paper
        raise SngradError(
            f"{where}: publishing could not finish ({err.strerror or err}); {paper} already "
            "holds the new report and figures, but the run has not recorded it; free space or "
            "fix permissions, then rerun to record it"
        ) from None
    except OSError as err:
        where = err.filename or paper
        raise SngradError(
            f"{where}: publishing stopped ({err.strerror or err}); {paper} still holds the "
            "previous complete report and figures; free space or fix permissions, then rerun"
        ) from None
    print(
        f"published {len(marker['figures'])} figure(s) and the report into {paper}; "
        f"removed {len(marker['removed'])} stale figure(s)"
    )
    return 0
