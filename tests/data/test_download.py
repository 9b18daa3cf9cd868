"""The real download path against a local HTTP server, and the IDX / CIFAR / tar readers.

The test writes small files in the genuine formats (gzip IDX, CIFAR-10 binary in a tar.gz),
serves them from 127.0.0.1 and points registry entries at that server, so the HTTP download,
the checksum pinning, the cache and the parsers all run exactly as they would on the internet.
(The registry routes, PyPI wheel and Debian package, are tested in test_sources.py.)
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import tar_archive

from sngrad import data
from sngrad.data import download, formats
from sngrad.errors import SngradError

IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
PROVENANCE = "SOURCE.json"


# --------------------------------------------------------------------------- helpers


def idx_bytes(values: np.ndarray, code: int = 0x08) -> bytes:
    """Uncompressed IDX encoding of a uint8 array."""
    header = bytes([0, 0, code, values.ndim]) + np.asarray(values.shape, ">u4").tobytes()
    return header + values.astype(np.uint8).tobytes()


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def fake_mnist(n_train=100, n_test=20, seed=0):
    """Gzip IDX files of random 28x28 images with balanced labels, and the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y": np.tile(np.arange(10, dtype=np.uint8), n_train // 10),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": np.tile(np.arange(10, dtype=np.uint8), n_test // 10),
    }
    arrays["x"][:, 0, 0] = 0  # a pixel that is blank everywhere in training
    keys = ("x", "y", "x_test", "y_test")
    pairs = zip(IDX_NAMES, keys, strict=True)
    files = {name: gzip.compress(idx_bytes(arrays[key])) for name, key in pairs}
    return files, arrays


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    flat = images.reshape(len(images), -1)
    return np.concatenate([labels[:, None].astype(np.uint8), flat], axis=1).tobytes()




def fake_cifar(per_batch=10, seed=0):
    rng = np.random.default_rng(seed)
    members, images, labels = {}, [], []
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        x[:, 0] //= 4  # the red channel is darker, so channel constants differ
        y = np.arange(per_batch, dtype=np.uint8) % 10
        members[f"cifar-10-batches-bin/{name}"] = cifar_records(x, y)
        images.append(x)
        labels.append(y)
    members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\nautomobile\n"
    return members, images, labels


class Server:
    """Serves a dict of path -> bytes from 127.0.0.1 and counts the requests per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                payload = outer.files.get(self.path.lstrip("/"))
                if payload is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        # a short poll interval makes shutdown() quick at teardown
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = Server()
    srv.thread.start()
    yield srv
    srv.close()


def served_spec(name: str, server: Server, files: dict[str, bytes]) -> data.DatasetSpec:
    server.files.update(files)
    return data.get_spec(name).with_source(server.url, {k: sha256(v) for k, v in files.items()})


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


# --------------------------------------------------------------------------- IDX datasets


def test_mnist_download_parse_and_cache(server, tmp_path):
    files, arrays = fake_mnist()
    spec = served_spec("mnist", server, files)
    splits = data.load_dataset(spec, data_dir=tmp_path, seed=0, val_fraction=0.2)

    assert len(server.requests) == 4
    assert leftovers(tmp_path / "mnist") == sorted([*IDX_NAMES, PROVENANCE])
    assert leftovers(tmp_path) == sorted(["mnist", *IDX_NAMES, PROVENANCE])  # no staging
    assert [len(splits.y_train), len(splits.y_val), len(splits.y_test)] == [80, 20, 20]
    assert splits.meta["class_counts"]["val"] == [2] * 10
    # the official test split is kept as it is, in order
    assert np.array_equal(splits.y_test, arrays["y_test"].astype(np.int32))
    assert splits.x_train.shape == (80, 784) and splits.x_train.dtype == np.float32
    # test images are the served ones under the train constants: same pixel order
    order = np.argsort(arrays["x_test"].reshape(20, -1)[:, 1])
    assert np.all(np.diff(splits.x_test[order, 1]) >= 0)
    assert np.all(splits.x_train[:, 0] == 0.0) and np.isfinite(splits.x_train).all()
    source = splits.meta["source"]
    assert source["route"] == "official" and source["urls"][IDX_NAMES[0]].startswith(server.url)
    assert {k: v["archive_sha256"] for k, v in source["files"].items()} == {
        k: sha256(v) for k, v in files.items()
    }
    assert all(v["verified_by"] == "archive sha256" for v in source["files"].values())

    again = data.load_dataset(spec, data_dir=tmp_path, seed=0, val_fraction=0.2)
    assert len(server.requests) == 4  # served from the cache
    assert np.array_equal(again.x_val, splits.x_val)
    cached = again.meta["source"]
    assert cached["route"] == "cache" and cached["first_obtained_from"]["route"] == "official"


def test_data_dir_comes_from_the_environment(server, tmp_path, monkeypatch):
    files, _ = fake_mnist()
    spec = served_spec("fashion_mnist", server, files)
    monkeypatch.setenv(download.DATA_DIR_ENV, str(tmp_path / "cache"))
    data.load_dataset(spec)
    assert leftovers(tmp_path / "cache" / "fashion_mnist") == sorted([*IDX_NAMES, PROVENANCE])


def test_checksum_mismatch_refuses_with_both_hashes_and_keeps_nothing(server, tmp_path, capsys):
    files, _ = fake_mnist()
    server.files.update(files)
    spec = data.get_spec("mnist").with_source(server.url)  # the real pinned sums
    with pytest.raises(SngradError, match=r"official hosts: train-images.*refused") as err:
        data.load_dataset(spec, data_dir=tmp_path)
    text = str(err.value)
    content = sha256(gzip.decompress(files[IDX_NAMES[0]]))
    pinned = dict(spec.content_sha256)[IDX_NAMES[0]]
    assert f"content sha256 {content}, expected {pinned}" in text
    assert f"archive sha256 {sha256(files[IDX_NAMES[0]])}, expected {spec.files[0][1]}" in text
    assert "\n" not in text
    assert leftovers(tmp_path) == []  # neither the staging folder nor a cache folder
    # the refusal was also said as it happened, in one line, naming the source
    said = [line for line in capsys.readouterr().err.splitlines() if "refused" in line]
    assert len(said) == 1 and "official hosts" in said[0] and content in said[0]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: gzip.compress(gzip.decompress(raw)[:-5]), "IDX file truncated"),
        (lambda raw: gzip.compress(gzip.decompress(raw) + b"\0"), "trailing bytes"),
        (lambda raw: raw[: len(raw) // 2], "not a complete gzip file"),
        (lambda raw: gzip.compress(b"\x08\x03" + gzip.decompress(raw)[2:]), "magic"),
    ],
    ids=["truncated", "trailing", "cut-gzip", "bad-magic"],
)
def test_malformed_idx_is_reported_with_its_file(server, tmp_path, damage, message):
    files, _ = fake_mnist()
    files[IDX_NAMES[2]] = damage(files[IDX_NAMES[2]])
    spec = served_spec("mnist", server, files)
    with pytest.raises(SngradError, match=message) as err:
        data.load_dataset(spec, data_dir=tmp_path)
    assert IDX_NAMES[2] in str(err.value)


def test_offline_without_cache_says_what_to_put_where(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    spec = data.get_spec("fashion_mnist").with_source(closed)
    with pytest.raises(SngradError) as err:
        data.load_dataset(spec, data_dir=tmp_path)
    text = str(err.value)
    assert "fashion_mnist" in text and str(tmp_path / "fashion_mnist") in text
    assert all(name in text for name in IDX_NAMES)
    assert "\n" not in text
    assert leftovers(tmp_path) == []
    assert "ConnectionError" in text and "(gzip or uncompressed IDX)" in text

    # a wrong file put there by hand is named, not silently ignored
    (tmp_path / "fashion_mnist").mkdir(exist_ok=True)
    (tmp_path / "fashion_mnist" / IDX_NAMES[0]).write_bytes(b"not the real file")
    with pytest.raises(SngradError, match=f"{IDX_NAMES[0]} from the cache: content sha256"):
        data.load_dataset(spec, data_dir=tmp_path)


def test_offline_host_is_asked_once_and_fails_within_seconds(tmp_path, monkeypatch):
    import requests

    calls = []

    def unreachable(url, timeout=None, **kwargs):
        calls.append((url, timeout))
        raise requests.exceptions.ConnectTimeout("no route")

    monkeypatch.setattr(requests, "get", unreachable)
    spec = data.get_spec("mnist").with_source(("http://a.invalid/", "http://b.invalid/"))
    with pytest.raises(SngradError, match="ConnectTimeout"):
        data.load_dataset(spec, data_dir=tmp_path)
    # each dead host once (not once per file), with a connect timeout of a few seconds
    assert [url for url, _ in calls] == [
        f"http://a.invalid/{IDX_NAMES[0]}",
        f"http://b.invalid/{IDX_NAMES[0]}",
    ]
    assert all(timeout[0] <= 10 for _, timeout in calls)


def test_missing_file_on_the_server_tries_the_next_url(server, tmp_path):
    files, _ = fake_mnist()
    spec = served_spec("mnist", server, files)
    spec = spec.with_source((server.url + "missing/", server.url))
    data.load_dataset(spec, data_dir=tmp_path)
    assert sum(r.startswith("/missing/") for r in server.requests) == 4
    assert len(server.requests) == 8


def test_with_source_rejects_unknown_files_and_schemes(tmp_path):
    with pytest.raises(SngradError, match="unknown file"):
        data.get_spec("mnist").with_source("http://x/", {"nope.gz": "0" * 64})
    with pytest.raises(SngradError, match="http"):
        data.load_dataset(data.get_spec("mnist").with_source("ftp://x/"), data_dir=tmp_path)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_download_extract_and_cache(server, tmp_path):
    members, images, labels = fake_cifar()
    spec = served_spec("cifar10", server, {CIFAR_ARCHIVE: tar_archive(members, "gz")})
    splits = data.load_dataset(spec, data_dir=tmp_path, seed=1, val_fraction=0.2)

    assert [len(splits.y_train), len(splits.y_val), len(splits.y_test)] == [40, 10, 10]
    assert splits.x_test.shape == (10, 3072)
    assert np.array_equal(splits.y_test, labels[5].astype(np.int32))
    norm = splits.meta["normalisation"]
    assert norm["mode"] == "per-channel" and norm["mean"][0] < norm["mean"][1] / 2
    train_images = np.concatenate(images[:5]).astype(np.float64)
    expected_red = (images[5][:, 0].astype(np.float64) - norm["mean"][0]) / norm["std"][0]
    assert np.allclose(splits.x_test[:, :1024], expected_red.reshape(10, -1), atol=1e-4)
    # the constants come from the 40 training images only, not from the 10 validation ones
    train_labels = np.concatenate(labels[:5])
    idx = data.split_indices(train_labels, seed=1, val_fraction=0.2, has_test=True)
    blue = train_images[:, 2]
    assert norm["mean"][2] == pytest.approx(blue[idx["train"]].mean(), rel=1e-12)
    assert norm["std"][2] == pytest.approx(blue[idx["train"]].std(), rel=1e-12)
    assert norm["mean"][2] != pytest.approx(blue.mean(), rel=1e-12)
    assert len(server.requests) == 1

    data.load_dataset(spec, data_dir=tmp_path, seed=1, val_fraction=0.2)
    assert len(server.requests) == 1
    extracted = tmp_path / "cifar10" / "extracted" / "cifar-10-batches-bin"
    assert sorted(p.name for p in extracted.iterdir())[0] == "data_batch_1.bin"
    assert not (extracted / "batches.meta.txt").exists()  # only what is read is unpacked


def test_cifar_truncated_batch_names_the_file(server, tmp_path):
    members, _, _ = fake_cifar()
    key = "cifar-10-batches-bin/data_batch_3.bin"
    members[key] = members[key][:-100]
    spec = served_spec("cifar10", server, {CIFAR_ARCHIVE: tar_archive(members, "gz")})
    with pytest.raises(SngradError, match=r"data_batch_3\.bin.*3073-byte"):
        data.load_dataset(spec, data_dir=tmp_path)


@pytest.mark.parametrize(
    ("evil", "problem"),
    [
        ("../escaped.bin", "escapes"),
        ("cifar-10-batches-bin/../../escaped.bin", "escapes"),
        ("<tmp>/escaped.bin", "absolute"),
    ],
)
def test_tar_member_with_path_escape_is_rejected(server, tmp_path, evil, problem):
    members, _, _ = fake_cifar()
    members[evil.replace("<tmp>", str(tmp_path))] = b"gotcha"
    spec = served_spec("cifar10", server, {CIFAR_ARCHIVE: tar_archive(members, "gz")})
    cache = tmp_path / "cache"
    with pytest.raises(SngradError, match=f"unsafe tar member.*{problem}"):
        data.load_dataset(spec, data_dir=cache)
    assert not (tmp_path / "escaped.bin").exists()
    assert not (cache / "escaped.bin").exists()
    assert leftovers(cache / "cifar10") == sorted([CIFAR_ARCHIVE, PROVENANCE])  # none extracted


def test_tar_links_are_rejected(tmp_path):
    link = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_archive({}, "gz", [link]))
    with pytest.raises(SngradError, match="links are not allowed"):
        download.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_missing_member_is_reported(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_archive({"x/a.bin": b"1"}, "gz"))
    with pytest.raises(SngradError, match=r"missing expected member.*x/b\.bin"):
        download.safe_extract(archive, tmp_path / "out", only=["x/a.bin", "x/b.bin"])
    archive.write_bytes(b"not a tar at all")
    with pytest.raises(SngradError, match="not a readable tar archive"):
        download.safe_extract(archive, tmp_path / "out")
    whole = tar_archive({"x/a.bin": bytes(range(256)) * 400}, "gz")
    archive.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SngradError, match=r"a\.tar\.gz: (not a readable|extraction failed)"):
        download.safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


# --------------------------------------------------------------------------- format readers


def test_parse_idx_header_checks():
    good = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert formats.parse_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(SngradError, match="unknown IDX type code 0x07"):
        formats.parse_idx(good[:2] + b"\x07" + good[3:], "f.gz")
    with pytest.raises(SngradError, match="0 dimensions"):
        formats.parse_idx(b"\0\0\x08\0", "f.gz")
    with pytest.raises(SngradError, match="truncated IDX header"):
        formats.parse_idx(good[:9], "f.gz")
    big_endian = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2]) + np.array([1, 258], ">i2").tobytes()
    assert formats.parse_idx(big_endian).tolist() == [1, 258]


def test_read_idx_checks_rank_and_type(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 2), np.uint8))))
    with pytest.raises(SngradError, match=r"labels\.gz.*2 dimensions; expected 1"):
        formats.read_idx(path, ndim=1)
    with pytest.raises(SngradError, match="file not found"):
        formats.read_idx(tmp_path / "absent.gz")


def test_parse_cifar_records_layout_and_labels():
    images = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3, 32, 32) % 251
    raw = cifar_records(images.astype(np.uint8), np.array([3, 9], np.uint8))
    x, y = formats.parse_cifar_records(raw)
    assert y.tolist() == [3, 9] and np.array_equal(x, images.astype(np.uint8))
    bad_label = b"\x0a" + raw[1:]
    with pytest.raises(SngradError, match="label 10 out of range"):
        formats.parse_cifar_records(bad_label, "b.bin")
