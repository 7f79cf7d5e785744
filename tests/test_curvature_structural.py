"""Structural damping against Sutskever's HF-RNN code, written from the source, not from ours.

The reference below transcribes [HF-RNN]'s ``RNN.R_forward_pass`` and ``RNN.backward_pass``
(``opt/m/rnn/rnn.py``) in numpy float64, with ``Tanh.H_prod(X, P, M) = X·(1 − P²)·M·0.25``
(``opt/utils/nonlin.py``) as the structural term and the output gradient set to zero, so what is
left is exactly the structural part of the damped Gauss-Newton product; ``HF._op`` then divides
by the batch's size (one output per sequence here, so the number of sequences). It follows the
source's row-vector layout (``HX_t = H_{t-1} W_hh + V_t W_vh``) and adds the one thing our
``TanhRNN`` has and the source has not, the hidden bias ``b_h`` (its R-term ``R.b_h`` enters
``R_HX`` like ``V_t R.W_vh`` does and its gradient is ``Σ dHX_t``). A second, dense reference
builds ``J_aᵀ diag(¼(1 − h²)/N) J_a`` with ``torch.func.jacrev``.
"""

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

import hessfree
from hessfree.models import TanhRNN


def _rnn(n_in, n_hidden, n_out, initial_state, seed, dtype):
    torch.manual_seed(seed)
    rnn = TanhRNN(n_in, n_hidden, n_out, output_steps="last", initial_state=initial_state)
    with torch.no_grad():
        for p in rnn.parameters():
            p.normal_(0.0, 0.6)
    return rnn.to(dtype)


def hf_rnn_structural(rnn, x, v):
    """[HF-RNN]'s structural term ``Σ_t J_aᵀ (¼(1 − H_t²) ⊙ R_HX_t)``, divided by the batch size.

    ``v`` holds the direction in our parameter names; the answer comes back in the same names.
    """
    f64 = {n: p.detach().double().numpy() for n, p in rnn.named_parameters()}
    rv = {n: t.detach().double().numpy() for n, t in v.items()}
    # the source's layout: W_vh (v, h), W_hh (h, h) acting on row vectors
    w_vh, w_hh, b_h = f64["W_in"].T, f64["W_hh"].T, f64["b_h"]
    r_w_vh, r_w_hh, r_b_h = rv["W_in"].T, rv["W_hh"].T, rv["b_h"]
    xs = x.detach().double().numpy()
    batch, steps, _ = xs.shape
    V = [None] + [xs[:, t, :] for t in range(steps)]
    h_init = f64.get("h0", np.zeros(rnn.n_hidden))
    r_h_init = rv.get("h0", np.zeros(rnn.n_hidden))
    # forward_pass
    H = [np.tile(h_init, (batch, 1))] + [None] * steps
    for t in range(1, steps + 1):
        H[t] = np.tanh(H[t - 1] @ w_hh + V[t] @ w_vh + b_h)
    # R_forward_pass
    R_HX = [None] * (steps + 1)
    R_H_t = np.tile(r_h_init, (batch, 1))
    for t in range(1, steps + 1):
        R_HX[t] = R_H_t @ w_hh + H[t - 1] @ r_w_hh + V[t] @ r_w_vh + r_b_h
        R_H_t = (1 - H[t] * H[t]) * R_HX[t]  # hid_nonlin.grad_y(H[t]) * R_HX[t]
    # backward_pass with dOX = 0 and mu_times_lambda = 1
    g_w_hh, g_w_vh = np.zeros_like(w_hh), np.zeros_like(w_vh)
    g_b_h = np.zeros_like(b_h)
    dH_1t = np.zeros_like(H[-1])
    for t in reversed(range(1, steps + 1)):
        dH_t = dH_1t
        dHX_t = dH_t * (1 - H[t] * H[t])
        dHX_t = dHX_t + 1.0 * (R_HX[t] * (1 - H[t] * H[t]) * 1 * 0.25)  # Tanh.H_prod(R_HX, H, 1)
        dH_1t = dHX_t @ w_hh.T
        g_w_hh += H[t - 1].T @ dHX_t
        g_w_vh += V[t].T @ dHX_t
        g_b_h += dHX_t.sum(0)
    g_h_init = dH_1t.sum(0)
    out = {"W_in": g_w_vh.T, "W_hh": g_w_hh.T, "b_h": g_b_h,
           "W_out": np.zeros_like(f64["W_out"]), "b_out": np.zeros_like(f64["b_out"])}
    if "h0" in f64:
        out["h0"] = g_h_init
    return {n: torch.from_numpy(a / batch) for n, a in out.items()}  # HF._op: / batch size


def _flat(rnn, parts):
    return torch.cat([parts[n].reshape(-1) for n, _ in rnn.named_parameters()])


def _direction(rnn, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=torch.float64)
            for n, p in rnn.named_parameters()}


@pytest.mark.parametrize("shape", [(3, 2, 5, 1, 4), (5, 3, 7, 2, 9), (2, 4, 3, 3, 6)])
@pytest.mark.parametrize("initial_state", ["zero", "learned"])
def test_structural_damping_is_hf_rnn_formula(shape, initial_state):
    """``structural_mv`` equals the transcribed source, float64, several shapes."""
    batch, n_in, n_hidden, n_out, steps = shape
    rnn = _rnn(n_in, n_hidden, n_out, initial_state, seed=sum(shape), dtype=torch.float64)
    x = torch.randn(batch, steps, n_in, dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(7))
    y = torch.randn(batch, 1, n_out, dtype=torch.float64)
    op = hessfree.GGN(hessfree.Problem(rnn, hessfree.losses.MSE()), (x, y),
                      structural_damping=0.03)
    v = _direction(rnn, 3)
    ours = op.structural_mv(_flat(rnn, v))
    ref = _flat(rnn, hf_rnn_structural(rnn, x, v))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13)


def test_structural_damping_matches_dense_float64_reference():
    """The same term from dense Jacobians (``jacrev``) of the hidden pre-activations."""
    rnn = _rnn(3, 6, 2, "learned", seed=1, dtype=torch.float64)
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    params = {n: p.detach() for n, p in rnn.named_parameters()}
    flat = _flat(rnn, params)
    sizes = [p.numel() for p in params.values()]

    def hidden(vec):
        parts = {n: t.view_as(params[n]) for n, t in zip(params, torch.split(vec, sizes))}
        return functional_call(rnn, parts, (x,), {"return_hidden": True})[1].reshape(-1)

    J = jacrev(hidden)(flat)
    d = 0.25 * (1 - torch.tanh(hidden(flat)).square()) / x.shape[0]
    dense = J.T @ (d[:, None] * J)
    v = _direction(rnn, 5)
    ref = _flat(rnn, hf_rnn_structural(rnn, x, v))
    torch.testing.assert_close(dense @ _flat(rnn, v), ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend, cache", [("auto", True), ("double-backward", True),
                                            ("jvp", True), ("jvp", False)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_damped_product_adds_mu_lambda_times_the_source_term(dtype, tol, backend, cache):
    """``G.damped(λ) v = G v + λ v + μλ · (source term)``: μ = 0.03 is [HF-RNN]'s μ, with every
    backend that takes structural damping (and the uncached ``jvp`` one, which holds nothing
    between products)."""
    rnn = _rnn(2, 5, 1, "zero", seed=4, dtype=dtype)
    x = torch.randn(6, 8, 2, dtype=dtype)
    y = torch.randn(6, 1, 1, dtype=dtype)
    mu, lam = 0.03, 0.7
    op = hessfree.GGN(hessfree.Problem(rnn, hessfree.losses.MSE()), (x, y),
                      structural_damping=mu, backend=backend, cache=cache)
    v = {n: t.to(dtype) for n, t in _direction(rnn, 9).items()}
    fv = _flat(rnn, v)
    structural = (op.damped(lam) @ fv) - (op @ fv) - lam * fv
    ref = mu * lam * _flat(rnn, hf_rnn_structural(rnn, x, v)).to(dtype)
    assert float((structural - ref).norm() / ref.norm()) < tol
