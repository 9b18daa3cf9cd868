"""An operating-system error as one line: the path, what failed, and what to do.

A command that cannot write its results (a read-only or full folder, a path with a file
where a folder should be, a disk error) prints this instead of a traceback; its finished
results are written atomically, so rerunning the same command after the fix resumes.
"""

from __future__ import annotations

import errno

_ADVICE = {
    errno.ENOSPC: "free space on that file system (or choose another location), then rerun "
                  "the same command",
    errno.EDQUOT: "free space within your quota (or choose another location), then rerun",
    errno.EROFS: "the file system is read-only: choose a writable location, then rerun",
    errno.EACCES: "make that folder writable for you (or choose another location), then rerun",
    errno.EPERM: "make that folder writable for you (or choose another location), then rerun",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move it away or choose "
                   "another path",
    errno.EEXIST: "a file is where a folder should be: move it away or choose another path",
    errno.EISDIR: "a folder is where a file should be: choose another path",
    errno.ENOENT: "a folder on that path does not exist: check the path",
    errno.EIO: "the disk reported an I/O error: check it, then rerun the same command "
               "(finished results are kept)",
}


def describe(err: OSError) -> str:
    """``PATH: what failed; what to do`` for ``err``."""
    where = err.filename if err.filename is not None else "(no path)"
    if err.filename2 is not None:
        where = f"{where} -> {err.filename2}"
    what = err.strerror or type(err).__name__
    return f"{where}: {what}; {advice(err.errno)}"


def advice(code: int | None) -> str:
    """What to do about an error of number ``code`` (an ``errno`` value)."""
    return _ADVICE.get(code, "check the path and its permissions, then rerun")
