"""Writing output files safely: images in a checked format, atomically, never over a results file.

Every figure the package writes (``hessfree plot``, ``hessfree compare --plot``,
:func:`hessfree.quadratic.plot`) goes through :func:`save_figure`: the format follows the
extension (:data:`IMAGE_FORMATS`, anything else is refused with the list), the path may not be one
of the command's input files nor any existing HDF5 file (a results file overwritten by a PNG is
lost), and the image is written to a temporary file in the same folder and moved into place, with
the permissions a plain ``open()`` would give (the process umask), so a kill never leaves half an
image and nothing is left private by accident.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hessfree.errors import InputError

__all__ = ["IMAGE_FORMATS", "check_image_output", "image_format", "save_figure"]

#: extension -> matplotlib format
IMAGE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def image_format(path: str | os.PathLike, name: str = "out") -> str:
    """The image format of ``path`` from its extension (InputError for any other)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise InputError(f"{name}: {os.fspath(path)!r} is not an image file name; the format "
                         f"follows the extension, one of {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[suffix]


def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == _HDF5_MAGIC
    except OSError:
        return False


def check_image_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                       name: str = "out") -> str:
    """Refuse an output that is an input, an existing HDF5 file or not an image name.

    Returns:
        The image format.
    """
    out = Path(path)
    if out.exists():
        if out.is_dir():
            raise InputError(f"{name}: {out} is a folder")
        for src in inputs:
            try:
                same = os.path.samefile(out, src)
            except OSError:
                same = False
            if same:
                raise InputError(f"{name}: {out} is one of the input files; choose another "
                                 "output name")
        if _is_hdf5(out):
            raise InputError(f"{name}: {out} is an existing HDF5 file (results are never "
                             "overwritten); choose another output name")
    return image_format(path, name)


def save_figure(fig: Any, path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                name: str = "out") -> Path:
    """Write a matplotlib figure to ``path`` (checked, atomic, umask permissions)."""
    fmt = check_image_output(path, inputs, name)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out
