"""IDX files, the format MNIST and Fashion-MNIST ship in (gzipped or not), read safely.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order. The image
files (`train-images-idx3-ubyte`) are uint8 (n, rows, cols) and the label files
(`train-labels-idx1-ubyte`) uint8 (n,). Anything else (bad magic, an unsupported type,
a file shorter or longer than its header says, a broken gzip stream) raises `IdxError`,
a `UserError` naming the file, so the CLI prints one line.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import UserError

_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IdxError(UserError):
    """A file that is not a well-formed IDX file."""


def is_idx_name(path: str | Path) -> bool:
    """Whether the name looks like an IDX file: `*-idx<d>-ubyte`, optionally `.gz`, or `*.idx`."""
    name = Path(path).name.lower().removesuffix(".gz")
    return "-idx" in name or name.endswith((".idx", "-ubyte"))


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxError(f"{path}: not a readable gzip file ({exc}); download it again") from None
    return data


def parse(data: bytes, name: str = "IDX data") -> np.ndarray:
    """The array an IDX byte string holds (checked against its header)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES or data[3] == 0:
        raise IdxError(f"{name}: not an IDX file (bad magic number {data[:4].hex() or 'empty'}); expected an "
                       "MNIST-style file such as train-images-idx3-ubyte(.gz)")
    dtype, ndim = _TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: truncated IDX file (the header alone needs {header} bytes, it has {len(data)})")
    shape = tuple(int(v) for v in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has extra bytes after the data"
        raise IdxError(f"{name}: {what}: its header says {' x '.join(map(str, shape))} values "
                       f"({expected} bytes), the file has {len(data)}; download it again")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path) -> np.ndarray:
    """The array in the IDX file at `path` (`.gz` or plain)."""
    return parse(read_bytes(path), str(path))


def read_images(path: str | Path) -> np.ndarray:
    """uint8 (n, rows, cols) images from an IDX image file."""
    array = read_idx(path)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise IdxError(f"{path}: an IDX file of {array.ndim}-d {array.dtype} values, not of uint8 images "
                       "(n x rows x cols); pass an image file such as train-images-idx3-ubyte(.gz)")
    return array


def labels_beside(images: str | Path) -> Path | None:
    """`train-labels-idx1-ubyte[.gz]` for `train-images-idx3-ubyte[.gz]`, if it exists."""
    images = Path(images)
    if "-images-idx3" not in images.name:
        return None
    stem = images.name.replace("-images-idx3", "-labels-idx1")
    for name in (stem, stem.removesuffix(".gz"), stem + ".gz" if not stem.endswith(".gz") else stem):
        candidate = images.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def t10k_beside(images: str | Path) -> Path | None:
    """`t10k-images-idx3-ubyte[.gz]` beside `train-images-idx3-ubyte[.gz]` (MNIST's naming), if any."""
    images = Path(images)
    if not images.name.startswith("train-"):
        return None
    base = "t10k-" + images.name.removeprefix("train-").removesuffix(".gz")
    for name in (base, base + ".gz"):
        candidate = images.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def read_labels(path: str | Path, n: int) -> np.ndarray:
    """n integer labels from an IDX label file (checked against the images' count)."""
    labels = read_idx(path)
    if labels.ndim != 1 or len(labels) != n:
        raise IdxError(f"{path}: {labels.shape} labels for {n} images; remove or replace the label file")
    return labels.astype(np.int64)


def to_bytes(array: np.ndarray) -> bytes:
    """An IDX byte string of a uint8 array (what MNIST's files hold; the tests write them)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()
