"""Where a result came from: spec, seeds, package versions, git commit, device, time, argv.

The one home of the file hash (:func:`sha256_file`), the git commit and dirty flag
(:func:`git_commit`, :func:`git_dirty`) and the package versions (:func:`package_versions`):
every other module imports them from here.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from sngrad import ledger

PACKAGES = ("jax", "jaxlib", "optax", "numpy", "sngrad")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _git(args: list[str], cwd: str | Path | None) -> str | None:
    """stdout of ``git args`` in ``cwd`` (default: this source file's folder), or None."""
    where = Path(__file__).resolve().parent if cwd is None else Path(cwd)
    try:
        out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the repository holding ``cwd`` (default: this source file), or "unknown"."""
    out = _git(["rev-parse", "HEAD"], cwd)
    return (out or "").strip() or "unknown"


def git_dirty(cwd: str | Path | None = None) -> bool | None:
    """Whether tracked files differ from HEAD (untracked files ignored); None without git."""
    out = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return None if out is None else bool(out.strip())


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(*, spec: dict, seeds: list[int], argv: list[str], wall_time_s: float,
               **extra: Any) -> dict[str, Any]:
    """The provenance record written next to every result file (``extra`` is merged in)."""
    import jax  # late: the device list needs an initialised backend

    return {
        "spec": spec,
        "seeds": list(seeds),
        "versions": package_versions(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "device": [str(d) for d in jax.devices()],
        "wall_time_s": wall_time_s,
        # this process so far: compilation, training scans, CPU (sngrad.ledger)
        "ledger": ledger.phases(),
        "argv": [sys.executable, "-m", "sngrad", *argv],
        **extra,
    }
