import shutil
import socket

import pytest
import torch
from data_fixtures import MNIST_GZ, mnist_dir, regzip_with_change

import hessfree.data as data
from hessfree.data.fetch import FetchError


def serve_real_copies(mirror, sub=""):
    folder = mnist_dir()
    target = mirror.directory / sub
    target.mkdir(parents=True, exist_ok=True)
    for name in MNIST_GZ:
        shutil.copy(folder / name, target / name)
    return folder


def all_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_fetch_downloads_verifies_and_loads(local_mirror, tmp_path):
    folder = serve_real_copies(local_mirror, "mnist")
    root = tmp_path / "root"
    written = data.fetch("mnist", root, mirrors=[local_mirror.url("mnist/")])
    assert sorted(p.name for p in written) == sorted(MNIST_GZ)
    assert all_files(root) == ["mnist"] + sorted(f"mnist/{n}" for n in MNIST_GZ)
    for got, want in zip(data.mnist(root), data.mnist(folder)):
        assert torch.equal(got, want)
    # a second call finds everything valid and downloads nothing
    before = len(local_mirror.requests)
    assert data.fetch("mnist", root, mirrors=[local_mirror.url("mnist/")]) == []
    assert len(local_mirror.requests) == before


def test_fetch_skips_valid_files_and_falls_back_to_next_mirror(local_mirror, tmp_path):
    folder = serve_real_copies(local_mirror, "good")
    root = tmp_path / "root"
    root.mkdir()
    for name in MNIST_GZ[:3]:  # already present and valid, directly in the root
        shutil.copy(folder / name, root / name)
    written = data.fetch("mnist", root, mirrors=[local_mirror.url("missing/"),
                                                 local_mirror.url("good/")])
    assert [p.name for p in written] == [MNIST_GZ[3]]
    assert local_mirror.requests == [f"/missing/{MNIST_GZ[3]}", f"/good/{MNIST_GZ[3]}"]
    assert data.mnist(root)[3].shape == (10000,)


def test_corrupted_served_file_names_it_and_leaves_nothing(local_mirror, tmp_path):
    folder = serve_real_copies(local_mirror)
    bad = "train-labels-idx1-ubyte.gz"
    regzip_with_change(folder / bad, local_mirror.directory / bad)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(FetchError) as info:
        data.fetch("mnist", root, mirrors=[local_mirror.url()])
    message = str(info.value)
    assert bad in message and "sha256" in message
    assert all_files(root) == []  # no partial data set, no temporary files


def test_unknown_data_set_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'cifar10'.*\['mnist'\]"):
        data.fetch("cifar10", tmp_path)


def test_unreachable_mirror_is_a_fetch_error(tmp_path):
    with socket.socket() as sock:  # a free local port with nobody listening once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError, match="train-images-idx3-ubyte.gz") as info:
        data.fetch("mnist", tmp_path, mirrors=[f"http://127.0.0.1:{port}/"], timeout=5)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert all_files(tmp_path) == []
