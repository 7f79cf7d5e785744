"""Writing output files safely: atomically; images in a checked format, never over a results file.

:func:`atomic_path` is the one way the package writes a file: the content goes to a temporary
file beside the target, which is moved into place with ``os.replace`` only when the writing
succeeded and removed otherwise, so a kill or an error never leaves half a file or a stray
temporary one. Checkpoints, summaries, saved quadratics, downloaded data and images all use it
(:func:`write_text` for text).

Every figure the package draws starts from :func:`figure` (matplotlib's Agg canvas used directly,
so the host's pyplot backend is never touched; matplotlib is the ``[plot]`` extra) and has its
axes labelled by :func:`label_axes`.

Every figure the package writes (``hessfree plot``, ``hessfree compare --plot``,
:func:`hessfree.quadratic.plot`) goes through :func:`save_figure`: the format follows the
extension (:data:`IMAGE_FORMATS`, anything else is refused with the list), the path may not be one
of the command's input files nor any existing HDF5 file (a results file overwritten by a PNG is
lost), and the image is written to a temporary file in the same folder and moved into place, with
the permissions a plain ``open()`` would give (the process umask), so a kill never leaves half an
image and nothing is left private by accident.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hessfree.errors import InputError

__all__ = ["IMAGE_FORMATS", "atomic_path", "check_image_output", "figure", "image_format",
           "label_axes", "label_ends", "save_figure", "write_text"]

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


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` when the block succeeds.

    The temporary file (``.<name>.<random>.tmp`` in the target's folder, created empty, so
    ``os.replace`` is atomic) gets the permissions a plain ``open()`` would give (the process
    umask). If the block raises, or the move fails, it is removed and ``target`` is as it was.
    The target's folder is created if needed.
    """
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def figure(width: float, height: float, panels: int = 1) -> tuple[Any, list[Any]]:
    """A matplotlib ``Figure`` on an Agg canvas with ``panels`` axes side by side.

    Raises:
        ImportError: matplotlib is not installed (naming the ``[plot]`` extra).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("figures need matplotlib (pip install 'hessfree[plot]')") from err
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def label_axes(ax: Any, xlabel: str, ylabel: str, title: str | None = None, *,
               log_x: bool = False, log_y: bool = False, grid: bool = True,
               legend: bool = True, legend_size: float | None = None) -> None:
    """Labels, log scales, a light grid and a legend: the package's one axes style."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    if grid:
        ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=legend_size)


def label_ends(ax: Any, gap: float = 11.0) -> None:
    """Each line's name and last value written beside its end, in its colour.

    The x range is widened to the right to hold the labels (a log x axis: by a factor), and
    labels whose ends lie closer than ``gap`` pixels are moved apart vertically, so a curve
    hidden under another one is still named, and every final value can be read.
    """
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    if not lines:
        return
    right = max(float(ln.get_xdata()[-1]) for ln in lines)
    ax.set_xlim(right=right * 4 if ax.get_xscale() == "log" else right * 1.3)
    ax.get_ylim()  # settles the limits before data are mapped to pixels
    ends = sorted(((float(ax.transData.transform((ln.get_xdata()[-1], ln.get_ydata()[-1]))[1]),
                    ln) for ln in lines), key=lambda e: e[0])
    placed: list[float] = []
    for y, line in ends:  # bottom to top, each at least ``gap`` above the one below
        placed.append(max(y, placed[-1] + gap) if placed else y)
        ax.annotate(f"{line.get_label()} {line.get_ydata()[-1]:.3g}",
                    xy=(line.get_xdata()[-1], line.get_ydata()[-1]),
                    xytext=(4, placed[-1] - y), textcoords="offset pixels", va="center",
                    fontsize=7, color=line.get_color())


def save_figure(fig: Any, path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                name: str = "out") -> Path:
    """Write a matplotlib figure to ``path`` (checked, atomic, umask permissions)."""
    fmt = check_image_output(path, inputs, name)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return Path(path)
