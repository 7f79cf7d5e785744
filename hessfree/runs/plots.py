"""Plots of runs read from their results files (HF against NAG, at equal steps, time or cost).

matplotlib is imported inside the functions (the ``[plot]`` extra) and used through its Agg canvas
directly, so plotting never changes the caller's pyplot backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hessfree._files import check_image_output, figure, label_axes, save_figure
from hessfree.errors import InputError
from hessfree.runs.results import RunResults, read_results

__all__ = ["X_AXES", "Y_AXES", "plot_runs"]

log = logging.getLogger(__name__)

#: x choice -> axis label
X_AXES = {"steps": "steps", "seconds": "seconds", "grad-equiv": "gradient-equivalents"}
#: y choice -> (table, column, axis label); the columns of :mod:`hessfree.runs.rows`
Y_AXES = {
    "train_error": ("eval", "train_error", "train error"),
    "test_error": ("eval", "test_error", "test error"),
    "loss": ("steps", "loss", "objective on the update's batch"),
    "lambda": ("steps", "lambda_after", "damping λ"),
    "cg_iters": ("steps", "cg_iters", "CG iterations"),
}
_EVAL_X = {"steps": "step", "seconds": "seconds", "grad-equiv": "grad_equiv"}


def _steps_x(res: RunResults, x: str) -> np.ndarray | None:
    """The x values of ``/steps`` rows (shared columns), or None if the run lacks them."""
    s = res.steps
    column = {"steps": "step", "seconds": "seconds", "grad-equiv": "grad_equiv"}[x]
    if column not in s:
        return None
    return s["step"].astype(np.float64) if x == "steps" else np.cumsum(s[column])


def _series(res: RunResults, x: str, y: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x, y)`` of one run with non-finite points dropped, or None if it lacks a column."""
    table, column, _ = Y_AXES[y]
    columns = res.table(table)
    if column not in columns:
        return None  # e.g. λ of a NAG run
    if table == "eval":
        xs = columns[_EVAL_X[x]].astype(np.float64) if _EVAL_X[x] in columns else None
    else:
        xs = _steps_x(res, x)
    if xs is None:
        return None
    ys = columns[column].astype(np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep]


def _labels(runs: Sequence[RunResults], labels: Sequence[str] | None) -> list[str]:
    """Given labels, or the ``optimizer`` attributes made unique by the run's folder or index."""
    if labels is not None:
        if len(labels) != len(runs):
            raise InputError(f"labels: expected {len(runs)} labels (one per path), "
                             f"got {len(labels)}")
        return [str(label) for label in labels]
    out = [str(r.attrs.get("optimizer", r.path.stem)) for r in runs]
    if len(set(out)) < len(out):
        out = [f"{label} ({r.path.parent.name})" if out.count(label) > 1 else label
               for label, r in zip(out, runs)]
    if len(set(out)) < len(out):
        out = [f"{label} #{k + 1}" if out.count(label) > 1 else label
               for k, label in enumerate(out)]
    return out


def _figure(curves: list[tuple[str, np.ndarray, np.ndarray]], x: str, y: str,
            title: str | None) -> Any:
    """A figure with one line per curve; log y when every value is positive."""
    fig, (ax,) = figure(7, 4.5)
    for label, xs, ys in curves:
        ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
    values = np.concatenate([ys for _, _, ys in curves])
    label_axes(ax, X_AXES[x], Y_AXES[y][2],
               title if title is not None else f"{Y_AXES[y][2]} against {X_AXES[x]}",
               log_y=bool(values.size and np.all(values > 0)))
    fig.tight_layout()
    return fig


def plot_runs(paths: Sequence[str | os.PathLike], x: str = "steps", y: str = "train_error",
              out: str | os.PathLike = "fig.png", title: str | None = None,
              labels: Sequence[str] | None = None) -> Path:
    """Draw several runs on one figure and write it as a PNG.

    Errors come from ``/eval`` (x from its ``step``, ``seconds``, ``grad_equiv`` columns); per-step
    fields from ``/steps`` (``loss``: the objective before each update; ``lambda``:
    ``lambda_after``, HF only), with x the ``step`` column, the cumulative ``seconds`` or the
    cumulative ``grad_equiv`` (the shared columns of :mod:`hessfree.runs.rows`).

    Args:
        paths: results files.
        x: ``"steps"``, ``"seconds"`` or ``"grad-equiv"``.
        y: ``"train_error"``, ``"test_error"``, ``"loss"``, ``"lambda"`` or ``"cg_iters"``.
        out: the image to write: ``.png``, ``.pdf`` or ``.svg`` (atomically; never one of
            ``paths`` nor any HDF5 file, :func:`hessfree._files.save_figure`).
        title: the figure title (default: y against x).
        labels: one legend label per path (default: each run's ``optimizer`` attribute, made
            unique by its folder name).

    Returns:
        The path of the image.

    Raises:
        ValueError: an unknown ``x`` or ``y``, no paths, or no run has the fields to plot (a run
            that lacks them is skipped with a logged warning).
    """
    if x not in X_AXES:
        raise InputError(f"x: expected one of {sorted(X_AXES)}, got {x!r}")
    if y not in Y_AXES:
        raise InputError(f"y: expected one of {sorted(Y_AXES)}, got {y!r}")
    if not paths:
        raise InputError("paths: expected at least one results file")
    check_image_output(out, paths, "out")
    runs = [read_results(p) for p in paths]
    curves = []
    for label, res in zip(_labels(runs, labels), runs):
        series = _series(res, x, y)
        if series is None or not len(series[0]):
            log.warning("%s: no data for %s against %s; skipping this run", res.path, y, x)
        else:
            curves.append((label, *series))
    if not curves:
        raise InputError(f"no run has the fields to plot y={y!r} against x={x!r}: "
                         f"{[os.fspath(p) for p in paths]}")
    return save_figure(_figure(curves, x, y, title), out, paths, "out")
