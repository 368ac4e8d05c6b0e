"""Reader for the IDX format of MNIST-family files, gzipped or not, with strict validation."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from imgclf.errors import DataError

_UBYTE = 0x08  # the only element type MNIST-family files use


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with `ndim` dimensions into an array."""
    raw = _read_bytes(path)
    where = f"{path}"
    if len(raw) < 4:
        raise DataError(f"{where} is truncated: {len(raw)} bytes, too short for an IDX header. "
                        "Delete it and download it again.")
    zero, kind, dims = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or kind != _UBYTE:
        raise DataError(f"{where} is not an IDX file of unsigned bytes (magic number "
                        f"{raw[:4].hex()}, expected 0000080{ndim}). Check that it is the right file.")
    if dims != ndim:
        raise DataError(f"{where} has {dims} dimensions, expected {ndim} "
                        f"({'images' if ndim == 3 else 'labels'}). Are image and label files swapped?")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{where} is {state}: header says shape {shape} ({expected:,} bytes), "
                        f"file has {len(raw):,} bytes. Delete it and download it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzipped."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path} is a corrupt or truncated gzip file ({err}). "
                        "Delete it and download it again.") from err
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}.") from err
