"""Readers for the two on-disk formats of the downloadable datasets.

* IDX (MNIST, Fashion-MNIST), gzip-compressed: a 4-byte magic number (two zero bytes, a type
  code, the number of dimensions), one big-endian uint32 per dimension, then the values in C
  order, big-endian.
* CIFAR-10 binary: fixed 3073-byte records, one label byte followed by a 32x32 red plane, a
  green plane and a blue plane (row-major within each plane).

Both readers check everything the format lets them check and raise
:class:`~sngrad.errors.SngradError` naming the file and the problem, so that a truncated or
foreign file never turns into silently wrong arrays.
"""

from __future__ import annotations

import gzip
import zlib
from math import prod
from pathlib import Path

import numpy as np

from sngrad.errors import SngradError

# IDX type code -> numpy dtype (big-endian where it matters)
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

CIFAR_IMAGE_SHAPE = (3, 32, 32)
CIFAR_RECORD_BYTES = 1 + prod(CIFAR_IMAGE_SHAPE)


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise SngradError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise SngradError(f"{path}: not a complete gzip file ({err})") from None


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode uncompressed IDX bytes; ``source`` names the file in error messages."""
    if len(raw) < 4:
        raise SngradError(f"{source}: {len(raw)} bytes is too short for an IDX header (4 bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise SngradError(
            f"{source}: bad IDX magic number {raw[:4].hex()}; expected 0000<type><ndim>"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise SngradError(f"{source}: unknown IDX type code 0x{code:02X}; valid: {allowed}")
    if ndim == 0:
        raise SngradError(f"{source}: IDX header declares 0 dimensions; need at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SngradError(f"{source}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + prod(dims) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise SngradError(
            f"{source}: IDX file {what}: header says {dims} of {dtype.name} "
            f"({expected} bytes), file has {len(raw)} bytes"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    # native byte order, and a writable copy detached from the bytes object
    return values.astype(dtype.newbyteorder("="))


def read_idx(
    path: str | Path,
    *,
    ndim: int | None = None,
    dtype: np.dtype | type | None = np.uint8,
) -> np.ndarray:
    """Read a gzip-compressed IDX file, optionally insisting on its rank and element type."""
    path = Path(path)
    values = parse_idx(_read_gzip(path), source=str(path))
    if ndim is not None and values.ndim != ndim:
        raise SngradError(f"{path}: IDX array has {values.ndim} dimensions; expected {ndim}")
    if dtype is not None and values.dtype != np.dtype(dtype):
        raise SngradError(
            f"{path}: IDX element type is {values.dtype.name}; expected {np.dtype(dtype).name}"
        )
    return values


def parse_cifar_records(
    raw: bytes, source: str = "<bytes>", num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Decode CIFAR-10 binary records into (images uint8 (N, 3, 32, 32), labels uint8 (N,))."""
    if len(raw) == 0 or len(raw) % CIFAR_RECORD_BYTES:
        raise SngradError(
            f"{source}: {len(raw)} bytes is not a positive whole number of "
            f"{CIFAR_RECORD_BYTES}-byte CIFAR records (truncated or not a CIFAR batch?)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max() >= num_classes:
        raise SngradError(
            f"{source}: label {int(labels.max())} out of range; CIFAR-10 labels are "
            f"0..{num_classes - 1}"
        )
    images = records[:, 1:].reshape(-1, *CIFAR_IMAGE_SHAPE).copy()
    return images, labels


def read_cifar_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file (e.g. ``data_batch_1.bin``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SngradError(f"{path}: file not found") from None
    return parse_cifar_records(raw, source=str(path), num_classes=num_classes)
