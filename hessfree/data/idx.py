"""The IDX file format of the MNIST distribution ([LeCun98]), read with validation.

Format ([Data: MNIST]): a big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim``
uint32 dimension sizes, then the raw array in C order. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from hessfree.errors import InputError

DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type codes and their element types (the MNIST files use 0x08, unsigned bytes)."""
GZIP_MAGIC = b"\x1f\x8b"


class IDXError(InputError):
    """A file is not a valid IDX file (bad magic, type, dimensions or size)."""


def read_bytes(path: str | os.PathLike) -> bytes:
    """Return the uncompressed content of ``path``, gunzipping when it starts with gzip magic.

    Raises:
        IDXError: if the file looks gzipped but cannot be decompressed (names the file).
    """
    raw = Path(path).read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise IDXError(f"{path}: corrupt gzip data ({err})") from err


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX content into a read-only numpy array, validating header and size.

    Args:
        data: the uncompressed file content.
        name: shown in error messages (usually the file path).

    Returns:
        The array with the header's shape and element type (native byte order).

    Raises:
        IDXError: if the magic number, type code, dimension count or data size is wrong.
    """
    if len(data) < 4:
        raise IDXError(f"{name}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise IDXError(
            f"{name}: bad IDX magic {data[:4].hex()}; expected 0000 followed by a type code "
            "and the number of dimensions (e.g. 00000803 for MNIST images)"
        )
    code, ndim = data[2], data[3]
    if code not in DTYPES:
        raise IDXError(f"{name}: unknown IDX type code 0x{code:02x}; expected one of "
                       f"{', '.join(f'0x{c:02x}' for c in DTYPES)}")
    if ndim == 0:
        raise IDXError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXError(
            f"{name}: IDX header says shape {shape} of {dtype} ({expected} data bytes) but the "
            f"file holds {len(data) - header} data bytes (truncated or corrupt)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read and parse an IDX file (raw or gzipped)."""
    return parse_idx(read_bytes(path), str(path))
