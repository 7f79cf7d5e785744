import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch
from data_fixtures import regzip_with_change

import hessfree.data as data
from hessfree.data.mnist import FILES, ChecksumError


@pytest.fixture(scope="module")
def real(mnist_folder):
    return mnist_folder, data.mnist(mnist_folder)


def test_shapes_dtypes_range_and_convention(real):
    _, (x_train, y_train, x_test, y_test) = real
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == x_test.dtype == torch.float32
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train.dtype == y_test.dtype == torch.int64
    assert x_train.min() == 0 and x_train.max() == 1
    # pixel / 255, not binarised ([Data: MNIST]): many intermediate grey levels
    assert ((x_train > 0) & (x_train < 1)).float().mean() > 0.05
    levels = torch.unique(x_test[:200] * 255)
    assert torch.allclose(levels, levels.round(), atol=1e-3) and len(levels) > 100
    # facts from [Data: MNIST]
    assert abs(x_train.mean().item() * 255 - 33.318) < 1e-3
    assert abs(x_test.mean().item() * 255 - 33.791) < 1e-3
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                6265, 5851, 5949]
    assert torch.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                               1009]


def test_published_md5_agrees_with_sha256_on_real_files(real):
    folder, _ = real
    for spec in FILES.values():
        content = gzip.decompress((folder / spec.gz_name).read_bytes())
        assert hashlib.md5(content).hexdigest() == spec.md5
        assert hashlib.sha256(content).hexdigest() == spec.sha256


def test_raw_files_in_root_and_env_var(real, tmp_path, monkeypatch):
    folder, expected = real
    for spec in FILES.values():  # uncompressed copies directly in the root
        (tmp_path / spec.name).write_bytes(gzip.decompress((folder / spec.gz_name).read_bytes()))
    monkeypatch.setenv("HESSFREE_DATA", str(tmp_path))
    got = data.mnist()
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_missing_file_error_names_file_places_and_fetch(real, tmp_path):
    folder, _ = real
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz"):
        shutil.copy(folder / name, tmp_path / name)
    with pytest.raises(FileNotFoundError) as info:
        data.mnist(tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz") in message
    assert FILES["test_labels"].sha256 in message
    assert 'hessfree.data.fetch("mnist"' in message


def test_checksum_mismatch_names_file_and_expected_sum(real, tmp_path):
    folder, (_, _, _, y_real) = real
    (tmp_path / "mnist").mkdir()
    for spec in FILES.values():
        shutil.copy(folder / spec.gz_name, tmp_path / "mnist" / spec.gz_name)
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    regzip_with_change(folder / "t10k-labels-idx1-ubyte.gz", bad)
    with pytest.raises(ChecksumError) as info:
        data.mnist(tmp_path)
    message = str(info.value)
    assert str(bad) in message and FILES["test_labels"].sha256 in message
    assert "fetch" in message
    # without the checksum the changed label is read as is (still valid IDX)
    _, _, _, y_test = data.mnist(tmp_path, check=False)
    assert y_test[-1].item() == y_real[-1].item() + 1
    assert torch.equal(y_test[:-1], y_real[:-1])


def test_corrupt_header_with_check_off_is_an_idx_error(real, tmp_path):
    folder, _ = real
    for spec in FILES.values():
        shutil.copy(folder / spec.gz_name, tmp_path / spec.gz_name)
    regzip_with_change(folder / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz",
                       offset=1)
    with pytest.raises(data.IDXError, match="magic"):
        data.mnist(tmp_path, check=False)


def test_no_root_and_no_env_var(monkeypatch):
    monkeypatch.delenv("HESSFREE_DATA", raising=False)
    with pytest.raises(ValueError, match="HESSFREE_DATA"):
        data.mnist()


def test_labels_are_valid_digits(real):
    _, (_, y_train, _, y_test) = real
    assert set(np.unique(y_train.numpy())) == set(range(10)) == set(np.unique(y_test.numpy()))
