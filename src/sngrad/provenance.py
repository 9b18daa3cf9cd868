"""Where a result came from: spec, seeds, package versions, git commit, device, time, argv."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("jax", "jaxlib", "optax", "numpy", "sngrad")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """HEAD of the repository holding this source file, or "unknown" (no git, no repo)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def sha256_file(path: str | Path) -> str:
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
        "device": [str(d) for d in jax.devices()],
        "wall_time_s": wall_time_s,
        "argv": [sys.executable, "-m", "sngrad", *argv],
        **extra,
    }
