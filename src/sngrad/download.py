"""Fetching pinned files into the data cache (pooch) and unpacking tar archives safely.

Nothing here knows about particular datasets: callers pass file names, SHA-256 sums and base
URLs. Every failure becomes a one-line :class:`~sngrad.errors.SngradError`, and nothing
half-downloaded or half-extracted is left in the cache: pooch streams into a temporary file
and only renames it after the checksum matched, and :func:`safe_extract` unpacks into a
temporary directory that is renamed only once every member was written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import pooch

from sngrad.errors import SngradError

DATA_DIR_ENV = "SNGRAD_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/sngrad")
TIMEOUT_S = 60
_CHUNK = 1 << 20


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The cache root: ``explicit`` if given, else ``$SNGRAD_DATA_DIR``, else ~/.cache/sngrad."""
    chosen = explicit if explicit not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    return Path(chosen or DEFAULT_DATA_DIR).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _join(base: str, name: str) -> str:
    return base if base.endswith(name) else base.rstrip("/") + "/" + name


def _check_url(url: str) -> None:
    # pooch also raises ValueError for an unknown protocol; rejecting those here keeps a
    # ValueError from pooch.retrieve meaning exactly "checksum mismatch".
    if not url.startswith(("http://", "https://")):
        raise SngradError(f"download URL {url!r} must start with http:// or https://")


def fetch(
    dataset: str,
    files: Sequence[tuple[str, str]],
    base_urls: Sequence[str],
    directory: Path,
    *,
    homepage: str = "",
) -> dict[str, Path]:
    """Make sure every ``(file name, sha256)`` is in ``directory``; return name -> path.

    A cached file whose checksum matches is used without any network request. Otherwise
    each base URL is tried in turn; a checksum mismatch stops at once (the download is
    removed), while an unreachable host moves on to the next URL. If no URL works, the
    error names the dataset, the expected files and where to put them by hand.
    """
    import requests  # pooch's own transport; imported late so `data list` stays fast

    for base in base_urls:
        _check_url(base)
    directory.mkdir(parents=True, exist_ok=True)
    downloader = pooch.HTTPDownloader(progressbar=False, chunk_size=_CHUNK, timeout=TIMEOUT_S)
    paths: dict[str, Path] = {}
    for name, sha in files:
        target = directory / name
        failures: list[str] = []
        for base in base_urls:
            url = _join(base, name)
            try:
                pooch.retrieve(
                    url,
                    known_hash=f"sha256:{sha}",
                    fname=name,
                    path=directory,
                    downloader=downloader,
                    progressbar=False,
                )
            except ValueError as err:
                target.unlink(missing_ok=True)
                got = re.search(r"got ([0-9a-fA-F]{64})", str(err))
                raise SngradError(
                    f"checksum mismatch for {name} of dataset {dataset!r} from {url}: expected "
                    f"sha256 {sha}"
                    + (f", got {got.group(1)}" if got else "")
                    + "; the downloaded file was removed"
                ) from None
            except (requests.exceptions.RequestException, OSError) as err:
                failures.append(f"{url}: {type(err).__name__}")
                continue
            paths[name] = target
            break
        else:
            raise _unavailable(dataset, files, base_urls, directory, homepage, failures)
    return paths


def _unavailable(dataset, files, base_urls, directory, homepage, failures) -> SngradError:
    names = ", ".join(name for name, _ in files)
    source = homepage or (base_urls[0] if base_urls else "its homepage")
    tried = "; ".join(failures) if failures else "no download URL configured"
    # a hand-placed file with the wrong content would otherwise look like it was ignored
    wrong = [
        n for n, sha in files if (directory / n).is_file() and sha256_file(directory / n) != sha
    ]
    if wrong:
        tried += f"; cached {', '.join(wrong)} failed the sha256 check"
    return SngradError(
        f"dataset {dataset!r} is not cached and could not be downloaded ({tried}); "
        f"put the files {names} (from {source}) into {directory}, or point --data-dir / "
        f"${DATA_DIR_ENV} at a directory that holds them in {directory.name}/"
    )


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be extracted, or None if it is a plain, contained entry."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts or "\\" in name:
        return "path escapes the destination ('..' or backslash)"
    if member.issym() or member.islnk():
        return "links are not allowed"
    if not (member.isfile() or member.isdir()):
        return "only regular files and directories are allowed"
    return None


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
