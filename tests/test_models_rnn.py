"""Tests of TanhRNN: the recurrence, output steps, the structural-damping hook, torch.func."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

import hessfree
from hessfree.models import TanhRNN


def make_rnn(output="linear", output_steps=None, initial_state="zero", seed=0):
    torch.manual_seed(seed)
    rnn = TanhRNN(3, 8, 2, output=output, output_steps=output_steps,
                  initial_state=initial_state).double()
    if rnn.h0 is not None:
        with torch.no_grad():
            rnn.h0.uniform_(-0.5, 0.5)
    return rnn


def numpy_rnn(rnn, x):
    """Independent float64 reference: a per-case, per-step loop."""
    w_in, w_hh, b_h, w_out, b_out = (getattr(rnn, n).detach().numpy()
                                     for n in ("W_in", "W_hh", "b_h", "W_out", "b_out"))
    h0 = np.zeros(rnn.n_hidden) if rnn.h0 is None else rnn.h0.detach().numpy()
    n, t_len, _ = x.shape
    outs = np.zeros((n, t_len, rnn.n_out))
    pre = np.zeros((n, t_len, rnn.n_hidden))
    for i in range(n):
        h = h0
        for t in range(t_len):
            a = w_in @ x[i, t].numpy() + w_hh @ h + b_h
            h = np.tanh(a)
            pre[i, t] = a
            outs[i, t] = w_out @ h + b_out
    return outs, pre


@pytest.mark.parametrize("initial_state", ["zero", "learned"])
def test_forward_and_hidden_preacts_match_reference(initial_state):
    rnn = make_rnn(initial_state=initial_state)
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    ref_out, ref_pre = numpy_rnn(rnn, x)
    out, pre = rnn(x, return_hidden=True)
    assert out.shape == (4, 6, 2) and pre.shape == (4, 6, 8)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pre.detach().numpy(), ref_pre, rtol=1e-12, atol=1e-12)
    assert torch.equal(rnn(x), out)
    assert TanhRNN.hidden_nonlinearity == "tanh" and rnn.hidden_nonlinearity == "tanh"
    names = {n for n, _ in rnn.named_parameters()}
    assert ("h0" in names) == (initial_state == "learned")


def test_hidden_preacts_come_from_the_same_forward_pass():
    rnn = make_rnn()
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, inp, out: calls.append(mod))
    try:
        out, pre = rnn(torch.randn(2, 5, 3, dtype=torch.float64), return_hidden=True)
    finally:
        handle.remove()
    assert calls == [rnn]
    # the pre-activations are differentiable functions of the parameters (for J_a)
    g = torch.autograd.grad(pre.sum(), rnn.W_hh)[0]
    assert g.abs().sum() > 0


@pytest.mark.parametrize("steps, index", [("last", [5]), ([0, -1, 2], [0, 5, 2]), ([3], [3]),
                                           ([4, 1, 4], [4, 1, 4])])
def test_output_steps(steps, index):
    full = make_rnn()
    chosen = make_rnn(output_steps=steps)
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    out, pre = chosen(x, return_hidden=True)
    torch.testing.assert_close(out, full(x)[:, index], rtol=0, atol=1e-14)
    assert pre.shape == (3, 6, 8)


@pytest.mark.parametrize("output", ["logistic", "softmax", "linear"])
def test_output_nonlinearity(output):
    rnn = make_rnn(output=output)
    z = rnn(torch.randn(2, 4, 3, dtype=torch.float64))
    y = rnn.output_nonlinearity(z)
    expected = {"logistic": torch.sigmoid(z), "softmax": torch.softmax(z, dim=-1),
                "linear": z}[output]
    torch.testing.assert_close(y, expected)


def test_per_example_grads_under_vmap_and_functional_call():
    rnn = make_rnn(initial_state="learned")
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    y = torch.randn(5, 4, 2, dtype=torch.float64)
    params = {n: p.detach() for n, p in rnn.named_parameters()}

    def loss(p, xi, yi):
        out, pre = functional_call(rnn, p, (xi.unsqueeze(0),), {"return_hidden": True})
        return (out - yi.unsqueeze(0)).square().sum() + 0.1 * torch.tanh(pre).square().sum()

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(5):
        rnn.zero_grad()
        loss(dict(rnn.named_parameters()), x[i], y[i]).backward()
        for n, p in rnn.named_parameters():
            torch.testing.assert_close(batched[n][i], p.grad, rtol=1e-10, atol=1e-12)


def test_double_backward_hessian_vector_product():
    rnn = make_rnn(output="logistic", output_steps="last")
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    t = torch.rand(3, 1, 2, dtype=torch.float64)
    names = [n for n, _ in rnn.named_parameters()]
    theta = {n: p.detach() for n, p in rnn.named_parameters()}
    v = {n: torch.randn_like(p) for n, p in theta.items()}

    def f(p):
        z = functional_call(rnn, p, (x,))
        return torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="sum")

    leaves = {n: p.clone().requires_grad_(True) for n, p in theta.items()}
    g = torch.autograd.grad(f(leaves), list(leaves.values()), create_graph=True)
    hv = torch.autograd.grad(sum((gi * v[n]).sum() for gi, n in zip(g, names)),
                             list(leaves.values()))
    h = 1e-5  # central differences of the gradient: error O(h²)
    gp = grad(f)({n: theta[n] + h * v[n] for n in names})
    gm = grad(f)({n: theta[n] - h * v[n] for n in names})
    for hvi, n in zip(hv, names):
        torch.testing.assert_close(hvi, (gp[n] - gm[n]) / (2 * h), rtol=1e-6, atol=1e-8)


def test_structural_damping_matches_dense_reference():
    """The curvature package's J_aᵀ D J_a v through the hook, against jacrev in float64."""
    rnn = make_rnn(output_steps="last")
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    y = torch.randn(4, 1, 2, dtype=torch.float64)
    problem = hessfree.Problem(rnn, hessfree.losses.MSE())
    op = hessfree.GGN(problem, (x, y), structural_damping=0.03)
    assert op.backend == "forward"  # auto's choice with structural damping (bench_rnn.py)
    params = {n: p.detach() for n, p in rnn.named_parameters()}
    flat = torch.cat([p.reshape(-1) for p in params.values()])
    v = torch.randn_like(flat)

    def hidden(vec):
        parts, i = {}, 0
        for n, p in params.items():
            parts[n] = vec[i:i + p.numel()].view_as(p)
            i += p.numel()
        return functional_call(rnn, parts, (x,), {"return_hidden": True})[1].reshape(-1)

    jac = jacrev(hidden)(flat)  # (N·T·H, P)
    a = hidden(flat)
    d = 0.25 * (1 - torch.tanh(a).square()) / x.shape[0]  # HF-RNN's tanh H_prod, mean over cases
    expected = jac.T @ (d * (jac @ v))
    torch.testing.assert_close(op.structural_mv(v), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: TanhRNN(0, 10, 1), ValueError, "n_in"),
    (lambda: TanhRNN(2, 0, 1), ValueError, "n_hidden"),
    (lambda: TanhRNN(2, 10, 1.5), TypeError, "n_out"),
    (lambda: TanhRNN(2, 10, 1, output="relu"), ValueError, "output"),
    (lambda: TanhRNN(2, 10, 1, output_steps="first"), ValueError, "output_steps"),
    (lambda: TanhRNN(2, 10, 1, output_steps=[]), ValueError, "output_steps"),
    (lambda: TanhRNN(2, 10, 1, output_steps=[1.0]), TypeError, "output_steps"),
    (lambda: TanhRNN(2, 10, 1, initial_state="random"), ValueError, "initial_state"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_inputs():
    rnn = make_rnn(output_steps=[7])
    with pytest.raises(ValueError, match="output_steps"):
        rnn(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, T, 3\)"):
        rnn(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: expected shape"):
        rnn(torch.randn(2, 5, 4, dtype=torch.float64))
