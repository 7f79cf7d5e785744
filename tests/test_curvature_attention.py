"""GGN, Hessian and empirical-Fisher products on attention models against dense references.

Models: a causal pre-LN ``nn.TransformerEncoder`` with tied embeddings and GELU (with and
without a key padding mask), an ``nn.TransformerDecoderLayer`` with cross-attention, and a block
calling ``F.scaled_dot_product_attention`` itself. References: dense float64 Jacobians and
loss Hessians by torch.func with PyTorch's math attention (``transformer_cases.Dense``). The
user's model is never changed; unsupported kernels get one line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from transformer_cases import (
    CausalLM,
    Dense,
    SDPABlock,
    Seq2SeqLM,
    dense_hessian,
    module_logits,
    ref_loss,
    rel,
    seeded,
    token_batch,
)

import hessfree
from hessfree.curvature.attention import differentiable_attention, kernel_error
from hessfree.errors import InputError

TOL = 1e-8


def _encoder_case(padded: bool):
    model = seeded(CausalLM(), 0)
    ids, labels, pad = token_batch(3, 1, pad_from={0: 6} if padded else None)
    inputs = (ids, pad) if padded else ids
    logits_of = module_logits(model, ids, pad) if padded else module_logits(model, ids)
    return model, inputs, labels, logits_of


def _vectors(dim: int, k: int = 2) -> torch.Tensor:
    return torch.randn(dim, k, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _with_reference(padded: bool):
    model, inputs, labels, logits_of = _encoder_case(padded)
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    return problem, (inputs, labels), Dense(logits_of, problem.parameters(), labels, shift=True)


@pytest.fixture(scope="module")
def causal_encoder():
    return _with_reference(padded=False)


@pytest.fixture(scope="module")
def padded_encoder():
    return _with_reference(padded=True)


@pytest.fixture(params=["causal", "padded"])
def encoder(request):
    """The encoder case (causal, or causal with a key padding mask) and its dense references."""
    return request.getfixturevalue(f"{request.param}_encoder")


def test_encoder_products_equal_dense_references(encoder):
    problem, batch, ref = encoder
    V = _vectors(ref.theta.numel())
    G = hessfree.GGN(problem, batch)
    F = hessfree.EmpiricalFisher(problem, batch)
    assert G.backend == "double-backward"  # auto
    assert abs(G.value - ref.value()) < 1e-12
    assert rel(G @ V, ref.ggn(V)) < TOL
    assert rel(G @ V[:, 0], ref.ggn(V[:, :1])[:, 0]) < TOL  # single and block products
    assert rel(F @ V, ref.fisher(V)) < TOL
    assert rel(F.diagonal(), torch.diagonal(ref.EF)) < TOL
    grad = torch.autograd.functional.jacobian(ref.loss_of_z, ref.z) @ ref.J
    assert rel(G.grad, grad) < TOL


@pytest.mark.parametrize("backend", ["forward", "jvp"])
def test_encoder_forward_mode_products_equal_dense_references(padded_encoder, backend):
    problem, batch, ref = padded_encoder
    V = _vectors(ref.theta.numel())
    G = hessfree.GGN(problem, batch, backend=backend)
    assert rel(G @ V, ref.ggn(V)) < TOL
    F = hessfree.EmpiricalFisher(problem, batch, backend=backend)
    assert rel(F @ V[:, 0], ref.fisher(V[:, :1])[:, 0]) < TOL


def test_encoder_uncached_jvp_products_equal_dense_references(encoder):
    """``backend="jvp", cache=False`` (nothing kept between products: forward mode without a
    graph, then one fresh forward graph for the vjp): the dense references, in chunks too."""
    problem, batch, ref = encoder
    V = _vectors(ref.theta.numel())
    lean = {"backend": "jvp", "cache": False}
    (inputs, labels) = batch
    cut = [slice(0, 1), slice(1, 3)]
    chunks = [(tuple(t[c] for t in inputs) if isinstance(inputs, tuple) else inputs[c],
               labels[c]) for c in cut]
    for b in (batch, chunks):
        G = hessfree.GGN(problem, b, **lean)
        F = hessfree.EmpiricalFisher(problem, b, **lean)
        assert abs(G.value - ref.value()) < 1e-12
        assert rel(G @ V, ref.ggn(V)) < TOL and rel(F @ V, ref.fisher(V)) < TOL
        assert rel(G @ V[:, 0], ref.ggn(V[:, :1])[:, 0]) < TOL
        grad = torch.autograd.functional.jacobian(ref.loss_of_z, ref.z) @ ref.J
        assert rel(G.grad, grad) < TOL and rel(F.grad, grad) < TOL


HESSIAN_SUBSET = ["emb.weight", "encoder.layers.0.self_attn.in_proj_bias",
                  "encoder.layers.1.norm1.weight"]


@pytest.fixture(scope="module")
def encoder_hessian():
    """The padded encoder case and the dense Hessian of its loss over ``HESSIAN_SUBSET``: the
    tied embedding (input and output), attention biases of layer 0, a LayerNorm of layer 1."""
    model, inputs, labels, logits_of = _encoder_case(padded=True)
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    dense = dense_hessian(logits_of, problem.parameters(), HESSIAN_SUBSET, labels, shift=True)
    return problem, (inputs, labels), dense


@pytest.mark.parametrize("backend", ["auto", "forward", "jvp"])
def test_encoder_hessian_equals_the_dense_hessian(encoder_hessian, backend):
    problem, batch, dense = encoder_hessian
    params = {n: p for n, p in problem.parameters().items() if n in HESSIAN_SUBSET}
    H = hessfree.Hessian(problem, batch, params=params, backend=backend)
    V = _vectors(H.dim, 2)
    if backend == "auto":
        assert rel(H @ V, dense @ V) < TOL
    first = H @ V[:, 0]
    assert rel(first, dense @ V[:, 0]) < TOL
    assert torch.equal(H @ V[:, 0], first)  # a product does not depend on the ones before it


@pytest.mark.parametrize("which", ["decoder", "sdpa"])
def test_decoder_layer_and_direct_sdpa_products(which):
    if which == "decoder":
        model = seeded(Seq2SeqLM(), 2)
        src, _, _ = token_batch(3, 3, t=5)
        ids, labels, _ = token_batch(3, 4)
        inputs, logits_of = (src, ids), module_logits(model, src, ids)
    else:
        model = seeded(SDPABlock(), 2)
        ids, labels, _ = token_batch(3, 4)
        inputs, logits_of = ids, module_logits(model, ids)
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    ref = Dense(logits_of, problem.parameters(), labels, shift=True)
    V = _vectors(ref.theta.numel())
    G = hessfree.GGN(problem, (inputs, labels))
    assert rel(G @ V, ref.ggn(V)) < TOL
    E = hessfree.EmpiricalFisher(problem, (inputs, labels))
    assert rel(E @ V, ref.fisher(V)) < TOL
    H = hessfree.Hessian(problem, (inputs, labels))
    HV = H @ V  # symmetric, and the product matches central differences of the gradient
    assert rel(V.T @ HV, (V.T @ HV).T) < TOL
    params = problem.parameters()
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])
    h, v = 1e-4, V[:, 0]

    def grad_at(t):
        parts = torch.split(t, [p.numel() for p in params.values()])
        local = {n: c.view(p.shape) for (n, p), c in zip(params.items(), parts)}
        return problem.value_and_grad(local, (inputs, labels))[1]

    fd = (grad_at(theta + h * v) - grad_at(theta - h * v)) / (2 * h)
    assert rel(HV[:, 0], fd) < 1e-6


def test_chunks_of_different_sizes_equal_the_joined_batch():
    model, _, _, _ = _encoder_case(padded=False)
    ids, labels, pad = token_batch(5, 11, pad_from={1: 5, 4: 3})
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True), weight_decay=1e-3)
    joined = ((ids, pad), labels)
    chunks = [((ids[:1], pad[:1]), labels[:1]), ((ids[1:4], pad[1:4]), labels[1:4]),
              ((ids[4:], pad[4:]), labels[4:])]
    V = _vectors(sum(p.numel() for p in model.parameters()))
    for cls in (hessfree.GGN, hessfree.Hessian, hessfree.EmpiricalFisher):
        a, b = cls(problem, joined), cls(problem, chunks)
        assert abs(a.value - b.value) < 1e-13 and rel(b.grad, a.grad) < 1e-12
        assert rel(b @ V, a @ V) < 1e-12, cls.__name__
        assert a.count == b.count == int(labels[:, 1:].ne(-100).sum())
    params = problem.parameters()
    assert abs(problem.value(params, chunks) - problem.value(params, joined)) < 1e-13
    assert rel(problem.value_and_grad(params, chunks)[1],
               problem.value_and_grad(params, joined)[1]) < 1e-12
    e_j, e_c = hessfree.EmpiricalFisher(problem, joined), hessfree.EmpiricalFisher(problem, chunks)
    assert rel(e_c.diagonal(), e_j.diagonal()) < 1e-12


def test_hf_steps_run_on_a_causal_encoder():
    model = CausalLM().double().eval()
    ids = torch.arange(6 * 9).reshape(6, 9) % 7  # a cyclic language: learnable
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    opt = hessfree.HessianFree(problem, config=hessfree.HFConfig.martens2010(
        initial_lambda=1.0, cg_max_iters=20))
    before = problem.value(problem.parameters(), (ids, ids))
    for _ in range(3):
        opt.step((ids, ids))
    assert problem.value(problem.parameters(), (ids, ids)) < before


# -- scope: host state untouched, no fast path, no model change ----------------------------------
def _host_state():
    return (torch.backends.mha.get_fastpath_enabled(), torch.backends.cuda.flash_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())


def test_the_host_settings_are_as_before_after_products_and_errors():
    model, inputs, labels, _ = _encoder_case(padded=True)
    before = _host_state()
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    G = hessfree.GGN(problem, (inputs, labels))
    G @ torch.ones(G.dim, dtype=torch.float64)
    assert _host_state() == before
    with pytest.raises(InputError):
        hessfree.GGN(problem, (inputs, labels[:, :3]))
    assert _host_state() == before
    with differentiable_attention():
        assert not torch.backends.mha.get_fastpath_enabled()
    assert _host_state() == before


def test_the_no_grad_value_takes_the_same_path_as_the_products():
    """Under no_grad nn.TransformerEncoder would take its fused fast path (nested tensors for a
    padded batch, zeros at the padded positions); hessfree's objective equals the operator's."""
    model, inputs, labels, _ = _encoder_case(padded=True)
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    G = hessfree.GGN(problem, (inputs, labels))
    assert problem.value(problem.parameters(), (inputs, labels)) == pytest.approx(G.value,
                                                                                  abs=1e-14)
    with torch.no_grad():  # the fast path, outside hessfree: differs at the padded positions
        fast = model(*inputs)
    with differentiable_attention(), torch.no_grad():
        slow = model(*inputs)
    assert torch.allclose(fast[inputs[1] == 1], slow[inputs[1] == 1], atol=1e-10)


# -- unsupported kernels: one line ------------------------------------------------------------
class FlashOnly(nn.Module):
    """Calls PyTorch's CPU flash-attention kernel directly (first derivative only)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = SDPABlock()
        for unused in (self.inner.ln2, self.inner.mlp):  # not called below: frozen, since a
            unused.requires_grad_(False)  # trainable parameter the outputs ignore is refused

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.inner
        b, t = ids.shape
        x = m.emb(ids)
        q, k, v = m.qkv(m.ln1(x)).split(x.shape[-1], -1)
        q, k, v = (z.view(b, t, m.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[0]
        return m.head(m.ln_f(x + m.proj(a.transpose(1, 2).reshape(b, t, -1))))


class _OnceDifferentiable(torch.autograd.Function):
    """A stand-in for a flash-attention package's kernel: a backward that is not differentiable,
    no forward-mode rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class _NewStyleOnceDifferentiable(torch.autograd.Function):
    """The same kernel written for torch.func (``setup_context``), backward still not
    differentiable: the products' transform sees the cut only inside its own level."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class _OldStyleTanh(torch.autograd.Function):
    """An old-style Function (no ``setup_context``, which torch.func refuses) whose backward is
    differentiable: products run through it by plain autograd."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


@torch.library.custom_op("hessfree_tests::fused_tanh_backward", mutates_args=())
def _fused_tanh_backward(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return g * (1 - torch.tanh(x) ** 2)


@torch.library.custom_op("hessfree_tests::fused_tanh", mutates_args=())
def _fused_tanh(x: torch.Tensor) -> torch.Tensor:
    """A stand-in for a library's fused kernel: a registered first derivative whose own kernel
    (``fused_tanh_backward``) has none."""
    return torch.tanh(x)


_fused_tanh.register_autograd(
    lambda ctx, g: _fused_tanh_backward(g, ctx.saved_tensors[0]),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]))


class PackageKernel(nn.Module):
    """Embedding -> a kernel with a first derivative only -> linear head."""

    def __init__(self, kind: str = "function") -> None:
        super().__init__()
        self.kind = kind
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10)

    def forward(self, ids):
        h = self.emb(ids)
        kernel = {"function": _OnceDifferentiable.apply, "library": _fused_tanh,
                  "new-style": _NewStyleOnceDifferentiable.apply, "old-style": _OldStyleTanh.apply,
                  "tanh": torch.tanh}[self.kind]
        return self.head(kernel(h))


class LibraryKernel(PackageKernel):
    def __init__(self) -> None:
        super().__init__("library")


class NewStyleKernel(PackageKernel):
    def __init__(self) -> None:
        super().__init__("new-style")


@pytest.mark.parametrize("cls, backend, kernel", [
    (FlashOnly, "auto", "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    (FlashOnly, "forward", "_scaled_dot_product_flash_attention_for_cpu"),
    (PackageKernel, "auto", "a custom autograd.Function"),
    (PackageKernel, "forward", "a custom autograd.Function"),
    (LibraryKernel, "auto", "hessfree_tests.fused_tanh_backward.default"),
    (NewStyleKernel, "auto", "a custom autograd.Function"),
])
def test_a_kernel_without_the_needed_derivative_gets_one_line(cls, backend, kernel):
    model = cls().eval()  # float32: the CPU flash kernel takes float32
    ids = torch.randint(0, 10, (2, 6), generator=torch.Generator().manual_seed(0))
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    with pytest.raises(InputError) as info:
        G = hessfree.GGN(problem, (ids, ids), backend=backend)
        G @ torch.ones(G.dim)
    msg = str(info.value)
    assert "\n" not in msg and kernel in msg and "scaled_dot_product_attention" in msg, msg
    assert info.value.__cause__ is None  # no torch traceback chained to the line
    assert info.value.__context__ is None or info.value.__suppress_context__
    if cls is FlashOnly and backend == "auto":  # first derivatives are fine: gradients work
        value, grad = problem.value_and_grad(problem.parameters(), (ids, ids))
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("kind", ["old-style", "tanh"])
def test_products_run_through_a_differentiable_custom_function(kind):
    """torch.func refuses an old-style autograd.Function; the products take plain autograd
    there and equal the dense reference (and the plain-tanh model's, through torch.func)."""
    model = seeded(PackageKernel(kind), 3)
    ids = torch.randint(0, 10, (3, 6), generator=torch.Generator().manual_seed(1))
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    G = hessfree.GGN(problem, (ids, ids))
    F = hessfree.EmpiricalFisher(problem, (ids, ids), backend="double-backward")
    dense = Dense(module_logits(seeded(PackageKernel("tanh"), 3), ids), problem.parameters(),
                  ids, shift=True)
    V = _vectors(G.dim)
    assert rel(G.matmat(V), dense.ggn(V)) < TOL and rel(F.matmat(V), dense.fisher(V)) < TOL


def test_kernel_error_leaves_other_errors_alone():
    assert kernel_error(RuntimeError("shape mismatch")) is None
    assert kernel_error(ValueError("derivative for aten::x is not implemented")) is None
    err = kernel_error(RuntimeError("derivative for aten::foo_backward is not implemented"))
    assert isinstance(err, InputError) and "aten::foo_backward" in str(err)


def test_dropout_in_training_mode_is_refused_in_one_line():
    model = CausalLM()
    model.encoder.layers[0].dropout.p = 0.1  # training mode, a real dropout
    ids, labels, _ = token_batch(2, 0)
    problem = hessfree.Problem(model.double(), hessfree.TokenCrossEntropy(shift=True))
    with pytest.raises(InputError, match="model.eval()") as info:
        hessfree.GGN(problem, (ids, labels))
    assert "\n" not in str(info.value)


def readme_code(heading: str) -> str:
    """The first python block after ``heading`` in the README."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.search(re.escape(heading) + r"\n+```python\n(.*?)```", readme, re.S).group(1)


def test_the_readme_transformer_example_runs(capsys):
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(readme_code("### A transformer"), "README.md", "exec"), ns)
    value, count, norm = capsys.readouterr().out.split()
    labels = ns["labels"]
    assert int(count) == int(labels[:, 1:].ne(-100).sum()) == ns["G"].count
    with torch.no_grad():
        want = ref_loss(ns["model"](ns["ids"]), labels, shift=True)
    assert float(value) == pytest.approx(float(want), rel=1e-5) and float(norm) > 0
