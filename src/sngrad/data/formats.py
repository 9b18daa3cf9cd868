"""Readers (and one writer) for the on-disk formats the datasets come in.

* IDX (MNIST, Fashion-MNIST), raw or gzip-compressed: a 4-byte magic number (two zero bytes,
  a type code, the number of dimensions), one big-endian uint32 per dimension, then the values
  in C order, big-endian. :func:`idx_bytes` writes it, :func:`idx_content` gives the
  decompressed bytes whose SHA-256 identifies a file whatever its gzip header says.
* CIFAR-10 binary: fixed 3073-byte records, one label byte followed by a 32x32 red plane, a
  green plane and a blue plane (row-major within each plane).
* ``ar`` (the outer container of a Debian package): an 8-byte magic, then per member a 60-byte
  ASCII header (name, mtime, uid, gid, mode, decimal size, terminator) and the member's bytes,
  padded to an even offset.
* A pickle of numpy arrays (the MNIST wheel), read by :func:`load_array_pickle`, which admits
  only numpy's array reconstruction and refuses every other global before it is called.

Every reader checks everything the format lets it check and raises
:class:`~sngrad.errors.SngradError` naming the file and the problem, so that a truncated or
foreign file never turns into silently wrong arrays.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from math import prod
from pathlib import Path, PurePosixPath

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


GZIP_MAGIC = b"\x1f\x8b"


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise SngradError(f"{path}: file not found") from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise SngradError(f"{path}: not a complete gzip file ({err})") from None


def idx_content(path: str | Path) -> bytes:
    """The uncompressed bytes of an IDX file stored raw or gzip-compressed.

    The gzip magic decides, not the name: Debian's copies and hand-unpacked files differ from
    the official archives only in their compression, never in these bytes.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(2)
    except FileNotFoundError:
        raise SngradError(f"{path}: file not found") from None
    return _read_gzip(path) if magic == GZIP_MAGIC else path.read_bytes()


def idx_bytes(values: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array (type code 0x08): header, then the bytes in C order."""
    values = np.asarray(values)
    if values.dtype != np.uint8 or values.ndim == 0:
        raise SngradError(f"IDX writer takes a uint8 array of rank >= 1; got {values.dtype}")
    header = bytes([0, 0, 0x08, values.ndim]) + np.asarray(values.shape, ">u4").tobytes()
    return header + np.ascontiguousarray(values).tobytes()


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
    """Read an IDX file (raw or gzip), optionally insisting on its rank and element type."""
    path = Path(path)
    values = parse_idx(idx_content(path), source=str(path))
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


# --------------------------------------------------------------------------- ar archives

AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def _ar_member_problem(name: str) -> str | None:
    """Why an ar member name is unsafe, or None for a plain name in the archive's top level."""
    if not name:
        return "empty name"
    if name.startswith("/") or "\\" in name:
        return "absolute path or backslash"
    if "/" in name or name in (".", ".."):
        return "path components are not allowed in an ar member"
    return None


def read_ar(raw: bytes, source: str = "<bytes>") -> dict[str, bytes]:
    """Members of an ``ar`` archive (System V / GNU names) as name -> bytes.

    Member names must be plain file names (GNU's trailing ``/`` is stripped): a name with a
    directory part, ``..`` or an absolute path rejects the whole archive, as does a header or
    size that does not fit the bytes.
    """
    if not raw.startswith(AR_MAGIC):
        raise SngradError(f"{source}: not an ar archive (bad magic {raw[:8]!r})")
    members: dict[str, bytes] = {}
    offset = len(AR_MAGIC)
    while offset < len(raw):
        header = raw[offset : offset + _AR_HEADER]
        if len(header) < _AR_HEADER or header[58:60] != b"`\n":
            raise SngradError(f"{source}: truncated or malformed ar header at byte {offset}")
        name = header[:16].decode("ascii", "replace").rstrip(" ")
        name = name[:-1] if name.endswith("/") and name != "/" else name
        size_text = header[48:58].decode("ascii", "replace").strip()
        if not size_text.isdigit():
            raise SngradError(f"{source}: ar member {name!r} has a bad size field {size_text!r}")
        size = int(size_text)
        start = offset + _AR_HEADER
        if start + size > len(raw):
            raise SngradError(f"{source}: ar member {name!r} is truncated")
        problem = _ar_member_problem(name)
        if problem:
            raise SngradError(f"{source}: unsafe ar member {name!r}: {problem}")
        members[name] = raw[start : start + size]
        offset = start + size + (size % 2)
    return members


def tar_member_problem(name: str, *, is_file: bool, is_dir: bool, is_link: bool) -> str | None:
    """Why a tar member may not be trusted: absolute, escaping, a link or a special file."""
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in parts or "\\" in name:
        return "path escapes the destination ('..' or backslash)"
    if is_link:
        return "links are not allowed"
    if not (is_file or is_dir):
        return "only regular files and directories are allowed"
    return None


# --------------------------------------------------------------------------- pickled arrays


def _array_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickle of plain numpy arrays needs, under numpy 1 and 2 names."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler whose only callables are numpy's array and dtype constructors.

    A pickle can call any global it names (``os.system`` included); refusing the lookup in
    :meth:`find_class` stops such a call before it happens, since REDUCE needs the callable
    that the lookup would have returned.
    """

    allowed = _array_globals()

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent references are not allowed")


def _check_plain_arrays(obj, source: str):
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise SngradError(f"{source}: pickle holds an object array; only numbers are allowed")
        return
    if isinstance(obj, tuple | list):
        for item in obj:
            _check_plain_arrays(item, source)
        return
    raise SngradError(f"{source}: pickle holds a {type(obj).__name__}; expected numpy arrays")


def load_array_pickle(raw: bytes, source: str = "<bytes>"):
    """Unpickle nested tuples / lists of numeric numpy arrays, and nothing else.

    Python 2 pickles (the classic ``mnist.pkl.gz``) store array bytes as ``str``; they are
    decoded as latin-1, which maps each byte to itself.
    """
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise SngradError(f"{source}: refused or unreadable pickle ({err})") from None
    _check_plain_arrays(obj, source)
    return obj
