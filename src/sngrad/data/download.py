"""The data cache, pinned-hash verification, HTTP downloads and safe tar extraction.

Nothing here knows about particular datasets: callers pass file names, SHA-256 sums and URLs
(the sources that use these live in :mod:`sngrad.data.sources`). Every failure becomes a
one-line :class:`~sngrad.errors.SngradError`, and nothing half-written is left behind:
downloads land in a temporary folder first, and :func:`safe_extract` unpacks into a temporary
directory that is renamed only once every member was written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import pooch

from sngrad.data.formats import idx_content, tar_member_problem
from sngrad.errors import SngradError
from sngrad.provenance import sha256_file

DATA_DIR_ENV = "SNGRAD_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/sngrad")
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
_CHUNK = 1 << 20


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The cache root: ``explicit`` if given, else ``$SNGRAD_DATA_DIR``, else ~/.cache/sngrad."""
    chosen = explicit if explicit not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    return Path(chosen or DEFAULT_DATA_DIR).expanduser()


def sha256_bytes(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def verify_file(
    path: str | os.PathLike,
    name: str,
    archive_sha: str,
    content_sha: str | None,
    origin: str,
) -> dict:
    """Accept a file when its own SHA-256 or that of its decompressed content is the pinned one.

    The content hash (of the IDX bytes inside a gzip file, or of the file itself when it is
    stored raw) identifies the data whatever compressor wrote it: a re-compressed copy with a
    rewritten gzip header is the same data, and is accepted. Returns what was checked;
    raises a one-line SngradError naming the file, both expected and actual hashes, and
    ``origin`` otherwise.
    """
    archive = sha256_file(path)
    record = {"archive_sha256": archive, "verified_by": "archive sha256"}
    if content_sha is None:
        if archive != archive_sha:
            raise SngradError(
                f"{name} from {origin}: sha256 {archive}, expected {archive_sha}; refused"
            )
        return record
    content = sha256_bytes(idx_content(path))
    record.update(content_sha256=content, content_verified=content == content_sha)
    if content == content_sha:
        if archive != archive_sha:
            record["verified_by"] = "content sha256"
        return record
    if archive == archive_sha:  # pinned archive, content pin not given for this copy
        return record
    raise SngradError(
        f"{name} from {origin}: content sha256 {content}, expected {content_sha} "
        f"(archive sha256 {archive}, expected {archive_sha}); refused"
    )


def check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise SngradError(f"download URL {url!r} must start with http:// or https://")


def join_url(base: str, name: str) -> str:
    return base if base.endswith(name) else base.rstrip("/") + "/" + name


def show_progress() -> bool:
    """Progress bars only for a person watching: stderr is a terminal."""
    return sys.stderr.isatty()


def http_download(url: str, target: Path) -> None:
    """Stream ``url`` into ``target`` (requests via pooch's downloader, no pooch cache logic).

    The connect timeout is short so that an offline machine moves on within seconds; the read
    timeout allows slow but live hosts. Raises ``requests`` exceptions and OSError.
    """
    check_url(url)
    downloader = pooch.HTTPDownloader(
        progressbar=show_progress(), chunk_size=_CHUNK, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    )
    downloader(url, str(target), None)


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted, or None if it is a plain, contained entry."""
    return tar_member_problem(
        member.name,
        is_file=member.isfile(),
        is_dir=member.isdir(),
        is_link=member.issym() or member.islnk(),
    )


def safe_extract(
    archive: str | os.PathLike, destination: str | os.PathLike, *, only: Iterable[str] = ()
) -> Path:
    """Unpack a (gzip) tar archive into ``destination`` without trusting its member names.

    Every member is checked before anything is written: absolute names, '..' components,
    symbolic or hard links and special files make the whole archive rejected. ``only``
    restricts extraction to those member names (all of which must be present). Files are
    written by copying their bytes, never through ``tarfile.extract``, and land in a
    temporary sibling directory that replaces ``destination`` only when complete.
    """
    archive, destination = Path(archive), Path(destination)
    wanted = set(only)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                problem = _member_problem(member)
                if problem:
                    raise SngradError(f"{archive}: unsafe tar member {member.name!r}: {problem}")
            missing = wanted - {m.name for m in members if m.isfile()}
            if missing:
                raise SngradError(
                    f"{archive}: missing expected member(s) {', '.join(sorted(missing))}"
                )
            for member in members:
                if not member.isfile() or (wanted and member.name not in wanted):
                    continue
                out = staging.joinpath(*PurePosixPath(member.name).parts)
                # second line of defence behind _member_problem
                if not out.resolve().is_relative_to(staging.resolve()):
                    raise SngradError(f"{archive}: tar member {member.name!r} escapes {staging}")
                out.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise SngradError(f"{archive}: not a readable tar archive ({err})") from None
    except OSError as err:  # a damaged gzip stream, or the disk refusing the write
        raise SngradError(f"{archive}: extraction failed ({err})") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return destination
