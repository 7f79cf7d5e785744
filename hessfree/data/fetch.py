"""Download data sets from public mirrors, verified and written atomically.

Only MNIST can be fetched: CURVES and FACES are regenerated locally (``curves``, ``faces``) and the
Olivetti source file has no mirror serving the checksummed bytes ([Data: FACES], the source file).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from hessfree._files import atomic_path
from hessfree.data import mnist as mnist_module
from hessfree.data.idx import IDXError, read_bytes
from hessfree.data.paths import data_root
from hessfree.errors import InputError

MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
}
"""Public mirrors per data set, tried in order (PyTorch's S3 copy, Google's CVDF copy, the
original site). Each serves ``<file>.gz``; only the uncompressed content is checked."""


class FetchError(RuntimeError):
    """A file could not be obtained with the right checksum from any mirror."""


def download(url: str, target: Path, timeout: float) -> None:
    """Stream ``url`` into ``target`` (an already reserved temporary file)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def stage(spec: mnist_module.IDXFile, target: Path, mirrors: Sequence[str],
          timeout: float) -> None:
    """Download ``spec`` into ``target`` (a reserved temporary file) and verify it.

    Each mirror is tried in turn, overwriting what an earlier one left.

    Raises:
        FetchError: naming the file, the expected checksum and what each mirror gave.
    """
    problems = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + spec.gz_name
        try:
            download(url, target, timeout)
            mnist_module.verify(read_bytes(target), spec, url)
            return
        except (OSError, urllib.error.URLError, IDXError, mnist_module.ChecksumError) as err:
            problems.append(f"{url}: {err}")
    raise FetchError(
        f"fetch: could not obtain {spec.gz_name} with sha256 {spec.sha256} of the uncompressed "
        "content from any mirror:\n  " + "\n  ".join(problems or ["no mirrors given"])
    )


def valid_copy(spec: mnist_module.IDXFile, root: Path) -> bool:
    """Whether ``root`` (or ``root/mnist``) already holds a copy with the right checksum."""
    path = mnist_module.locate(spec, root)
    if path is None:
        return False
    try:
        mnist_module.verify(read_bytes(path), spec, path)
    except (IDXError, mnist_module.ChecksumError):
        return False
    return True


def fetch(
    name: str,
    root: str | os.PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    *,
    timeout: float = 60.0,
) -> list[Path]:
    """Download a data set into ``root/<name>/``, verifying every file's checksum.

    Files already present (in ``root`` or ``root/<name>``) with the right checksum are skipped.
    The missing ones are downloaded to temporary files beside their destination and verified
    (sha256 of the uncompressed content); only when **all** of them are verified are they moved
    into place with ``os.replace``. On any failure every temporary file is removed, so the
    root is left exactly as it was. New files go to ``root/<name>/<file>.gz``; a corrupt copy
    elsewhere that ``mnist`` would find first (e.g. directly in ``root``) is not touched, and
    ``mnist``'s checksum error names it.

    Args:
        name: data set name; currently only ``"mnist"``.
        root: data root; defaults to ``$HESSFREE_DATA``.
        mirrors: base URLs to try in order instead of ``MIRRORS[name]``.
        timeout: seconds allowed for each connection.

    Returns:
        The paths of the files written (empty when everything was already present).

    Raises:
        ValueError: for an unknown data set name (the message lists the valid ones).
        FetchError: if a file could not be obtained with the right checksum.
    """
    if name not in MIRRORS:
        raise InputError(f"fetch: unknown data set {name!r}; valid names: {sorted(MIRRORS)}")
    base = data_root(root, "fetch")
    mirrors = MIRRORS[name] if mirrors is None else tuple(mirrors)
    folder = base / mnist_module.SUBDIR
    missing = [spec for spec in mnist_module.FILES.values() if not valid_copy(spec, base)]
    if not missing:
        return []
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / spec.gz_name for spec in missing]
    try:
        # every file staged beside its target; all move into place only when all are verified
        with contextlib.ExitStack() as staged:
            for spec, target in zip(missing, targets):
                stage(spec, staged.enter_context(atomic_path(target)), mirrors, timeout)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return targets
