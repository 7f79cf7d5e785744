"""MNIST for the deep-autoencoder benchmark: real-valued pixels in [0, 1], checksummed.

Convention ([Data: MNIST], confirmed in Martens' HF driver and H&S's ``makebatches.m``): pixels
are divided by 255 and **not** binarised. The four standard IDX files are verified against the
published checksums of their *uncompressed* content ([Data: MNIST]), so any gzip wrapper
of the original bytes is accepted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hessfree.data.idx import parse_idx, read_bytes
from hessfree.data.paths import candidates, data_root, first_existing
from hessfree.errors import InputError

SUBDIR = "mnist"
"""Folder under the data root that is also searched (and that ``fetch`` writes to)."""


@dataclass(frozen=True)
class IDXFile:
    """One file of a data set: base name, checksums of the uncompressed content, shape."""

    name: str
    sha256: str
    md5: str
    shape: tuple[int, ...]

    @property
    def gz_name(self) -> str:
        """The file name with ``.gz`` (the form mirrors serve)."""
        return self.name + ".gz"


FILES = {
    "train_images": IDXFile(
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "6bbc9ace898e44ae57da46a324031adb",
        (60000, 28, 28),
    ),
    "train_labels": IDXFile(
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "a25bea736e30d166cdddb491f175f624",
        (60000,),
    ),
    "test_images": IDXFile(
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "2646ac647ad5339dbf082846283269ea",
        (10000, 28, 28),
    ),
    "test_labels": IDXFile(
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "27ae3e4e09519cfbb04c329615203637",
        (10000,),
    ),
}
"""The four MNIST files with the published sha256/md5 of their uncompressed content."""


class ChecksumError(InputError):
    """A data file's content does not match its published checksum."""


def locate(spec: IDXFile, root: Path) -> Path | None:
    """The first of ``root/name.gz``, ``root/name``, ``root/mnist/name.gz``, ``root/mnist/name``."""
    return first_existing(candidates(root, SUBDIR, (spec.gz_name, spec.name)))


def verify(content: bytes, spec: IDXFile, where: str | os.PathLike) -> None:
    """Check the sha256 of uncompressed ``content`` against ``spec``.

    Raises:
        ChecksumError: naming the file, both checksums and the fetch command.
    """
    digest = hashlib.sha256(content).hexdigest()
    if digest != spec.sha256:
        raise ChecksumError(
            f"mnist: {where}: sha256 of the uncompressed content is {digest}, expected "
            f"{spec.sha256} (md5 {spec.md5}); the file is corrupt or not the original MNIST. "
            'Fetch a fresh copy with hessfree.data.fetch("mnist", root)'
        )


def load_file(spec: IDXFile, root: Path, check: bool = True) -> np.ndarray:
    """Find, checksum and parse one MNIST file under ``root``.

    Raises:
        FileNotFoundError: naming the file, where it was looked for and the fetch command.
        ChecksumError: on a checksum mismatch (when ``check``).
        IDXError: if the content is not a valid IDX array of the expected shape.
    """
    path = locate(spec, root)
    if path is None:
        tried = ", ".join(str(p) for p in candidates(root, SUBDIR, (spec.gz_name, spec.name)))
        raise FileNotFoundError(
            f"mnist: {spec.name} (.gz or raw) not found; looked for {tried}. Expected sha256 "
            f"of the uncompressed content {spec.sha256}. Download it with "
            f'hessfree.data.fetch("mnist", {str(root)!r})'
        )
    content = read_bytes(path)
    if check:
        verify(content, spec, path)
    array = parse_idx(content, str(path))
    if array.shape != spec.shape or array.dtype != np.uint8:
        raise InputError(
            f"mnist: {path} holds {array.dtype} of shape {array.shape}, expected uint8 "
            f"of shape {spec.shape}"
        )
    return array


def mnist(
    root: str | os.PathLike | None = None, *, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load MNIST as used by the deep-autoencoder benchmarks ([H&S06]; [M10]).

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte`` (each ``.gz`` or raw) from ``root`` or ``root/mnist``.
    Nothing is cached on disk: reading and checking all four takes well under a second
    (``benchmarks/results/data.md``).

    Args:
        root: data root; defaults to the ``HESSFREE_DATA`` environment variable.
        check: verify the sha256 of each file's uncompressed content (default on).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images float32 ``(60000, 784)`` and
        ``(10000, 784)`` with values ``pixel / 255`` in [0, 1] (row-major 28 x 28, not
        binarised; [Data: MNIST]); labels int64 ``(60000,)`` and ``(10000,)`` in 0..9.

    Raises:
        ValueError: if no root is given and ``HESSFREE_DATA`` is unset.
        FileNotFoundError: if a file is missing (names it, the places tried, the fix).
        ChecksumError: if a file's content does not match the published checksum.
        IDXError: if a file is not valid IDX (bad magic, dimensions or size).
    """
    base = data_root(root, "mnist")
    arrays = {key: load_file(spec, base, check) for key, spec in FILES.items()}

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / np.float32(255.0))

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return (
        images(arrays["train_images"]),
        labels(arrays["train_labels"]),
        images(arrays["test_images"]),
        labels(arrays["test_labels"]),
    )
