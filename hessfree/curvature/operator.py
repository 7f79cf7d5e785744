"""Curvature operators: ``GGN``, ``Hessian``, ``EmpiricalFisher`` and the damped ``G + λI``.

An operator is built at the current parameters on a batch (or a list of minibatches). It runs the
forward pass once per chunk and caches what its products need (``cache=True``), so ``G @ v`` costs
one ``J v`` plus one ``Jᵀ u`` per chunk for the GGN. With ``cache=False`` nothing is kept between
products (each product redoes each chunk's forward pass): slower, but the memory of one chunk.
``backend="jvp", cache=False`` is the least memory for the GGN and the empirical Fisher: each
product is a forward pass with tangents and no graph, then one forward graph that its backward
pass frees, so no double-backward graph exists at any time and a product's peak is a gradient's
(on the GPT of ``benchmarks/bench_transformer.py``, the set-up and a product held 1.22x a
gradient's peak, against 2.0x cached).

Vectors are flat 1-D tensors of length ``G.dim``, or lists/dicts of tensors shaped like the
parameters; the answer comes back in the same form. The curvature includes ``weight_decay · I``
from the problem's L2 term (it is part of the objective's curvature, as in [HFDemo]).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.batches import Chunk, Chunks
from hessfree.curvature.accumulate import GRADIENT, VALUE, Sums
from hessfree.curvature.attention import translating_kernel_errors
from hessfree.curvature.blocks import ParamFilter, block_problem
from hessfree.curvature.diagonal import fisher_diagonal
from hessfree.curvature.precision import usable_backend
from hessfree.curvature.problem import Problem
from hessfree.curvature.products import (
    BACKENDS,
    ChunkProduct,
    fisher_chunk,
    ggn_chunk,
    hessian_chunk,
)
from hessfree.curvature.sequential import applies
from hessfree.curvature.solves import SolveResult, solve
from hessfree.errors import InputError, InputTypeError
from hessfree.linops import Combination, FlatOperator
from hessfree.vectors import ParamLayout, flat_vector

__all__ = ["CurvatureOperator", "GGN", "Hessian", "EmpiricalFisher", "DampedOperator",
           "resolve_backend"]

def resolve_backend(backend: str, problem: Problem, params: dict[str, Tensor],
                    chunks: list[Chunk], structural: bool = False, kind: str = "ggn") -> str:
    """Pick the ``J v`` backend.

    ``"auto"``: the analytic ``"sequential"`` backend where it applies (GGN and Fisher of an
    ``nn.Sequential`` MLP without structural damping); with structural damping ``"forward"``;
    else ``"double-backward"``. Measured on this project's 2-core CPU (``benchmarks/
    bench_products.py``, RESULTS.md): the cached double-backward GGN product costs about 1.1-1.2
    gradients and ``linearize``'s set-up about 9; the sequential backend is faster still. With
    structural damping (the RNN of the pathological tasks, T = 88, 1000 sequences) the
    double-backward product costs 9.6 gradients (the stacked hidden pre-activations cost T
    full-size zero fills in double backward) and the forward one 1.4, after a set-up of about 20
    gradients that one HF step's CG run repays. No GPU measurement exists yet.

    ``"jvp"`` is never chosen: it is the backend of least memory (the operator holds the
    forward graph only; each product runs the forward pass again with tangents), for models
    whose cached double-backward graphs do not fit — on a GPT
    (``benchmarks/bench_transformer.py``) the set-up and a product held 1.6 gradients' peak
    memory where double-backward held 2.0, for a product about 0.4 gradients dearer; with
    ``cache=False`` it holds no graph between products (1.2 gradients' peak; each product runs
    one forward pass more). ``cache=False`` does not change the choice.
    """
    if backend == "auto":
        if kind != "hessian" and not structural and applies(problem, params, chunks):
            chosen = "sequential"
        else:
            chosen = "forward" if structural and kind != "hessian" else "double-backward"
    elif backend not in BACKENDS:
        raise InputError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")
    else:
        chosen = backend
    if problem.precision is None:
        return chosen
    return usable_backend(problem.precision, chosen, backend == "auto", kind)


class CurvatureOperator(FlatOperator):
    """Base class: a symmetric curvature matrix at fixed parameters, applied by products.

    Args:
        problem: the :class:`~hessfree.Problem` (model, loss, weight decay).
        batch: ``(inputs, targets)`` or a list of such minibatches (accumulated exactly).
        params: ``{name: tensor}`` (or a list) at which to evaluate; ``None``: the module's
            trainable parameters. The operator keeps a copy: it stays the curvature at these
            values even after the live parameters change.
        backend: ``"auto"``, ``"double-backward"``, ``"forward"``, ``"jvp"`` or
            ``"sequential"`` (see :func:`resolve_backend`).
        cache: keep each chunk's graphs between products (fast) or recompute them (lean; with
            ``backend="jvp"`` a GGN or EF product holds no more than a gradient does).
        check: reject Dropout/BatchNorm in training mode and non-deterministic forward passes.
        param_filter: the block ``A[S, S]`` for the parameters ``S`` it chooses (a module name,
            a pattern of parameter names, a list, or a callable; :mod:`hessfree.curvature.
            blocks`), the others held at their values; products cost only what ``S`` needs.

    Passes over the batch: the set-up reads it once (objective, gradient and, with ``cache``,
    every chunk's graphs: memory grows with the cases); without ``cache`` every product reads it
    again (an iterable batch — a DataLoader — is iterated again, one pass per product, with the
    memory of one chunk; a pass that sees another number of cases is refused). With a process
    group (``Problem(group=)``) the operator is that of the batch joined over the ranks: the
    set-up and every product cost one all-reduce of one flat buffer.
    """

    #: short name of the matrix, used in messages and saved files
    kind = "curvature"
    #: μ of structural damping (a GGN's; 0 for every other matrix)
    structural_damping: float = 0.0

    def __init__(self, problem: Problem, batch: Any, params: Any = None,
                 backend: str = "auto", cache: bool = True, check: bool = True,
                 param_filter: ParamFilter | None = None) -> None:
        if not isinstance(problem, Problem):
            raise InputTypeError(
                f"problem: expected a hessfree.Problem, got {type(problem).__name__}")
        # a snapshot: the operator stays valid (and exact) after the live parameters move
        params = {n: p.detach().clone() for n, p in problem.resolve_params(params).items()}
        if param_filter is not None:  # the block: the other parameters frozen at their values
            if check:
                problem.check_modes()
            problem, params = block_problem(problem, params, param_filter)
        self.problem = problem
        if self.structural_damping > 0:
            problem.require_hidden("structural_damping")
        self.params = params
        self.layout = ParamLayout.from_params(self.params)
        self.cache = _checks.boolean(cache, "cache")
        self.batch = Chunks.of(batch)
        # held chunks are kept; an iterable is read again on every pass, never held
        self.chunks: list[Chunk] = list(self.batch.held or ())
        first = self.batch.first()
        self.backend = resolve_backend(backend, problem, self.params, self.chunks or [first],
                                       self.structural_damping > 0, self.kind)
        self.products = 0
        if check:
            problem.check_modes()
            problem.check_deterministic(self.params, first)
            problem.check_used(self.params, first)
        self._cached: list[ChunkProduct] = []
        self._setup()

    # -- construction -------------------------------------------------------------------------
    def _build(self, chunk: Chunk, scale: float, role: str = "cached") -> ChunkProduct:
        """The chunk's product for ``role`` "cached", "setup" or "product" (ggn_chunk)."""
        raise NotImplementedError

    @property
    def streamed(self) -> bool:
        """Whether the batch is an iterable read again on every pass (nothing held)."""
        return self.batch.streamed

    @translating_kernel_errors
    def _setup(self) -> None:
        """One pass: every chunk's product (cached), the objective and gradient on the batch."""
        local = 0

        def build(chunk: Chunk, scale: float) -> tuple[Tensor, Tensor]:
            nonlocal local
            cp = self._build(chunk, scale, "cached" if self.cache else "setup")
            local += chunk.n
            if self.cache:
                self._cached.append(cp)
            grad, cp.grad = cp.grad, None  # handed to the sums (no copy): products never read it
            return cp.value, grad

        # the flat parameters only where weight decay needs them (one more parameter vector)
        theta = (torch.cat([p.detach().reshape(-1) for p in self.params.values()])
                 if self.problem.accumulator.weight_decay else None)
        sums = self.problem.accumulator.sums(self.batch, build, (VALUE, GRADIENT), theta)
        self._local_cases = local
        self.setup: Sums = sums
        #: cases over every chunk and rank
        self.n_cases = sums.cases
        #: what the loss's mean divides by (cases; the tokens that count for a token loss)
        self.count = sums.count
        #: the factor each chunk's product was built with (the weight, or 1 when deferred)
        self.scale = sums.scale
        self.value: float = sums.parts[0]
        self.grad: Tensor = sums.parts[1]

    def _chunk_products(self) -> Any:
        if self.cache:
            return iter(self._cached)
        return self._rebuilt()

    def _rebuilt(self) -> Any:
        """Chunk products of a new pass (uncached), checking it sees the same cases."""
        seen = 0
        for c in self.batch:
            seen += c.n
            yield self._build(c, self.scale, "product")
        if seen != self._local_cases:
            raise InputError(f"batch: a pass over the batch gave {seen} cases, the operator was "
                             f"built on {self._local_cases}; an iterable batch must give the "
                             "same cases on every pass")

    def __repr__(self) -> str:
        chunks = "streamed" if self.streamed else len(self.chunks)
        return (f"{type(self).__name__}(dim={self.dim}, cases={self.n_cases}, "
                f"chunks={chunks}, backend={self.backend!r})")

    # -- products ------------------------------------------------------------------------------
    @translating_kernel_errors
    def _curvature(self, v: Tensor, structural: float = 0.0) -> Tensor:
        """The curvature (plus ``structural`` times the structural-damping term) times flat v."""
        parts = list(self.layout.split(v).values())
        return self.problem.accumulator.product(
            (cp.mv(parts, structural) for cp in self._chunk_products()), v,
            self.setup.weight_after)

    def _apply(self, v: Tensor) -> Tensor:
        return self._curvature(v)

    @translating_kernel_errors
    def _curvature_block(self, V: Tensor, structural: float = 0.0) -> Tensor:
        """:meth:`_curvature` of each column of ``V`` (``(dim, k)``), batched over the columns.

        Each chunk takes the ``k`` columns in one pass of its backend (one larger matrix
        product per layer instead of ``k``: :mod:`hessfree.curvature.sequential`; autograd's
        ``is_grads_batched`` or ``torch.func.vmap`` for the autodiff backends).
        """
        Vt = V.T  # (k, dim), a view: column j of V is row j
        k = Vt.shape[0]
        parts = [p.reshape((k,) + s) for p, s in
                 zip(torch.split(Vt, self.layout.sizes, 1), self.layout.shapes)]
        out = self.problem.accumulator.product(
            (cp.mm(parts, structural) for cp in self._chunk_products()), Vt,
            self.setup.weight_after)
        return out.T

    def _apply_block(self, V: Tensor) -> Tensor:
        return self._curvature_block(V)

    def with_structural(self, weight: float) -> FlatOperator:
        """The curvature plus ``weight`` times the structural-damping term, in one pass.

        Its products are counted by this operator. ``weight = 0``: the operator itself.
        """
        return _WithStructural(self, weight) if weight else self

    def damped(self, lam: float) -> DampedOperator:
        """The operator ``self + λI`` (Tikhonov damping, [M10 §4.1]; structural damping too)."""
        return DampedOperator(self, lam)

    def solve(self, B: Any, damping: Any = 0.0, **kwargs: Any) -> SolveResult:
        """``(self + λI)⁻¹ B`` by CG: see :func:`hessfree.curvature.solve`."""
        return solve(self, B, damping, **kwargs)


class _WithStructural(FlatOperator):
    """``G + w·S`` of a GGN built with structural damping: one pass per product ([M&S11])."""

    def __init__(self, base: CurvatureOperator, weight: float) -> None:
        self.base, self.weight, self.layout = base, weight, base.layout

    @property
    def products(self) -> int:  # type: ignore[override]
        """The base operator's counter: a product of this view is one of the base."""
        return self.base.products

    @products.setter
    def products(self, value: int) -> None:
        self.base.products = value

    def __repr__(self) -> str:
        return f"{self.base!r} + {self.weight:g}·S"

    def _apply(self, v: Tensor) -> Tensor:
        return self.base._curvature(v, self.weight)

    def _apply_block(self, V: Tensor) -> Tensor:
        return self.base._curvature_block(V, self.weight)


class GGN(CurvatureOperator):
    """Generalized Gauss-Newton matrix ``G = Jᵀ H_L J`` ([Sch02]; [M10 §4.2]).

    PSD for matching losses. ``structural_damping=μ > 0`` ([M&S11]) makes
    :meth:`damped` add ``μλ · J_aᵀ D J_a`` on the hidden pre-activations that the model returns
    from ``forward(inputs, return_hidden=True)``; ``G @ v`` itself stays undamped.
    """

    kind = "ggn"

    def __init__(self, problem: Problem, batch: Any, params: Any = None, backend: str = "auto",
                 cache: bool = True, check: bool = True, structural_damping: float = 0.0,
                 param_filter: ParamFilter | None = None) -> None:
        self.structural_damping = _checks.number(structural_damping, "structural_damping", 0.0)
        super().__init__(problem, batch, params, backend, cache, check, param_filter)

    def _build(self, chunk: Chunk, scale: float, role: str = "cached") -> ChunkProduct:
        return ggn_chunk(self.problem, self.params, chunk, scale, self.backend,
                         structural=self.structural_damping > 0, role=role)

    def structural_mv(self, v: Tensor) -> Tensor:
        """``J_aᵀ D J_a v`` alone (flat), the structural-damping matrix without μλ (2 products)."""
        if self.structural_damping <= 0:
            raise InputError("structural_damping: the operator was built without it (μ = 0)")
        v = flat_vector(v, "v", self.dim, self.dtype, self.device)
        return self.with_structural(1.0).apply(v) - self.apply(v)


class Hessian(CurvatureOperator):
    """Hessian of the objective; may be indefinite ([M10 §4.2]: prefer the GGN)."""

    kind = "hessian"

    def _build(self, chunk: Chunk, scale: float, role: str = "cached") -> ChunkProduct:
        return hessian_chunk(self.problem, self.params, chunk, scale, self.backend)


class EmpiricalFisher(CurvatureOperator):
    """Empirical Fisher ``s Σ_i ∇l_i ∇l_iᵀ`` (``s = 1/N`` for ``mean``) plus weight decay.

    Its diagonal (:meth:`diagonal`) is Martens' preconditioner statistic
    ([HFDemo: preconditioner]).
    """

    kind = "fisher"

    def _build(self, chunk: Chunk, scale: float, role: str = "cached") -> ChunkProduct:
        return fisher_chunk(self.problem, self.params, chunk, scale, self.backend,
                            role)

    def diagonal(self, chunk_size: int | None = None, method: str = "auto") -> Tensor:
        """Exact diagonal (flat), from per-case gradients: see :func:`fisher_diagonal`."""
        return fisher_diagonal(self.problem, self.params, self.batch, chunk_size, method)


class DampedOperator(Combination):
    """``A + λI`` (plus ``μλ S`` structural damping when ``A`` is a GGN built with ``μ > 0``).

    The combination ``A.with_structural(μλ) + λ·I`` (:class:`~hessfree.linops.Combination`):
    one product of ``A`` (counted by ``A``) and one ``axpy`` per product.

    Args:
        base: the undamped operator.
        lam: the damping λ >= 0.
    """

    def __init__(self, base: CurvatureOperator, lam: float) -> None:
        self.base = base
        self.lam = _checks.number(lam, "lam", 0.0)
        self.structural = base.structural_damping * self.lam
        super().__init__([(1.0, base.with_structural(self.structural)),
                          (self.lam, base.identity())])

    def __repr__(self) -> str:
        return f"DampedOperator({self.base!r}, lam={self.lam:g})"

    def solve(self, B: Any, damping: Any = 0.0, **kwargs: Any) -> SolveResult:
        """``(self + damping·I)⁻¹ B`` by CG: see :func:`hessfree.curvature.solve`."""
        return solve(self, B, damping, **kwargs)
