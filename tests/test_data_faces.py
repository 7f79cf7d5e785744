import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from hessfree.data import faces, load_olivetti
from hessfree.data.faces import ANGLES, PER_IMAGE, SCALES, SPLITS, WINDOW, select


@pytest.fixture(scope="module")
def root(olivetti_data_root):
    return olivetti_data_root


@pytest.fixture(scope="module")
def whole(root):
    return faces("all", root)


def test_split_sizes_and_disjoint_subjects():
    sizes = {name: len(select(name, None, None, 0)) for name in SPLITS}
    assert sizes == {"train": 103500, "valid": 20700, "test": 41400, "all": 165600}
    assert len(ANGLES) * len(SCALES) == PER_IMAGE == 414
    parts = [set(select(name, None, None, 0).tolist()) for name in ("train", "valid", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(165600))
    subject_of = lambda idx: set((np.asarray(sorted(idx)) // (10 * 414) + 1).tolist())  # noqa: E731
    assert subject_of(parts[0]) == set(range(1, 26))
    assert subject_of(parts[1]) == set(range(26, 31))
    assert subject_of(parts[2]) == set(range(31, 41))


def test_olivetti_source(root):
    source = load_olivetti(root)
    assert source.shape == (400, 64, 64) and source.dtype == torch.float32
    assert source.min() >= 0 and abs(source.max().item() - 242 / 255) < 1e-6
    assert abs(source.mean().item() * 255 - 132.38) < 0.01  # [Data: FACES], the source file
    # upright faces are symmetric left-right, not top-bottom (a transposed read would swap)
    mean_face = source.mean(0)
    assert (mean_face - mean_face.flip(1)).abs().mean() < 0.5 * (
        mean_face - mean_face.flip(0)).abs().mean()


def test_whole_set_normalisation(whole):
    assert whole.shape == (165600, 625) and whole.dtype == torch.float32
    x = whole.double()
    assert x.mean(0).abs().max() < 1e-4
    assert abs(x.var(0, unbiased=False).mean().item() - 1.0) < 1e-4


def test_splits_use_whole_set_statistics(root, whole):
    test = faces("test", root)
    assert test.shape == (41400, 625)
    torch.testing.assert_close(test, whole[-41400:], atol=1e-5, rtol=0)


def test_random_subset_is_deterministic_and_part_of_the_split(root, whole):
    a = faces("valid", root, seed=5, n=60)
    b = faces("valid", root, seed=5, n=60)
    c = faces("valid", root, seed=6, n=60)
    assert a.shape == (60, 625) and torch.equal(a, b) and not torch.equal(a, c)
    index = select("valid", None, 60, 5)
    assert ((index >= 25 * 4140) & (index < 30 * 4140)).all()
    torch.testing.assert_close(a, whole[index], atol=1e-5, rtol=0)


def resample(image, angle_deg, scale, size):
    """Bilinear samples of a size x size grid over the rotated, magnified central frame."""
    angle, half = np.deg2rad(angle_deg), WINDOW / (2 * scale)
    u = (2 * np.arange(size) + 1) / size - 1  # normalised output pixel centres
    ox, oy = np.meshgrid(u, u)  # ox varies along columns (x), oy along rows (y)
    sx = 31.5 + half * (np.cos(angle) * ox - np.sin(angle) * oy)
    sy = 31.5 + half * (np.sin(angle) * ox + np.cos(angle) * oy)
    return map_coordinates(image, [sy, sx], order=1, mode="constant")


@pytest.mark.parametrize("filter", ["bilinear", "area"])
def test_patches_are_the_documented_rotation_and_zoom(root, filter):
    """Independent re-sampling with scipy for a few (image, angle, scale) triples of subject 4."""
    source = load_olivetti(root).double().numpy()
    raw = faces(subjects=[4], root=root, normalize=False, filter=filter)
    assert raw.shape == (4140, 625) and raw.min() >= 0 and raw.max() <= 1
    for image, a, s in [(0, 0, 0), (3, 22, 8), (9, 45, 4), (5, 7, 2)]:
        if filter == "bilinear":
            expected = resample(source[30 + image], ANGLES[a], SCALES[s], 25)
        else:
            fine = resample(source[30 + image], ANGLES[a], SCALES[s], 50)
            expected = fine.reshape(25, 2, 25, 2).mean(axis=(1, 3))
        got = raw[image * PER_IMAGE + a * len(SCALES) + s].reshape(25, 25).double().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pca30_check_figure(whole):
    """[Data: FACES]: 30-D PCA on subjects 1-30, test error on 31-40; H&S 2006 report 135.

    The covariance uses every 4th training patch in float32 (same figure to 0.01, 10x cheaper).
    """
    train, test = whole[:124200:4], whole[-41400:]
    mu = train.mean(0)
    centred = train - mu
    _, vectors = torch.linalg.eigh((centred.T @ centred).double() / len(train))
    top = vectors[:, -30:].float()
    residual = (test - mu) - (test - mu) @ top @ top.T
    error = residual.double().pow(2).sum(1).mean().item()
    assert 130 < error < 140, error  # 134.4 with the default filter and frame


def test_missing_file_names_it_and_where(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        faces("train", tmp_path, n=5)
    message = str(info.value)
    assert "olivettifaces.mat" in message
    assert str(tmp_path / "olivetti" / "olivettifaces.mat") in message


@pytest.mark.parametrize("kwargs,name", [({"split": "validation"}, "split"),
                                         ({"filter": "cubic"}, "filter"),
                                         ({"subjects": [0, 3]}, "subjects"),
                                         ({"n": 10**6}, r"n: expected an integer in \[0, "),
                                         ({"window": 80}, "window")])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        faces(root=tmp_path, **kwargs)
