import gzip
import struct

import numpy as np
import pytest

from hessfree.data.idx import IDXError, parse_idx, read_bytes, read_idx


def idx_bytes(array: np.ndarray, code: int, big_endian_dtype: str) -> bytes:
    """IDX content built by hand (independent of the parser)."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian_dtype).tobytes()


@pytest.mark.parametrize(
    "code,dtype,big",
    [(0x08, np.uint8, "u1"), (0x09, np.int8, "i1"), (0x0B, np.int16, ">i2"),
     (0x0C, np.int32, ">i4"), (0x0D, np.float32, ">f4"), (0x0E, np.float64, ">f8")],
)
def test_parse_round_trip_all_types(code, dtype, big):
    rng = np.random.default_rng(code)
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    parsed = parse_idx(idx_bytes(array, code, big))
    assert parsed.shape == (3, 4, 5)
    assert parsed.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(parsed, array)


def test_read_gz_and_raw_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    content = idx_bytes(array, 0x08, "u1")
    (tmp_path / "a").write_bytes(content)
    (tmp_path / "a.gz").write_bytes(gzip.compress(content))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad IDX magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated IDX header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00" * 4, "truncated or corrupt"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00" * 6, "truncated or corrupt"),
    ],
)
def test_corrupt_content_is_rejected_with_clear_message(content, message):
    with pytest.raises(IDXError, match=message) as info:
        parse_idx(content, "some-file")
    assert "some-file" in str(info.value)


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "broken.gz"
    whole = gzip.compress(bytes(range(256)) * 40)
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IDXError, match="broken.gz"):
        read_bytes(path)
