"""One workflow run per profile at a time, and no stale lock after a kill.

Snakemake's own lock (``.snakemake/locks``) outlives a run that was killed (SIGKILL, power
loss) and then refuses the very command that should resume it. The workflow therefore turns
that lock off (``nolock`` in its profile) and takes this one instead: a file holding the
process id of the running snakemake, created exclusively. A holder that no longer exists (or
whose process id now belongs to something that is not snakemake) left a stale lock, which the
next run removes; a live holder makes the next run stop with a one-line error.
"""

from __future__ import annotations

import os
from pathlib import Path

from sngrad.errors import SngradError


def _holder(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _running_snakemake(pid: int) -> bool:
    """Whether ``pid`` is a live process; on Linux also that it is a snakemake."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (not Linux): alive is all we know
    except OSError:
        return True
    # empty while a process is being set up: not known to be something else
    return not cmdline or b"snakemake" in cmdline


def acquire(path: str | os.PathLike) -> None:
    """Take the lock at ``path`` for this process, removing a stale one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder != os.getpid() and _running_snakemake(holder):
                raise SngradError(
                    f"{path}: another snakemake run of this profile is active (pid {holder}); "
                    "wait for it to finish, or remove the file if that process is not snakemake"
                ) from None
            path.unlink(missing_ok=True)  # its run was killed
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return
    raise SngradError(f"{path}: could not take the run lock; remove the file and retry")


def release(path: str | os.PathLike) -> None:
    """Drop the lock if this process holds it."""
    path = Path(path)
    if _holder(path) == os.getpid():
        path.unlink(missing_ok=True)
