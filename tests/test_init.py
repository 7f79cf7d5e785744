"""Tests of sparse initialization (Martens 2010) and ESN initialization (Sutskever et al. 2013)."""

import pytest
import torch

from hessfree.models import MLP, DeepAutoencoder, TanhRNN, esn_init_, sparse_init_
from hessfree.models.init import sparse_matrix


def gen(seed):
    return torch.Generator().manual_seed(seed)


def fan_in(w):
    return (w != 0).sum(dim=1)


def test_sparse_init_autoencoder_fan_in_scale_and_biases():
    model = DeepAutoencoder([784, 1000, 30, 1000, 784])
    sparse_init_(model, generator=gen(0))
    for layer in model.layers:
        w = layer.weight.detach()
        k = min(15, layer.in_features)
        assert torch.equal(fan_in(w), torch.full((layer.out_features,), k))
        assert torch.equal(layer.bias.detach(), torch.zeros(layer.out_features))
    nz = model.layers[1].weight.detach()
    nz = nz[nz != 0]  # 30 · 15 = 450 draws
    assert nz.numel() == 450
    big = model.layers[0].weight.detach()
    big = big[big != 0].double()  # 15,000 draws: std within ~5 standard errors
    assert abs(big.std().item() - 1.0) < 0.03 and abs(big.mean().item()) < 0.05


def test_small_layers_use_all_inputs():
    model = DeepAutoencoder([784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784])
    sparse_init_(model, generator=gen(1))
    code_to_25 = model.layers[6].weight.detach()  # fan-in 6 < 15: every input connected
    assert code_to_25.shape == (25, 6) and bool((code_to_25 != 0).all())
    sparse_init_(model, connections=3, generator=gen(1))
    assert bool((fan_in(model.layers[6].weight) == 3).all())


def test_connections_are_drawn_without_replacement():
    # 2000 units choosing 15 of 20 inputs: with replacement almost every unit would get fewer
    # than 15 distinct inputs (P(15 distinct) = 20!/(5!·20^15) ≈ 6e-4 per unit)
    w = sparse_matrix(2000, 20, 15, generator=gen(2))
    assert torch.equal(fan_in(w), torch.full((2000,), 15))
    # every input position is used (uniform choice), about 2000 · 15/20 = 1500 times each
    counts = (w != 0).sum(dim=0)
    assert counts.min() > 1300 and counts.max() < 1700


def test_tanh_units_simulate_sigmoid_units():
    model = MLP([300, 400, 10], "tanh", output="linear")
    sparse_init_(model, scale=2.0, generator=gen(3))
    hidden, out = model.layers
    assert torch.equal(hidden.bias.detach(), torch.full((400,), 0.5))
    assert torch.equal(out.bias.detach(), torch.zeros(10))
    h = hidden.weight.detach()
    h = h[h != 0].double()  # 6000 draws of 0.25 · 2 · N(0, 1)
    assert abs(h.std().item() / 0.5 - 1) < 0.05
    o = out.weight.detach()
    o = o[o != 0].double()  # 150 draws of 2 · N(0, 1)
    assert abs(o.std().item() / 2.0 - 1) < 0.25
    assert torch.equal(fan_in(hidden.weight), torch.full((400,), 15))


def test_scale_multiplies_every_weight():
    a = sparse_init_(MLP([40, 30, 5]), generator=gen(4))
    b = sparse_init_(MLP([40, 30, 5]), scale=0.25, generator=gen(4))
    for la, lb in zip(a.layers, b.layers):
        torch.testing.assert_close(lb.weight, 0.25 * la.weight, rtol=1e-6, atol=0)


def test_sparse_init_determinism_and_dtype_independence():
    a = sparse_init_(MLP([50, 20, 4]), generator=gen(5))
    b = sparse_init_(MLP([50, 20, 4]), generator=gen(5))
    c = sparse_init_(MLP([50, 20, 4]), generator=gen(6))
    d = sparse_init_(MLP([50, 20, 4]).double(), generator=gen(5))
    for pa, pb, pc, pd in zip(a.parameters(), b.parameters(), c.parameters(), d.parameters()):
        assert torch.equal(pa, pb)
        assert torch.equal(pa, pd.float())
        if pa.dim() == 2:
            assert not torch.equal(pa, pc)
    torch.manual_seed(7)
    e = sparse_init_(MLP([50, 20, 4]))
    torch.manual_seed(7)
    f = sparse_init_(MLP([50, 20, 4]))
    assert all(torch.equal(p, q) for p, q in zip(e.parameters(), f.parameters()))


def test_sparse_init_plain_module_and_rnn():
    seq = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.Tanh(), torch.nn.Linear(20, 3))
    sparse_init_(seq, generator=gen(8))
    assert torch.equal(fan_in(seq[0].weight), torch.full((20,), 15))
    assert torch.equal(seq[0].bias.detach(), torch.zeros(20))  # activation unknown: not tanh
    rnn = sparse_init_(TanhRNN(30, 40, 2), generator=gen(8))
    assert torch.equal(fan_in(rnn.W_hh), torch.full((40,), 15))
    assert torch.equal(rnn.b_h.detach(), torch.full((40,), 0.5))  # tanh hidden units


def test_esn_init_table_4():
    rnn = TanhRNN(50, 100, 20).double()
    mean_target = torch.linspace(-1, 1, 20, dtype=torch.float64)
    esn_init_(rnn, output_bias=mean_target, generator=gen(9))
    radius = torch.linalg.eigvals(rnn.W_hh.detach().double()).abs().max().item()
    assert radius == pytest.approx(1.1, abs=1e-6)
    assert torch.equal(fan_in(rnn.W_hh), torch.full((100,), 15))
    w_in = rnn.W_in.detach()
    assert bool((w_in != 0).all())  # dense, 5000 draws of 0.001 · N(0, 1)
    assert abs(w_in.std().item() / 0.001 - 1) < 0.05
    w_out = rnn.W_out.detach()
    assert bool((w_out != 0).all())  # dense, 2000 draws of 0.1 · N(0, 1)
    assert abs(w_out.std().item() / 0.1 - 1) < 0.08
    assert torch.equal(rnn.b_h.detach(), torch.zeros(100, dtype=torch.float64))
    assert torch.equal(rnn.b_out.detach(), mean_target)


def test_esn_init_memorization_scale_float32_and_learned_h0():
    rnn = TanhRNN(100, 100, 5, initial_state="learned")
    with torch.no_grad():
        rnn.h0.fill_(3.0)
    esn_init_(rnn, input_scale=0.1, output_bias=0.25, spectral_radius=1.2, generator=gen(10))
    assert abs(rnn.W_in.detach().double().std().item() / 0.1 - 1) < 0.05
    radius = torch.linalg.eigvals(rnn.W_hh.detach().double()).abs().max().item()
    assert radius == pytest.approx(1.2, abs=1e-5)  # float32 storage rounds the entries
    assert torch.equal(rnn.b_out.detach(), torch.full((5,), 0.25))
    assert torch.equal(rnn.h0.detach(), torch.zeros(100))


def test_esn_init_determinism():
    a = esn_init_(TanhRNN(4, 30, 2), generator=gen(11))
    b = esn_init_(TanhRNN(4, 30, 2), generator=gen(11))
    c = esn_init_(TanhRNN(4, 30, 2), generator=gen(12))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_hh, c.W_hh)


def test_esn_init_zero_radius_and_few_units():
    rnn = esn_init_(TanhRNN(2, 10, 1), spectral_radius=0.0, generator=gen(13))
    assert torch.equal(rnn.W_hh.detach(), torch.zeros(10, 10))
    small = TanhRNN(2, 6, 1).double()
    esn_init_(small, generator=gen(14))  # 6 < 15 units: dense
    assert bool((small.W_hh != 0).all())
    assert torch.linalg.eigvals(small.W_hh.detach()).abs().max().item() == pytest.approx(1.1)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: sparse_init_(MLP([5, 3]), connections=0), ValueError, "connections"),
    (lambda: sparse_init_(MLP([5, 3]), scale=-1.0), ValueError, "scale"),
    (lambda: sparse_init_(MLP([5, 3]), generator=0), TypeError, "generator"),
    (lambda: sparse_init_(torch.nn.Tanh()), ValueError, "model"),
    (lambda: sparse_init_("mlp"), TypeError, "model"),
    (lambda: esn_init_(TanhRNN(2, 10, 1), spectral_radius=-1.1), ValueError, "spectral_radius"),
    (lambda: esn_init_(TanhRNN(2, 10, 1), connections=0), ValueError, "connections"),
    (lambda: esn_init_(TanhRNN(2, 10, 1), input_scale=float("nan")), ValueError, "input_scale"),
    (lambda: esn_init_(TanhRNN(2, 10, 3), output_bias=torch.zeros(2)), ValueError,
     "output_bias"),
    (lambda: esn_init_(MLP([5, 3])), TypeError, "rnn"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_esn_init_rejects_non_square_recurrent_matrix():
    rnn = TanhRNN(2, 10, 1)
    rnn.W_hh = torch.nn.Parameter(torch.zeros(10, 9))
    with pytest.raises(ValueError, match="W_hh: expected a square matrix"):
        esn_init_(rnn)
