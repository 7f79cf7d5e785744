import numpy as np
import pytest
import torch

from hessfree.data import curves
from hessfree.data.curves import control_points, gaussian_blur, ink_points, splat

N_CAL = 4000


def binary_entropy(p):
    p = p.double().clamp(1e-12, 1 - 1e-12)
    return -(p * p.log() + (1 - p) * (1 - p).log())


@pytest.fixture(scope="module")
def sample():
    return curves(N_CAL, 1000, seed=3)


def test_shapes_dtype_range(sample):
    x_train, x_test = sample
    assert x_train.shape == (N_CAL, 784) and x_test.shape == (1000, 784)
    assert x_train.dtype == x_test.dtype == torch.float32
    assert x_train.min() >= 0 and x_train.max() <= 1
    assert (x_train.sum(1) > 1).all()  # every image carries ink
    # steep curves are dim (ink evenly spaced in x), but most strokes are bright somewhere
    assert (x_train.max(1).values > 0.5).double().mean() > 0.9


def test_calibration_statistics_match_the_real_file(sample):
    """Targets from [Data: CURVES] (derived from the [HFDemo] CURVES run log).

    The variance sum (16.9) and the per-image entropy bound (54.7) are matched. The mean-image
    entropy is not: the real file's is about 124 nats, ours 130.7-131.0 (4000 images, seeds 3-6;
    documented as an open gap in [Data: CURVES]). Its window is therefore a regression guard
    around our own value, ±1.5 nats (five times the seed-to-seed spread), and the gap to 124 is
    asserted to stay what the documentation says (5-8 nats above), not hidden in a wide window.
    """
    for x in sample:
        x = x.double()
        total_var = x.var(0, unbiased=False).sum().item()
        assert abs(total_var - 16.9) < 0.6, total_var  # 16.9 = mean-image plateau error
    x = sample[0].double()
    mean_image_entropy = binary_entropy(x.mean(0)).sum().item()
    assert abs(mean_image_entropy - 130.8) < 1.5, mean_image_entropy  # ours (docstring)
    assert 5 < mean_image_entropy - 124 < 8, mean_image_entropy  # the documented gap
    per_image_entropy = binary_entropy(x).sum(1).mean().item()
    assert 45 < per_image_entropy <= 54.7, per_image_entropy  # real file: at most 54.7
    # anti-aliased ink: plenty of grey, few saturated pixels ([Data: CURVES])
    saturated = (x > 0.999).sum(1).double().mean().item()
    inked = (x > 0.01).sum(1).double().mean().item()
    assert 2 < saturated < 10 and 100 < inked < 170


def test_deterministic_by_seed_and_independent_streams():
    a_train, a_test = curves(300, 200, seed=7)
    b_train, b_test = curves(300, 200, seed=7)
    assert torch.equal(a_train, b_train) and torch.equal(a_test, b_test)
    c_train, _ = curves(300, 200, seed=8)
    assert not torch.equal(a_train, c_train)
    assert not torch.equal(a_train[:200], a_test)
    # the test set does not depend on the size of the training set
    _, d_test = curves(50, 200, seed=7)
    assert torch.equal(d_test, a_test)


def test_control_points_follow_the_recipe():
    xs, ys = control_points(5000, np.random.default_rng(0))
    assert xs.min() >= 2 and xs.max() <= 25 and ys.min() >= 2 and ys.max() <= 25
    assert (np.diff(xs, axis=1) >= 2).all()


def test_ink_points_lie_on_the_parabola_through_the_control_points():
    xs = np.array([[3.0, 10.0, 20.0]])
    ys = np.array([[5.0, 15.0, 8.0]])
    px, py = ink_points(xs, ys)
    assert px.shape == (1, 60)
    np.testing.assert_allclose(np.diff(px), (20 - 3) / 59)  # evenly spaced in x
    coeffs = np.polyfit(xs[0], ys[0], 2)  # independent interpolation
    np.testing.assert_allclose(py[0], np.polyval(coeffs, px[0]), atol=1e-9)
    np.testing.assert_allclose(py[0, [0, -1]], [5.0, 8.0])


def test_splat_is_bilinear_and_drops_ink_off_the_grid():
    px = np.array([[4.25, 30.0]])
    py = np.array([[7.5, 3.0]])
    image = splat(px, py, ink=1.0)[0]
    expected = np.zeros((28, 28))
    expected[7, 4], expected[7, 5] = 0.75 * 0.5, 0.25 * 0.5
    expected[8, 4], expected[8, 5] = 0.75 * 0.5, 0.25 * 0.5
    np.testing.assert_allclose(image, expected)


def test_blur_matches_a_direct_gaussian_convolution():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.random((3, 28, 28)))
    sigma = 0.77
    blurred = gaussian_blur(images, sigma).numpy()
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(images.numpy(), ((0, 0), (radius, radius), (radius, radius)))
    direct = np.zeros_like(blurred)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[:, radius + dy : radius + dy + 28, radius + dx : radius + dx + 28]
            direct += taps[dy + radius] * taps[dx + radius] * shifted
    np.testing.assert_allclose(blurred, direct, atol=1e-12)


@pytest.mark.parametrize("kwargs,name", [({"n_train": -1}, "n_train"), ({"n_test": 1.5}, "n_test"),
                                         ({"ink": 0}, "ink"), ({"sigma": -1}, "sigma")])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        curves(**{"n_train": 10, "n_test": 10, **kwargs})
