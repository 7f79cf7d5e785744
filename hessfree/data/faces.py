"""FACES: the 25 x 25 Olivetti face patches of Hinton & Salakhutdinov (2006), rebuilt.

The original ``newfaces_rot_single.mat`` cannot be obtained; this module rebuilds it from the 400
Olivetti images (Roweis' ``olivettifaces.mat``) by the recipe of [Data: FACES]:
every image rotated by -90..90 degrees in 4-degree steps and magnified by 1.40..1.80 in 0.05
steps (46 x 9 = 414 transforms, 400 x 414 = 165,600 patches), subsampled to 25 x 25, then
centred per pixel and scaled by one number so that the average pixel variance is 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np
import scipy.io
import torch
import torch.nn.functional as F

from hessfree import _checks
from hessfree.data.paths import candidates, data_root, first_existing
from hessfree.errors import InputError

FILE_NAME = "olivettifaces.mat"
"""Roweis' Olivetti file ([H&S06] ref. 12); see [Data: FACES], the source file."""
N_SUBJECTS, IMAGES_PER_SUBJECT, SOURCE_SIDE, SIDE = 40, 10, 64, 25
ANGLES = tuple(float(a) for a in range(-90, 91, 4))
"""Rotations in degrees, -90..90 in 4-degree steps (46 values; [Data: FACES], step 2)."""
SCALES = tuple(round(1.40 + 0.05 * k, 2) for k in range(9))
"""Magnifications 1.40..1.80 in 0.05 steps (9 values; [Data: FACES], step 2)."""
PER_IMAGE = len(ANGLES) * len(SCALES)
"""Transforms per source image: 414, so the whole set has 400 x 414 = 165,600 patches."""
SPLITS = {
    "train": (1, 25),
    "valid": (26, 30),
    "test": (31, 40),
    "all": (1, 40),
}
"""Subject ranges (1-based, inclusive) of each split (SOM wording, [Data: FACES])."""
FILTERS = ("bilinear", "area")
"""Subsampling filters: bilinear point sampling, or 2 x bilinear then 2 x 2 area averaging."""
FILTER, WINDOW = "bilinear", 56.0
"""Chosen filter and frame side (source pixels before magnification; the frame kept is
``WINDOW / scale`` wide). The recipe leaves both open ([Data: FACES], calibration); with PCA fitted
on subjects 1-30 the 30-D PCA test error on subjects 31-40 is 130.8 / 132.7 / 134.4 / 136.1 for
bilinear with windows 54 / 55 / 56 / 57 and 130.6 for area averaging of the whole 64-pixel frame;
H&S 2006 report 135, so bilinear with a 56-pixel frame (a 4-pixel margin cut on each side) is
the closest (and the fastest) choice."""


def load_olivetti(root: str | os.PathLike | None = None) -> torch.Tensor:
    """Read the 400 Olivetti faces as float32 ``(400, 64, 64)`` in [0, 1] (uint8 / 255).

    Looks for ``olivettifaces.mat`` in ``root`` and ``root/olivetti``; ``root`` defaults to
    ``$HESSFREE_DATA``. Images are subject-major (subject k = images 10(k-1) .. 10k-1) and
    upright: the file stores each image column-major ([Data: FACES], the source file).

    Raises:
        FileNotFoundError: naming the file and every place it was looked for.
        ValueError: if the file does not hold a ``faces`` array of shape (4096, 400).
    """
    base = data_root(root, "faces")
    tried = candidates(base, "olivetti", (FILE_NAME,))
    path = first_existing(tried)
    if path is None:
        where = ", ".join(str(p) for p in tried)
        raise FileNotFoundError(
            f"faces: {FILE_NAME} not found; looked for {where}. It is Roweis' Olivetti file "
            "(www.cs.toronto.edu/~roweis/data.html); put it in the data root or root/olivetti"
        )
    raw = scipy.io.loadmat(path).get("faces")
    if raw is None or raw.shape != (SOURCE_SIDE**2, N_SUBJECTS * IMAGES_PER_SUBJECT):
        shape = None if raw is None else raw.shape
        raise InputError(f"faces: {path} must hold 'faces' of shape (4096, 400), got {shape}")
    images = raw.T.reshape(-1, SOURCE_SIDE, SOURCE_SIDE).transpose(0, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)


def transform_grid(filter: str, window: float) -> torch.Tensor:
    """Sampling grid of all 414 transforms, stacked: ``(1, 414 * size, size, 2)``.

    Transform ``t`` is angle ``ANGLES[t // 9]`` and scale ``SCALES[t % 9]``: the output pixel at
    normalised position u samples the source at ``(window / 64 / scale) R(angle) u``, i.e. a
    rotation and magnification about the centre keeping a frame ``window / scale`` source
    pixels wide. ``size`` is 25 for ``"bilinear"`` and 50 for ``"area"`` (then 2 x 2 averaged).
    """
    angles = torch.tensor(ANGLES, dtype=torch.float64).repeat_interleave(len(SCALES))
    scales = torch.tensor(SCALES, dtype=torch.float64).repeat(len(ANGLES))
    rad = angles * (math.pi / 180.0)
    zoom = (window / SOURCE_SIDE) / scales
    cos, sin = zoom * torch.cos(rad), zoom * torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    size = SIDE if filter == "bilinear" else 2 * SIDE
    grid = F.affine_grid(theta.float(), [PER_IMAGE, 1, size, size], align_corners=False)
    return grid.reshape(1, PER_IMAGE * size, size, 2)


def render(source: torch.Tensor, grid: torch.Tensor, filter: str) -> torch.Tensor:
    """All 414 patches of each image in ``source`` ``(B, 64, 64)``: ``(B * 414, 625)``.

    One ``grid_sample`` call per batch with the shared stacked grid (bilinear, zero padding,
    ``align_corners=False``); ``"area"`` then averages 2 x 2 blocks of the 50 x 50 samples.
    """
    b = len(source)
    out = F.grid_sample(
        source.unsqueeze(1), grid.expand(b, -1, -1, -1), mode="bilinear", align_corners=False
    )
    if filter == "area":
        out = F.avg_pool2d(out.reshape(b * PER_IMAGE, 1, 2 * SIDE, 2 * SIDE), 2)
    return out.reshape(b * PER_IMAGE, SIDE * SIDE)


def render_indices(
    source: torch.Tensor, index: torch.Tensor, filter: str, window: float, batch: int = 20
) -> torch.Tensor:
    """Render the patches with whole-set ``index`` (sorted; image-major, then angle, scale).

    Patch ``k`` is source image ``k // 414`` under transform ``k % 414``. When every transform
    of the images involved is wanted (a split, the whole set) they are rendered in one call
    straight into the result; otherwise all transforms of ``batch`` source images are rendered
    at a time and the requested ones kept.
    """
    grid = transform_grid(filter, window)
    image_of = index // PER_IMAGE
    images = torch.unique_consecutive(image_of)
    if len(index) == len(images) * PER_IMAGE:  # sorted and unique, so every transform is wanted
        return render(source[images], grid, filter)
    out = torch.empty(len(index), SIDE * SIDE)
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        lo = int(torch.searchsorted(image_of, chunk[0]))
        hi = int(torch.searchsorted(image_of, chunk[-1], right=True))
        position = torch.zeros(int(chunk[-1]) + 1, dtype=torch.long)
        position[chunk] = torch.arange(len(chunk))
        wanted = index[lo:hi]
        local = position[wanted // PER_IMAGE] * PER_IMAGE + wanted % PER_IMAGE
        out[lo:hi] = render(source[chunk], grid, filter)[local]
    return out


def moments(chunks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Per-pixel mean and ``sqrt(mean per-pixel population variance)`` over row chunks.

    Shifted sums: each chunk minus a reference row (the first chunk's mean) is summed with a
    matrix product (far faster than a column reduction on a CPU) and accumulated in float64,
    so the variance suffers no cancellation.
    """
    count, shift = 0, None
    s1 = torch.zeros((), dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    for part in chunks:
        ones = torch.ones(1, len(part), dtype=part.dtype)
        if shift is None:
            shift = (ones @ part) / len(part)
        centred = part - shift
        s1 = s1 + (ones @ centred).double()
        s2 = s2 + (ones @ centred.mul_(centred)).double()
        count += len(part)
    mean = s1[0] / count
    variance = s2[0] / count - mean * mean
    return (mean + shift[0].double()).float(), float(torch.sqrt(variance.mean()))


def whole_set_statistics(
    source: torch.Tensor, filter: str, window: float
) -> tuple[torch.Tensor, float]:
    """Per-pixel mean and the one scale factor of the whole 165,600-patch set.

    The scale is ``sqrt(mean over pixels of the per-pixel variance)`` (population variance), so
    ``(x - mean) / scale`` has average pixel variance 1 over the whole set (SOM, [Data:
    FACES]). Rendering everything takes about a second, so nothing is cached.
    """
    grid = transform_grid(filter, window)
    step = 20
    return moments(
        render(source[start : start + step], grid, filter)
        for start in range(0, len(source), step)
    )


def select(
    split: str, subjects: Iterable[int] | None, n: int | None, seed: int
) -> torch.Tensor:
    """Whole-set indices of the requested patches, in whole-set order.

    ``subjects`` (1-based ids) overrides the split's subject range; ``n`` keeps a random subset
    of ``n`` patches drawn without replacement by ``seed`` (sorted).
    """
    if split not in SPLITS:
        raise InputError(f"faces: split must be one of {sorted(SPLITS)}, got {split!r}")
    if subjects is None:
        low, high = SPLITS[split]
        subjects = range(low, high + 1)
    subjects = sorted({int(s) for s in subjects})
    if not subjects or subjects[0] < 1 or subjects[-1] > N_SUBJECTS:
        raise InputError(f"faces: subjects must be a non-empty set of ids in 1..40, got {subjects}")
    per_subject = IMAGES_PER_SUBJECT * PER_IMAGE
    index = torch.cat(
        [torch.arange((s - 1) * per_subject, s * per_subject) for s in subjects]
    )
    if n is not None:
        _checks.integer(n, "faces: n", 0, len(index))
        pick = np.sort(np.random.default_rng(seed).choice(len(index), size=int(n), replace=False))
        index = index[torch.from_numpy(pick)]
    return index


def faces(
    split: str = "train",
    root: str | os.PathLike | None = None,
    seed: int = 0,
    n: int | None = None,
    *,
    subjects: Iterable[int] | None = None,
    filter: str = FILTER,
    window: float = WINDOW,
    normalize: bool = True,
) -> torch.Tensor:
    """The FACES autoencoder data set (Hinton & Salakhutdinov 2006), rebuilt from Olivetti.

    A **re-generation** ([Data: FACES]), not the original ``newfaces_rot_single.mat``: each
    of the 400 Olivetti images is rotated by every angle in -90, -86, ..., 90 degrees and
    magnified by every scale in 1.40, 1.45, ..., 1.80 about its centre; the central frame of
    ``window / scale`` source pixels is subsampled to 25 x 25 (default: bilinear point
    sampling of a 56-pixel frame, chosen with the PCA-30 check, see ``WINDOW``). Order is
    subject-major, then source image, angle, scale. The per-pixel mean over the **whole**
    165,600-patch set is subtracted and everything is divided by one scalar so that the
    average per-pixel variance over the whole set is 1 (total variance 625 per patch); every
    split and subset uses these whole-set statistics, so splits stay comparable.

    Splits (SOM, [Data: FACES]): ``"train"`` subjects 1-25 (103,500 patches), ``"valid"``
    26-30 (20,700), ``"test"`` 31-40 (41,400), ``"all"`` 1-40 (165,600). Martens' HF code
    trains on the first 103,500 and tests on the last 41,400.

    Args:
        split: ``"train"``, ``"valid"``, ``"test"`` or ``"all"``.
        root: data root holding ``olivettifaces.mat`` (or ``root/olivetti``); default
            ``$HESSFREE_DATA``.
        seed: seed of the random subset when ``n`` is given (the full set is a fixed grid).
        n: keep only a random subset of ``n`` patches of the split, in set order (for tests).
        subjects: 1-based subject ids to use instead of the split's range.
        filter: ``"bilinear"`` (default) or ``"area"`` (2 x 2 averaging of a 50 x 50 sampling).
        window: frame side in source pixels before magnification (default 56).
        normalize: apply the whole-set centring and scaling (``False``: raw values in [0, 1]).

    Returns:
        float32 tensor ``(N, 625)`` (row-major 25 x 25 patches).

    Raises:
        FileNotFoundError: if ``olivettifaces.mat`` is missing (the message lists where).
        ValueError: for an unknown split or filter, bad subjects, ``n`` or ``window``.
    """
    if filter not in FILTERS:
        raise InputError(f"faces: filter must be one of {FILTERS}, got {filter!r}")
    if not 0 < window <= SOURCE_SIDE:
        raise InputError(f"faces: window must be in (0, 64] source pixels, got {window!r}")
    index = select(split, subjects, n, seed)
    source = load_olivetti(root)
    x = render_indices(source, index, filter, window)
    if not normalize:
        return x
    if len(index) == len(source) * PER_IMAGE:
        mean, scale = moments(x.split(8192))
    else:
        mean, scale = whole_set_statistics(source, filter, window)
    return x.sub_(mean).div_(scale)
