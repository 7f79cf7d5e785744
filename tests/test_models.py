"""Tests of the feed-forward models: DeepAutoencoder, its presets, reconstruction_error, MLP."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from hessfree.models import (
    MLP,
    DeepAutoencoder,
    curves_autoencoder,
    faces_autoencoder,
    mnist_autoencoder,
    reconstruction_error,
)

NP_ACT = {
    "logistic": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    "linear": lambda z: z,
}


def numpy_forward(model, x, acts, n_layers=None):
    """Independent float64 reference: pre-activation of layer ``n_layers - 1``."""
    ws = [(lay.weight.detach().double().numpy(), lay.bias.detach().double().numpy())
          for lay in model.layers]
    n_layers = len(ws) if n_layers is None else n_layers
    h = x.double().numpy()
    for i in range(n_layers):
        if i:
            h = NP_ACT[acts[i - 1]](h)
        h = h @ ws[i][0].T + ws[i][1]
    return h


# HFDemo layer lists ([HFDemo], Architectures): hidden sizes; the code layer uses linear units
HFDEMO = {
    "curves": ([400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400], 784, "logistic"),
    "mnist": ([1000, 500, 250, 30, 250, 500, 1000], 784, "logistic"),
    "faces": ([2000, 1000, 500, 30, 500, 1000, 2000], 625, "linear"),
}


@pytest.mark.parametrize("name, make", [
    ("curves", curves_autoencoder), ("mnist", mnist_autoencoder), ("faces", faces_autoencoder),
])
def test_presets_match_hfdemo_layer_lists(name, make):
    hidden, dim, output = HFDEMO[name]
    model = make()
    sizes = [dim] + hidden + [dim]
    assert [(lay.in_features, lay.out_features) for lay in model.layers] == list(
        zip(sizes[:-1], sizes[1:]))
    code = hidden.index(min(hidden))
    assert model.code_layer == code
    assert model.activations == tuple(
        ["linear" if i == code else "logistic" for i in range(len(hidden))] + [output])
    z = torch.linspace(-3, 3, 7)
    expected = torch.sigmoid(z) if output == "logistic" else z
    assert torch.equal(model.output_nonlinearity(z), expected)


def small_ae(output="logistic", hidden="logistic"):
    torch.manual_seed(0)
    return DeepAutoencoder([12, 9, 6, 3, 6, 9, 12], hidden=hidden, output=output).double()


@pytest.mark.parametrize("hidden", ["logistic", "tanh"])
def test_forward_returns_logits_and_encode_the_code(hidden):
    model = small_ae(hidden=hidden)
    x = torch.rand(5, 12, dtype=torch.float64)
    acts = list(model.activations)
    assert acts[2] == "linear" and acts[-1] == "logistic"
    np.testing.assert_allclose(model(x).detach().numpy(), numpy_forward(model, x, acts),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.encode(x).detach().numpy(),
                               numpy_forward(model, x, acts, n_layers=3), rtol=1e-12, atol=1e-12)
    assert model.encode(x).shape == (5, 3)


def test_nonlinear_code_layer():
    torch.manual_seed(1)
    model = DeepAutoencoder([6, 4, 2, 4, 6], code="logistic").double()
    x = torch.rand(3, 6, dtype=torch.float64)
    code_pre = numpy_forward(model, x, list(model.activations), n_layers=2)
    np.testing.assert_allclose(model.encode(x).detach().numpy(), NP_ACT["logistic"](code_pre),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("output", ["logistic", "linear"])
def test_reconstruction_error_is_the_l2_metric(output):
    model = small_ae(output)
    x = torch.rand(23, 12, dtype=torch.float64)
    z = numpy_forward(model, x, list(model.activations))
    y = NP_ACT[output](z)
    expected = ((y - x.numpy()) ** 2).sum(axis=1).mean()  # HFDemo errtype='L2'
    assert reconstruction_error(model, x) == pytest.approx(expected, rel=1e-12)
    assert reconstruction_error(model, x, batch_size=5) == pytest.approx(expected, rel=1e-12)
    assert reconstruction_error(model, x, batch_size=1) == pytest.approx(expected, rel=1e-12)


def test_reconstruction_error_float32_and_no_grad():
    model = small_ae().float()
    x = torch.rand(10, 12)
    err = reconstruction_error(model, x, batch_size=4)
    ref = (torch.sigmoid(model(x)) - x).double().square().sum(1).mean().item()
    assert isinstance(err, float) and err == pytest.approx(ref, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def per_example_grads_match_loop(model, x, t, loss):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(p, xi, ti):
        return loss(functional_call(model, p, (xi.unsqueeze(0),)), ti.unsqueeze(0))

    batched = vmap(grad(f), in_dims=(None, 0, 0))(params, x, t)
    for i in range(x.shape[0]):
        model.zero_grad()
        loss(model(x[i:i + 1]), t[i:i + 1]).backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(batched[n][i], p.grad, rtol=1e-10, atol=1e-12)


def test_autoencoder_under_functional_call_and_vmap():
    model = small_ae()
    x = torch.rand(4, 12, dtype=torch.float64)
    per_example_grads_match_loop(
        model, x, x,
        lambda z, t: torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="sum"))


@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu", "linear"])
def test_mlp_forward_and_vmap(activation):
    torch.manual_seed(2)
    model = MLP([7, 5, 4, 3], activation, output="softmax").double()
    assert model.activations == (activation, activation, "softmax")
    x = torch.randn(6, 7, dtype=torch.float64)
    np.testing.assert_allclose(model(x).detach().numpy(),
                               numpy_forward(model, x, list(model.activations)),
                               rtol=1e-12, atol=1e-12)
    probs = model.output_nonlinearity(model(x))
    torch.testing.assert_close(probs, torch.softmax(model(x), dim=-1))
    labels = torch.randint(0, 3, (6,))
    per_example_grads_match_loop(
        model, x, labels,
        lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="sum"))


def test_mnist_classifier_of_the_seed_blog():
    model = MLP([784, 600, 10])
    assert [(lay.in_features, lay.out_features) for lay in model.layers] == [(784, 600), (600, 10)]
    assert model.activations == ("logistic", "softmax")
    assert model(torch.rand(2, 784)).shape == (2, 10)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: DeepAutoencoder([784, 30]), ValueError, "layer_sizes"),
    (lambda: DeepAutoencoder([784, 30, 700]), ValueError, "layer_sizes"),
    (lambda: DeepAutoencoder([10, 5, 8, 5, 10]), ValueError, "code layer"),
    (lambda: DeepAutoencoder([10, 0, 10]), ValueError, r"layer_sizes\[1\]"),
    (lambda: DeepAutoencoder([10, 2.5, 10]), TypeError, r"layer_sizes\[1\]"),
    (lambda: DeepAutoencoder("784-30-784"), TypeError, "layer_sizes"),
    (lambda: DeepAutoencoder([10, 5, 10], hidden="sigmoidal"), ValueError, "hidden"),
    (lambda: DeepAutoencoder([10, 5, 10], output="softmax"), ValueError, "output"),
    (lambda: MLP([10]), ValueError, "sizes"),
    (lambda: MLP([10, 5], activation="gelu"), ValueError, "activation"),
    (lambda: MLP([10, 5], output="tanh"), ValueError, "output"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_calls():
    model = small_ae()
    with pytest.raises(ValueError, match="x: expected shape"):
        model(torch.rand(3, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch_size"):
        reconstruction_error(model, torch.rand(3, 12, dtype=torch.float64), batch_size=0)
    with pytest.raises(ValueError, match="x: expected"):
        reconstruction_error(model, torch.rand(12, dtype=torch.float64))
    with pytest.raises(TypeError, match="model"):
        reconstruction_error(torch.nn.Linear(12, 12), torch.rand(3, 12))


def test_subpackages_reachable_from_a_bare_import():
    """``import hessfree`` then ``hessfree.data.curves`` (the README quick start), fresh process."""
    import subprocess
    import sys

    code = ("import hessfree, sys; assert 'hessfree.data' not in sys.modules; "
            "x, _ = hessfree.data.curves(n_train=3, n_test=1); assert x.shape == (3, 784); "
            "assert hessfree.runs.__name__ == 'hessfree.runs'; "
            "assert callable(hessfree.hf.HessianFree)\n"
            "try:\n    hessfree.nope\nexcept AttributeError as e:\n    assert 'nope' in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
