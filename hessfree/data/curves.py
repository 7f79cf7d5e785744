"""CURVES: a re-generation of the synthetic curve images of Hinton & Salakhutdinov (2006).

The original file (``digs3pts_1.mat``, Salakhutdinov) cannot be obtained; this module rebuilds a
data set with the same recipe and the same summary statistics, following ``docs/references.md``
[Data: CURVES] (structure from the Science SOM of [H&S06], inking from Hinton & Nair 2005
[H&N05], ink amount and kernel width calibrated against statistics of the real file).
"""

from __future__ import annotations

import numpy as np
import torch

from hessfree import _checks
from hessfree.errors import InputError

SIDE = 28
"""Image side in pixels (28 x 28 = 784, [H&S06])."""
COORD_LOW, COORD_HIGH = 2.0, 25.0
"""Range of the control-point coordinates in pixel units (SOM wording, [Data: CURVES])."""
MIN_GAP = 2.0
"""Each control point's x is at least this much larger than the previous one's ([Data: CURVES])."""
N_INK_POINTS = 60
"""Ink points per curve, evenly spaced in x (Hinton & Nair's renderer, [H&N05])."""
INK = 0.65
"""Ink added per point before blurring (calibrated, [Data: CURVES])."""
SIGMA = 0.77
"""Standard deviation (pixels) of the Gaussian blur kernel (calibrated, [Data: CURVES])."""


def control_points(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` triples of control points ([Data: CURVES], step 1).

    x1 < x2 < x3 are sorted uniforms on [2, 25] with gaps of at least 2 (rejection sampling);
    y1, y2, y3 are i.i.d. uniform on [2, 25].

    Returns:
        ``(xs, ys)``, each float64 of shape ``(n, 3)``.
    """
    kept: list[np.ndarray] = [np.empty((0, 3))]
    have = 0
    while have < n:
        # acceptance is about 0.55, so draw twice what is missing plus a margin
        draw = np.sort(rng.uniform(COORD_LOW, COORD_HIGH, size=(2 * (n - have) + 16, 3)), axis=1)
        ok = (np.diff(draw, axis=1) >= MIN_GAP).all(axis=1)
        kept.append(draw[ok])
        have += int(ok.sum())
    xs = np.concatenate(kept)[:n]
    ys = rng.uniform(COORD_LOW, COORD_HIGH, size=(n, 3))
    return xs, ys


def ink_points(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample the curve y(x) through the control points at 60 x values from x1 to x3.

    With three knots MATLAB's default (not-a-knot) cubic spline is exactly the interpolating
    parabola ([Data: CURVES], step 2), evaluated here in Lagrange form.

    Returns:
        ``(px, py)``, each float64 of shape ``(n, 60)``.
    """
    t = np.linspace(0.0, 1.0, N_INK_POINTS)
    px = xs[:, :1] + (xs[:, 2:] - xs[:, :1]) * t
    x0, x1, x2 = (xs[:, i : i + 1] for i in range(3))
    l0 = (px - x1) * (px - x2) / ((x0 - x1) * (x0 - x2))
    l1 = (px - x0) * (px - x2) / ((x1 - x0) * (x1 - x2))
    l2 = (px - x0) * (px - x1) / ((x2 - x0) * (x2 - x1))
    py = ys[:, :1] * l0 + ys[:, 1:2] * l1 + ys[:, 2:] * l2
    return px, py


def splat(px: np.ndarray, py: np.ndarray, ink: float) -> np.ndarray:
    """Distribute ``ink`` per point to its 4 nearest pixels with bilinear weights.

    Pixel centres sit at integer coordinates 0..27; the image is indexed ``[row=y, col=x]``;
    ink falling outside the 28 x 28 grid is dropped ([Data: CURVES], step 3).

    Returns:
        float64 of shape ``(n, 28, 28)``.
    """
    n = px.shape[0]
    ix, iy = np.floor(px), np.floor(py)
    fx, fy = px - ix, py - iy
    sink = n * SIDE * SIDE  # one extra bin collects the ink that falls off the grid
    image = np.arange(n)[:, None] * (SIDE * SIDE)
    flat_idx = np.empty((4,) + px.shape, dtype=np.int64)
    weights = np.empty((4,) + px.shape)
    for k, (dx, dy) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        cx, cy = ix + dx, iy + dy
        inside = (cx >= 0) & (cx < SIDE) & (cy >= 0) & (cy < SIDE)
        idx = image + (cy * SIDE + cx).astype(np.int64)
        flat_idx[k] = np.where(inside, idx, sink)
        weights[k] = (fx if dx else 1.0 - fx) * (fy if dy else 1.0 - fy)
    out = np.bincount(flat_idx.ravel(), weights.ravel() * ink, minlength=sink + 1)
    return out[:sink].reshape(n, SIDE, SIDE)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with zero padding (ink spreading off the grid is lost).

    The kernel is sampled at integer offsets up to ``ceil(3 sigma)`` and normalised to sum 1;
    the blur is applied as ``K @ image @ K.T`` with a banded 28 x 28 matrix ``K`` (one batched
    matrix product per axis, much faster on a CPU than a small-kernel convolution).

    Args:
        images: ``(n, 28, 28)`` float tensor.
        sigma: kernel standard deviation in pixels.

    Returns:
        The blurred images, same shape and dtype.
    """
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = torch.arange(SIDE, dtype=torch.float64)
    diff = offsets[:, None] - offsets[None, :]
    kernel = torch.exp(-0.5 * (diff / sigma) ** 2) * (diff.abs() <= radius)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = (kernel / torch.exp(-0.5 * (taps / sigma) ** 2).sum()).to(images.dtype)
    return kernel @ images @ kernel.T


def render(
    n: int, rng: np.random.Generator, ink: float = INK, sigma: float = SIGMA
) -> torch.Tensor:
    """Draw ``n`` curve images: control points, parabola, bilinear splat, blur, clip at 1.

    Returns:
        float32 tensor ``(n, 784)`` in [0, 1], rows are row-major 28 x 28 rasters.
    """
    xs, ys = control_points(n, rng)
    px, py = ink_points(xs, ys)
    ink_map = torch.from_numpy(splat(px, py, ink).astype(np.float32))
    images = gaussian_blur(ink_map, sigma).clamp_(0.0, 1.0)
    return images.reshape(n, SIDE * SIDE)


def curves(
    n_train: int = 20000,
    n_test: int = 10000,
    seed: int = 0,
    *,
    ink: float = INK,
    sigma: float = SIGMA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the CURVES autoencoder data set (Hinton & Salakhutdinov 2006).

    This is a **re-generation**, not the original ``digs3pts_1.mat``: it follows the most
    plausible recipe of [Data: CURVES] (three control points with x increasing by at least
    2 px, coordinates uniform in [2, 25]; the parabola y(x) through them, which is what a
    3-knot not-a-knot cubic spline is; 60 ink points evenly spaced in x, splatted bilinearly
    with amount ``ink``; Gaussian blur of width ``sigma``; clipped at 1). The images match the
    original's summary statistics (sum of per-pixel variances ≈ 16.9, per-image binary entropy
    ≤ 54.7 nats; [Data: CURVES]) but not its samples, raster orientation or exact kernel,
    which are unknown. The mean-image entropy comes out near 131 nats against ≈ 124 for the
    original file (the recipe shows this gap for every setting tried, [Data: CURVES]).

    Train and test come from independent random streams spawned from ``seed``, so the test set
    does not depend on ``n_train``.

    Args:
        n_train: number of training images (20,000 in H&S 2006).
        n_test: number of test images (10,000 in H&S 2006).
        seed: random seed; the output is a deterministic function of all arguments.
        ink: ink added per ink point (calibrated default 0.65).
        sigma: Gaussian blur width in pixels (calibrated default 0.77).

    Returns:
        ``(x_train, x_test)``: float32 tensors of shape ``(n_train, 784)`` and
        ``(n_test, 784)`` with values in [0, 1] (row-major 28 x 28 images, row = y).

    Raises:
        ValueError: if a count is negative or ``ink``/``sigma`` is not positive.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        _checks.integer(value, f"curves: {name}", minimum=0)
    for name, value in (("ink", ink), ("sigma", sigma)):
        if not value > 0:
            raise InputError(f"curves: {name} must be positive, got {value!r}")
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    x_train = render(int(n_train), np.random.default_rng(train_seq), ink, sigma)
    x_test = render(int(n_test), np.random.default_rng(test_seq), ink, sigma)
    return x_train, x_test
