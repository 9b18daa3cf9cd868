"""Atomic result files: every file appears complete or not at all.

Each writer puts the bytes into a temporary file in the destination's directory and then
renames it over the destination with :func:`os.replace`, which is atomic on POSIX when both
names are on the same file system (hence "same directory", never /tmp). A job killed half-way
therefore leaves either the old file or the new one, plus at most a stray ``.*.tmp`` file,
never a truncated CSV that a later rule would read as valid.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def _default_mode() -> int:
    # mkstemp creates 0600 files; results should get the usual permissions under the umask.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False):
    """Call ``write(handle)`` on a temporary sibling of ``path``, then rename it to ``path``.

    The data is flushed and fsync'ed before the rename so that a crash right after cannot
    expose an empty file under the final name. On any exception the temporary file is removed
    and ``path`` is left as it was; an OSError that names no file (a full disk during the
    write) is raised again naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mode = "wb" if binary else "w"
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # a write or fsync on a full disk names no file: name ours
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda h: h.write(text))


def _json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON; they become null rather than a non-standard token."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_text(path, text)


def format_cell(value: Any) -> str:
    """CSV cell text: None -> empty, floats as the shortest repr that round-trips exactly."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(
    path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> Path:
    """One header row, then one row per mapping (missing keys are an error, not blanks)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row[c]) for c in columns])
    return write_text(path, buffer.getvalue())


def write_frame(path: str | os.PathLike, frame) -> Path:
    """A pandas DataFrame as CSV (no index), atomically: what the analysis notebooks write."""
    return atomic_write(path, lambda h: frame.to_csv(h, index=False))


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG, atomically (the format is given, not read from the name)."""
    return atomic_write(
        path, lambda h: fig.savefig(h, format="png", dpi=dpi, bbox_inches="tight"), binary=True
    )


def copy_file(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """A byte-for-byte copy of ``source``, appearing at ``destination`` complete or not at all."""
    data = Path(source).read_bytes()
    return atomic_write(destination, lambda h: h.write(data), binary=True)
