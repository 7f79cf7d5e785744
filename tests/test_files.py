"""The package's one atomic-write routine and its one HDF5 open policy (``_files``, ``_h5``)."""

from __future__ import annotations

import os
import stat

import h5py
import numpy as np
import pytest
import torch

from hessfree import _files, _h5
from hessfree.errors import InputError
from hessfree.runs.h5 import ResultsError


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out" / "file.txt"  # the folder is made
    with _files.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp") and tmp.exists()
        tmp.write_text("first")
        assert not target.exists()
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError, match="interrupted"), _files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert _names(target.parent) == ["file.txt"]  # no temporary left


def test_atomic_path_removes_its_temporary_when_the_move_fails(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"), _files.atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "old" and _names(tmp_path) == ["file.txt"]


def test_atomic_path_gives_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0o027)
    try:
        _files.write_text(tmp_path / "a.md", "x")
        (tmp_path / "b.md").write_text("x")
    finally:
        os.umask(umask)
    mode = stat.S_IMODE
    assert mode((tmp_path / "a.md").stat().st_mode) == mode((tmp_path / "b.md").stat().st_mode)


def test_write_text_is_atomic_over_an_existing_file(tmp_path):
    path = tmp_path / "summary.md"
    _files.write_text(path, "one\n")
    assert _files.write_text(path, "two\n") == path
    assert path.read_text() == "two\n" and _names(tmp_path) == ["summary.md"]


def test_open_file_policy(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5: no such results file"):
        _h5.open_file(tmp_path / "missing.h5", "r", what="results file")
    text = tmp_path / "text.h5"
    text.write_text("not HDF5")
    with pytest.raises(InputError, match="text.h5: cannot open as HDF5"):
        _h5.open_file(text, "r")
    with pytest.raises(ResultsError, match="text.h5: cannot open as HDF5"):
        _h5.open_file(text, "r", error=ResultsError)
    with pytest.raises(InputError, match="mode: expected one of"):
        _h5.open_file(text, "a")
    path = tmp_path / "new.h5"
    with _h5.open_file(path, "x") as f:
        f.attrs["k"] = 1
    with pytest.raises(FileExistsError, match="new.h5: a file already exists"):
        _h5.open_file(path, "x")
    # no HDF5 file lock: a file held open for writing can be read at the same time
    with _h5.open_file(path, "r+") as writer, _h5.open_file(path, "r") as reader:
        writer.attrs["k"] = 2
        writer.flush()
        assert int(reader.attrs["k"]) in (1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64,
                                   torch.bool])
def test_tensors_round_trip_with_their_dtype(tmp_path, dtype):
    t = (torch.arange(6).reshape(2, 3) % 3).to(dtype)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        ds = _h5.write_tensor(f, "t", t)
        assert ds.attrs["torch_dtype"] == str(dtype).removeprefix("torch.")
        back = _h5.read_tensor(f["t"])
    assert back.dtype == dtype and torch.equal(back, t)
    with h5py.File(tmp_path / "a.h5", "w") as f:  # a numpy array is written the same way
        _h5.write_tensor(f, "a", np.ones(3, dtype=np.float32))
        assert _h5.read_tensor(f["a"]).dtype == torch.float32


def test_figure_helper_draws_on_agg_and_leaves_pyplot_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    fig, axes = _files.figure(8, 3, panels=2)
    assert len(axes) == 2 and fig.canvas.get_default_filetype() == "png"
    axes[0].plot([1, 2, 3], [1, 10, 100], label="a")
    _files.label_axes(axes[0], "x", "y", "t", log_y=True)
    assert axes[0].get_yscale() == "log" and axes[0].get_xscale() == "linear"
    assert axes[0].get_title() == "t" and axes[0].get_legend() is not None
    _files.label_axes(axes[1], "u", "v", legend=False, log_x=True)
    assert axes[1].get_legend() is None and axes[1].get_xscale() == "log"
    out = _files.save_figure(fig, tmp_path / "f.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and matplotlib.get_backend() == backend
