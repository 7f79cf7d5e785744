"""Curvature-vector products on one chunk of data: pure factories, no optimizer logic.

Each factory runs the forward pass once at the given parameters and returns a :class:`ChunkProduct`
holding the (scaled) loss, its gradient from the same pass, and ``mv(v, structural)`` — the
product of the chunk's curvature with a list of tensors shaped like the parameters.

Three backends compute the Jacobian-vector products ``J v`` (all tested against dense
matrices):

* ``"double-backward"`` (reverse-over-reverse): keep the forward graph and record the
  vector-Jacobian function ``g(w) = Jᵀ w`` once; since ``g`` is linear in ``w``,
  ``J v = d(g·v)/dw`` is one backward pass through that cached record. Seeding ``w`` with
  ``dL/dz`` makes ``g`` the loss gradient, so the set-up costs one forward and one backward
  pass. ``g`` is recorded one ``torch.func`` level above the forward pass, so it keeps no
  tensor that only derivatives in the activations would need (:class:`_DoubleBackwardJ`).
* ``"forward"`` (forward mode): ``torch.func.linearize`` traces the JVP once (expensive set-up,
  cheap products) and ``torch.func.vjp`` keeps the reverse graph for ``Jᵀ u``.
* ``"jvp"`` (forward mode, nothing traced): one ``torch.func.jvp`` per product (the forward
  pass again, with tangents) and ``torch.func.vjp``'s reverse graph; uncached, the graph too is
  recorded per product and freed by it (:class:`_RecomputedJ`): the least memory.
* ``"sequential"``: analytic R-operator passes for ``nn.Sequential`` stacks of ``Linear`` and
  elementwise units (:mod:`hessfree.curvature.sequential`), the fastest where it applies.

Block products (``ChunkProduct.mm``, behind ``op @ V`` for ``V`` of ``k`` columns) take the ``k``
columns in one pass where that is not slower: stacked R-operator passes (``sequential``),
``torch.func.vmap`` (``forward``), autograd's ``is_grads_batched`` (``double-backward``, off the
CPU only: see :func:`batched_backward`); else ``k`` single products.

The GGN product is ``Jᵀ (H_L (J v))`` with ``H_L`` in closed form ([HFDemo: matching losses];
[Sch02]); the empirical Fisher product is ``Σ_i s ∇l_i (∇l_iᵀ v)``, computed as
``Jᵀ (s e ⊙ ⟨e, J v⟩_case)`` without per-case gradients; the Hessian product differentiates the
gradient graph (reverse-over-reverse) or linearizes the gradient (forward-over-reverse).

Structural damping ([M&S11]; [HF-RNN]): when the model exposes hidden
pre-activations ``a`` (``forward(..., return_hidden=True) -> (outputs, a)``), the GGN factory can
add ``μλ · J_aᵀ D J_a`` with ``D`` the Hessian of the matching loss of the hidden nonlinearity
as [HF-RNN] writes it (tanh: ``¼(1 - tanh(a)²)``, see :func:`hidden_curvature`), scaled like the
loss, in the same backward pass as the GGN product.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from hessfree.batches import Chunk
from hessfree.curvature.attention import undifferentiable_backward
from hessfree.curvature.losses import MSE, BCEWithLogits, CrossEntropy, LossState
from hessfree.curvature.problem import Problem
from hessfree.curvature.sequential import SequentialJ, matrix_inputs, sequential_layers
from hessfree.errors import InputError

__all__ = [
    "BACKENDS",
    "ChunkProduct",
    "Linearization",
    "ggn_chunk",
    "fisher_chunk",
    "hessian_chunk",
    "hidden_curvature",
]

BACKENDS = ("double-backward", "forward", "jvp", "sequential")
Tensors = list[Tensor]


@dataclass
class ChunkProduct:
    """What one chunk contributes: loss, gradient, and its curvature-vector product.

    Attributes:
        value: the chunk's scaled loss (0-d tensor, no graph); None (as ``grad`` and ``state``)
            in the record of one uncached ``"jvp"`` product (``role="product"``).
        grad: the chunk's scaled loss gradient, flat.
        mv: ``(v, structural) -> curvature·v`` (flat) for ``v`` a list shaped like the
            parameters; ``structural`` is the weight of the structural-damping term (0: none).
        state: the loss state at the outputs (gradient and ``H_L``).
        mm: ``(V, structural) -> (k, dim)``, the product with ``k`` columns at once: ``V`` is
            a list shaped like the parameters with a leading dimension ``k``; row ``j`` of the
            result is ``mv`` of column ``j``.
    """

    value: Tensor
    grad: Tensor
    mv: Callable[[Tensors, float], Tensor]
    state: LossState
    mm: Callable[[Tensors, float], Tensor]


class Linearization(Protocol):
    """The backend contract: ``J`` of one chunk, as each ``J v`` backend provides it.

    Attributes:
        out: the chunk's outputs; ``hid``: its hidden pre-activations (structural damping) or
            None; ``state``: the loss state at ``out``; ``grad``: the chunk's flat gradient.
        batched: whether ``jvp_block``/``vjp_block`` take ``k`` columns at least as fast as ``k``
            single products (False: block products loop over the columns).
    """

    out: Tensor
    hid: Tensor | None
    state: LossState
    grad: Tensor
    batched: bool

    def jvp(self, v: Tensors, hidden: bool = False) -> Tensors:  # pragma: no cover
        """``[J_out v]`` (and ``J_hidden v`` when ``hidden``)."""
        ...

    def vjp(self, us: Tensors) -> Tensor:  # pragma: no cover
        """``Jᵀ u`` (flat)."""
        ...

    def jvp_block(self, v: Tensors, hidden: bool = False) -> Tensors:  # pragma: no cover
        """:meth:`jvp` for ``k`` columns stacked in front."""
        ...

    def vjp_block(self, us: Tensors) -> Tensor:  # pragma: no cover
        """:meth:`vjp` for ``k`` columns: ``(k, dim)``."""
        ...


def _leaves(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {n: p.detach().requires_grad_(True) for n, p in params.items()}


def _flat(ts: Tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _grad(outputs: Any, inputs: Tensors, grad_outputs: Any, **kw: Any) -> Tensors:
    return list(torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True,
                                    materialize_grads=True, **kw))


def _flat_block(ts: Tensors, k: int) -> Tensor:
    """``(k, dim)`` from tensors with a leading dimension ``k``."""
    return torch.cat([t.reshape(k, -1) for t in ts], 1)


def batched_backward(device: torch.device) -> bool:
    """Whether double-backward block products use ``is_grads_batched`` on ``device``.

    Not on the CPU: there the ``k`` single backward passes already run their matrix products at
    the rate of one large GEMM, and the batched passes were 5-18% slower on the quiet 2-core
    test machine (``benchmarks/results/spectral.md``); elsewhere (GPUs, where one product leaves
    the device mostly idle) the vectorised passes are used. Not measured on a GPU in this
    project.
    """
    return device.type != "cpu"


def _loop(mv: Callable[[Tensors, float], Tensor], v: Tensors, weight: float) -> Tensor:
    """The block product as ``k`` single products, stacked to ``(k, dim)``."""
    return torch.stack([mv([t[j] for t in v], weight) for j in range(v[0].shape[0])])


#: losses whose ``H_L u`` is elementwise along leading dimensions, so it takes ``k`` columns
#: stacked in front at once; any other loss gets one ``H_L u`` per column
_BROADCASTING_LOSSES = (MSE, BCEWithLogits, CrossEntropy)


def _hvp_block(problem: Problem, state: LossState, u: Tensor) -> Tensor:
    """``H_L`` applied to each of the ``k`` stacked ``u[j]`` (shaped like the outputs)."""
    if type(problem.loss) in _BROADCASTING_LOSSES:
        return state.hvp(u)
    return torch.stack([state.hvp(u[j]) for j in range(u.shape[0])])


def hidden_curvature(problem: Problem, hidden: Tensor, scale: float) -> Tensor:
    """``D``: the matching-loss Hessian of the hidden units at pre-activations ``hidden``.

    The nonlinearity is the model's ``hidden_nonlinearity`` attribute (default ``"tanh"``), with
    the factors of [HF-RNN]'s ``H_prod`` (``opt/utils/nonlin.py``): tanh
    ``¼(1 - tanh(a)²)``, logistic ``σ(a)(1 - σ(a))``, linear ``1`` ([M&S11]). The ¼ is the
    logistic unit's ``p(1 - p)`` for ``p = (1 + tanh a)/2``: a scale convention that μ = 0.03
    was tuned with, so it is kept (without it μ acts 4 times larger). Scaled like the loss
    (``1/N`` for ``mean``).
    """
    kind = getattr(problem.model, "hidden_nonlinearity", "tanh")
    a = hidden.detach()
    if kind == "tanh":
        d = 0.25 * (1 - torch.tanh(a).square())  # [HF-RNN] Tanh.H_prod
    elif kind == "logistic":
        s = torch.sigmoid(a)
        d = s * (1 - s)
    elif kind == "linear":
        d = torch.ones_like(a)
    else:
        raise InputError(
            f"model.hidden_nonlinearity: expected 'tanh', 'logistic' or 'linear', got {kind!r}"
        )
    return d * scale


def _split_outputs(problem: Problem, res: Any, chunk: Chunk, hidden: bool) -> tuple[Tensor, Any]:
    if hidden:
        if not (isinstance(res, tuple) and len(res) == 2):
            raise InputError(
                "model: structural damping needs forward(inputs, return_hidden=True) to return "
                "(outputs, hidden_preactivations)"
            )
        out, hid = res
    else:
        out, hid = res, None
    return problem.check_outputs(out, chunk), hid


#: torch.func's refusal of an ``autograd.Function`` without ``setup_context`` (old style)
_OLD_STYLE_FUNCTION = "must override the setup_context staticmethod"


class _FuncVJP:
    """The VJPs of a linearization held as a ``torch.func.vjp`` function of the named parameters.

    Shared by the double-backward and forward linearizations (they differ in the JVP only):
    ``self._vjp``, ``self.hid`` and ``self.names`` are set by the subclass.
    """

    _vjp: Any
    hid: Tensor | None
    names: list[str]

    def vjp(self, us: Tensors) -> Tensor:
        """``Jᵀ u`` (flat) for ``us = [u_out]`` or ``[u_out, u_hidden]``."""
        if self.hid is not None and len(us) == 1:
            us = [us[0], torch.zeros_like(self.hid)]
        (res,) = self._vjp(tuple(us))
        return _flat([res[n] for n in self.names])

    def vjp_block(self, us: Tensors) -> Tensor:
        """``Jᵀ U`` as ``(k, dim)`` for ``us`` with a leading dimension ``k``."""
        k = us[0].shape[0]
        if self.hid is not None and len(us) == 1:
            us = [us[0], self.hid.new_zeros((k,) + self.hid.shape)]
        (res,) = torch.func.vmap(lambda *u: self._vjp(u))(*us)
        return _flat_block([res[n] for n in self.names], k)


class _DoubleBackwardJ(_FuncVJP):
    """``J`` at one chunk by the double-backward trick, the forward's tensors held as constants.

    ``torch.func.vjp`` records the forward pass (``Jᵀ u`` is a backward through it), and a
    second ``torch.func.vjp`` records ``g(w) = Jᵀw`` as a function of the seed ``w`` alone:
    ``J v = d(g·v)/dw`` is one backward through that record, and ``g`` at ``w = dL/dz`` is the
    gradient. The second record sits one transform level above the first, so the forward's
    activations and parameters are constants in it: it keeps only what the derivative in ``w``
    needs. Recorded with plain autograd (:class:`_AutogradDoubleBackwardJ`), the same
    ``create_graph`` backward would also keep every incoming gradient its operations would need
    for derivatives in the activations and parameters, which no product takes: on the GPT of
    ``benchmarks/bench_transformer.py`` (10.7M parameters, 2048 tokens) the cached operator
    held 1008 MB that way and 610 MB this way, for bit-identical products. A model with an
    old-style ``autograd.Function`` (no ``setup_context``), which ``torch.func`` refuses, takes
    the plain-autograd path.
    """

    def __init__(self, problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
                 scale: float, hidden: bool) -> None:
        prim = {n: p.detach() for n, p in params.items()}
        self.names = list(prim)
        self.batched = batched_backward(next(iter(prim.values())).device)

        def f(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
            out, hid = _split_outputs(problem, problem.forward(p, chunk.inputs, hidden), chunk,
                                      hidden)
            return (out, hid) if hidden else (out,)

        with torch.enable_grad():
            outs, self._vjp = torch.func.vjp(f, prim)
        self.out = outs[0]
        self.hid = outs[1] if hidden else None
        self.state = problem.loss.prepare(self.out, chunk.targets, scale)
        seeds = (self.state.grad, *[torch.zeros_like(o) for o in outs[1:]])
        cut: list[InputError] = []

        def g(*w: Tensor) -> tuple[Tensor, ...]:
            (res,) = self._vjp(w)
            got = [res[n] for n in self.names]
            found = undifferentiable_backward(got, self.names, linear=True)
            if found is not None:  # looked at inside the transform, where the graph is seen
                cut.append(found)
            return tuple(got)

        with torch.enable_grad():
            grads, self._jvp = torch.func.vjp(g, *seeds)
        if cut:
            raise cut[0]
        self.grad = _flat(list(grads))

    def jvp(self, v: Tensors, hidden: bool = False) -> Tensors:
        """``[J_out v]`` (and ``J_hidden v`` when ``hidden``)."""
        res = self._jvp(tuple(v))
        return list(res) if hidden else [res[0]]

    # k columns: the same backward passes, vectorised over the columns by ``torch.func.vmap``
    def jvp_block(self, v: Tensors, hidden: bool = False) -> Tensors:
        """``[J_out V]`` (and ``J_hidden V``) for ``v`` with a leading dimension ``k``."""
        res = torch.func.vmap(lambda *vs: tuple(self._jvp(vs)))(*v)
        return list(res) if hidden else [res[0]]



class _AutogradDoubleBackwardJ:
    """``J`` at one chunk by the double-backward trick over cached plain-autograd graphs."""

    def __init__(self, problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
                 scale: float, hidden: bool) -> None:
        leaves = _leaves(params)
        self.plist = list(leaves.values())
        self.batched = batched_backward(self.plist[0].device)
        with torch.enable_grad():
            res = problem.forward(leaves, chunk.inputs, return_hidden=hidden)
            self.out, self.hid = _split_outputs(problem, res, chunk, hidden)
            self.state = problem.loss.prepare(self.out, chunk.targets, scale)
            # g(w) = Jᵀ w is linear in w; seeded with dL/dz it is the gradient.
            self.w = [self.state.grad.detach().requires_grad_(True)]  # an alias, no copy
            outs = [self.out]
            if hidden:
                self.w.append(torch.zeros_like(self.hid).requires_grad_(True))
                outs.append(self.hid)
            g = _grad(outs, self.plist, self.w, create_graph=True)
        cut = undifferentiable_backward(g, list(leaves), linear=True)
        if cut is not None:
            raise cut
        self.grad = _flat([t.detach() for t in g])
        self._live = [i for i, t in enumerate(g) if t.requires_grad]
        self._g = [g[i] for i in self._live]

    def jvp(self, v: Tensors, hidden: bool = False) -> Tensors:
        """``[J_out v]`` (and ``J_hidden v`` when ``hidden``)."""
        ws = self.w if hidden else self.w[:1]
        if not self._g:
            return [torch.zeros_like(w) for w in ws]
        return _grad(self._g, ws, [v[i] for i in self._live], retain_graph=True)

    def vjp(self, us: Tensors) -> Tensor:
        """``Jᵀ u`` (flat) for ``us = [u_out]`` or ``[u_out, u_hidden]``."""
        outs = [self.out, self.hid][: len(us)]
        return _flat(_grad(outs, self.plist, us, retain_graph=True))

    # k columns: the same backward passes, vectorised over the columns by autograd's
    # ``is_grads_batched`` (vmap over the backward graph: batched matrix products)
    def jvp_block(self, v: Tensors, hidden: bool = False) -> Tensors:
        """``[J_out V]`` (and ``J_hidden V``) for ``v`` with a leading dimension ``k``."""
        ws = self.w if hidden else self.w[:1]
        k = v[0].shape[0]
        if not self._g:
            return [w.new_zeros((k,) + w.shape) for w in ws]
        return _grad(self._g, ws, [v[i] for i in self._live], retain_graph=True,
                     is_grads_batched=True)

    def vjp_block(self, us: Tensors) -> Tensor:
        """``Jᵀ U`` as ``(k, dim)`` for ``us`` with a leading dimension ``k``."""
        outs = [self.out, self.hid][: len(us)]
        return _flat_block(_grad(outs, self.plist, us, retain_graph=True,
                                 is_grads_batched=True), us[0].shape[0])


def _mutates_constants(jvp_fn: Callable[..., Any]) -> bool:
    """Whether ``linearize``'s replayed graph updates one of its folded constants in place.

    ``torch.func.linearize`` precomputes the tangent-free part of the graph once; where the
    rest of the graph then applies an in-place operation to such a constant (torch 2.13 does,
    for the forward-over-reverse graph of a transformer: ``add_`` on a folded tensor), every
    product changes the constant and the next product is wrong (measured: a second call with
    the same tangent differed by 34 %). True also when the graph cannot be inspected.
    """
    cells = dict(zip(jvp_fn.__code__.co_freevars, jvp_fn.__closure__ or ()))
    cell = cells.get("const_folded_jvp_graph")
    graph = getattr(getattr(cell, "cell_contents", None), "graph", None)
    if graph is None:
        return True
    live: set[Any] = set()  # nodes that depend on the tangents
    for node in graph.nodes:
        if node.op == "placeholder" or any(a in live for a in node.all_input_nodes):
            live.add(node)
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            first = node.args[0] if node.args else None
            if isinstance(first, torch.fx.Node) and first not in live:
                return True
    return False


def _linearized(f: Callable[[Any], Any], prim: dict[str, Tensor]) -> tuple[Any, Any, bool]:
    """``(f(prim), t -> J_f t, vmappable)``: ``linearize``, or one ``torch.func.jvp`` per product.

    ``linearize`` traces ``f`` once (``make_fx``) and replays the tangent graph; ``vmap`` takes
    ``k`` tangents through the replay at once. Two cases get ``torch.func.jvp`` per product
    instead (a forward pass with tangents: slower, the same numbers), one tangent at a time:
    a model with Python control flow on values computed in its forward pass (Hugging Face's
    mask code asks whether the padding mask is all ones), which cannot be traced, and a traced
    graph that updates its own constants in place (:func:`_mutates_constants`).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # fx const-folding noise in linearize
            out, fn = torch.func.linearize(f, prim)
        if not _mutates_constants(fn):
            return out, fn, True
    except (RuntimeError, InputError) as err:
        if "tracing tensor" not in str(err) and "data-dependent" not in str(err):
            raise
    with torch.no_grad():
        out = f(prim)
    return out, per_product_jvp(f, prim), False


def per_product_jvp(f: Callable[[Any], Any], prim: dict[str, Tensor]) -> Callable[[Any], Any]:
    """``t -> J_f t`` by one ``torch.func.jvp`` per call: ``f`` again, with tangents.

    Nothing is stored between calls (the pass runs without autograd's graph): each product pays
    the forward pass once more, and holds only the activations and tangents of the layer
    being computed.
    """
    def jvp(t: Any) -> Any:
        with torch.no_grad():
            return torch.func.jvp(f, (prim,), (t,))[1]

    return jvp


class _RecomputedJ:
    """``J`` at one chunk with nothing held between products (the ``"jvp"`` backend, uncached).

    Each ``J v`` is one ``torch.func.jvp`` run without autograd (:func:`per_product_jvp`'s
    pass): no graph is recorded, and its primal output gives the loss state (``H_L``) of the
    product; each ``Jᵀ u`` records a fresh forward graph with ``torch.func.vjp`` and runs back
    through it once, so the graph is freed before the product returns. A product's peak is
    then a gradient's (the forward pass with graph, then the backward pass) and the forward
    pass with tangents comes before it, never beside it. Built by an uncached operator for its
    products only: ``state``, ``out`` and ``hid`` are those of the latest :meth:`jvp`, and there
    is no ``grad``. ``setup=True`` (the uncached operator's set-up pass): the loss state and
    gradient at construction, from one forward graph freed by the backward pass through it.
    """

    #: one column at a time (a block product loops over the columns)
    batched = False

    def __init__(self, problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
                 scale: float, hidden: bool, setup: bool = False) -> None:
        self.prim = {n: p.detach() for n, p in params.items()}
        self.names = list(self.prim)
        self._prepare = lambda out: problem.loss.prepare(out, chunk.targets, scale, False)
        self.state: Any = None
        self.out: Any = None
        self.hid: Tensor | None = None

        def f(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
            out, hid = _split_outputs(problem, problem.forward(p, chunk.inputs, hidden), chunk,
                                      hidden)
            return (out, hid) if hidden else (out,)

        self._f = f
        if setup:
            with torch.enable_grad():
                outs, back = torch.func.vjp(f, self.prim)
            self.out, self.hid = outs[0], (outs[1] if hidden else None)
            self.state = self._prepare(self.out)
            seeds = (self.state.grad, *[torch.zeros_like(o) for o in outs[1:]])
            (res,) = back(seeds, retain_graph=False)
            self.grad = _flat([res[n] for n in self.names])

    def jvp(self, v: Tensors, hidden: bool = False) -> Tensors:
        """``[J_out v]`` (and ``J_hidden v``); sets ``state``, ``out``, ``hid`` of this pass."""
        with torch.no_grad():
            outs, tangents = torch.func.jvp(self._f, (self.prim,), (dict(zip(self.names, v)),))
        self.out, self.hid = outs[0], (outs[1] if len(outs) > 1 else None)
        self.state = self._prepare(self.out)
        return list(tangents) if hidden else [tangents[0]]

    def vjp(self, us: Tensors) -> Tensor:
        """``Jᵀ u`` (flat) through a forward graph recorded for this call alone."""
        with torch.enable_grad():
            outs, back = torch.func.vjp(self._f, self.prim)
        us = list(us) + [torch.zeros_like(o) for o in outs[len(us):]]
        del outs
        (res,) = back(tuple(us), retain_graph=False)  # frees the graph as it goes
        return _flat([res[n] for n in self.names])


class _ForwardJ(_FuncVJP):
    """``J`` at one chunk by forward mode: ``torch.func.linearize`` and ``torch.func.vjp``.

    ``linearize=False`` (the ``"jvp"`` backend): no traced tangent graph; each ``J v`` is one
    ``torch.func.jvp`` (:func:`per_product_jvp`), and the operator holds only the forward
    graph that ``Jᵀ u`` runs back through — about a gradient's memory, for a product of about
    one forward pass more than the double-backward one.
    """

    #: ``torch.func.vmap`` over the columns
    batched = True

    def __init__(self, problem: Problem, params: Mapping[str, Tensor], chunk: Chunk,
                 scale: float, hidden: bool, linearize: bool = True) -> None:
        prim = {n: p.detach() for n, p in params.items()}
        self.names = list(prim)

        def f(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
            out, hid = _split_outputs(problem, problem.forward(p, chunk.inputs, hidden), chunk,
                                      hidden)
            return (out, hid) if hidden else (out,)

        if linearize:
            outs, self._jvp, self.batched = _linearized(f, prim)
            _, self._vjp = torch.func.vjp(f, prim)
        else:
            outs, self._vjp = torch.func.vjp(f, prim)
            self._jvp, self.batched = per_product_jvp(f, prim), False
        self.out = outs[0]
        self.hid = outs[1] if hidden else None
        self.state = problem.loss.prepare(self.out, chunk.targets, scale)
        zeros = [torch.zeros_like(o) for o in outs[1:]]
        self.grad = self.vjp([self.state.grad, *zeros])

    def jvp(self, v: Tensors, hidden: bool = False) -> Tensors:
        """``[J_out v]`` (and ``J_hidden v`` when ``hidden``)."""
        res = self._jvp(dict(zip(self.names, v)))
        return list(res) if hidden else [res[0]]

    # k columns: ``torch.func.vmap`` over the linearized JVP and the VJP function
    def jvp_block(self, v: Tensors, hidden: bool = False) -> Tensors:
        """``[J_out V]`` (and ``J_hidden V``) for ``v`` with a leading dimension ``k``."""
        res = torch.func.vmap(lambda *vs: tuple(self._jvp(dict(zip(self.names, vs)))))(*v)
        return list(res) if hidden else [res[0]]



def _linearize(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk, scale: float,
               backend: str, hidden: bool, role: str = "cached") -> Linearization:
    if backend == "sequential":
        layers = sequential_layers(problem, params)
        if layers is None or hidden or not matrix_inputs(chunk):
            raise InputError(
                "backend: 'sequential' needs an nn.Sequential of Linear and elementwise units "
                "(Sigmoid, Tanh, ReLU, Identity), all parameters trained, 2-D tensor inputs "
                "(cases × features) and no structural damping; use 'double-backward' or 'auto'"
            )
        return SequentialJ(problem, params, layers, chunk, scale)
    if backend == "double-backward":
        try:
            return _DoubleBackwardJ(problem, params, chunk, scale, hidden)
        except (RuntimeError, InputError) as err:  # Problem.forward words the model's errors
            if _OLD_STYLE_FUNCTION not in f"{err} {err.__cause__}":
                raise
        return _AutogradDoubleBackwardJ(problem, params, chunk, scale, hidden)
    if backend == "jvp" and role != "cached":
        return _RecomputedJ(problem, params, chunk, scale, hidden,  # type: ignore[return-value]
                            setup=role == "setup")
    if backend in ("forward", "jvp"):
        return _ForwardJ(problem, params, chunk, scale, hidden, linearize=backend == "forward")
    raise InputError(f"backend: expected one of {BACKENDS} or 'auto', got {backend!r}")


def ggn_chunk(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk, scale: float,
              backend: str = "double-backward", structural: bool = False,
              role: str = "cached") -> ChunkProduct:
    """Generalized Gauss-Newton ``Jᵀ H_L J`` on one chunk (plus the structural term if asked).

    ``role``: ``"cached"`` (kept for every product), ``"setup"`` (an uncached operator's set-up:
    value and gradient, then dropped) or ``"product"`` (one product of an uncached operator:
    ``mv``/``mm`` alone, ``value``, ``grad`` and ``state`` None). The ``"jvp"`` backend keeps
    nothing between products in the last two (:class:`_RecomputedJ`); the others ignore it.
    """
    lin = _linearize(problem, params, chunk, scale, backend, structural, role)
    lean = isinstance(lin, _RecomputedJ)
    d_hid = hidden_curvature(problem, lin.hid, scale) if structural and not lean else None

    def mv(v: Tensors, weight: float = 0.0) -> Tensor:
        if weight and structural:
            jv_out, jv_hid = lin.jvp(v, hidden=True)
            d = hidden_curvature(problem, lin.hid, scale) if lean else d_hid
            return lin.vjp([lin.state.hvp(jv_out), jv_hid * d * weight])
        (jv_out,) = lin.jvp(v)
        return lin.vjp([lin.state.hvp(jv_out)])

    def mm(v: Tensors, weight: float = 0.0) -> Tensor:
        if not lin.batched:
            return _loop(mv, v, weight)
        if weight and d_hid is not None:
            jv_out, jv_hid = lin.jvp_block(v, hidden=True)
            return lin.vjp_block([_hvp_block(problem, lin.state, jv_out),
                                  jv_hid * d_hid * weight])
        (jv_out,) = lin.jvp_block(v)
        return lin.vjp_block([_hvp_block(problem, lin.state, jv_out)])

    return _chunk_product(lin, role, mv, mm)


def _chunk_product(lin: Linearization, role: str, mv: Any, mm: Any) -> ChunkProduct:
    """The chunk's record; a product's alone (``role="product"``) has no value or grad."""
    if role == "product" and isinstance(lin, _RecomputedJ):
        return ChunkProduct(None, None, mv, None, mm)  # type: ignore[arg-type]
    grad, lin.grad = lin.grad, None  # the record's alone: the operator sums into it in place
    return ChunkProduct(lin.state.value, grad, mv, lin.state, mm)


def fisher_chunk(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk, scale: float,
                 backend: str = "double-backward", role: str = "cached") -> ChunkProduct:
    """Empirical Fisher ``s Σ_i ∇l_i ∇l_iᵀ`` on one chunk, as ``Jᵀ (s e ⊙ ⟨e, J v⟩_case)``.

    ``role``: as :func:`ggn_chunk`'s.
    """
    lin = _linearize(problem, params, chunk, scale, backend, False, role)

    def mv(v: Tensors, weight: float = 0.0) -> Tensor:
        (jv,) = lin.jvp(v)
        g = lin.state.grad  # = s · e (read after the J v pass: a lean one sets the state)
        n = g.shape[0]
        coef = (g * jv).reshape(n, -1).sum(1) / lin.state.scale  # s ⟨e, Jv⟩ per case
        return lin.vjp([g * coef.view((n,) + (1,) * (g.dim() - 1))])

    def mm(v: Tensors, weight: float = 0.0) -> Tensor:
        if not lin.batched:
            return _loop(mv, v, weight)
        (jv,) = lin.jvp_block(v)  # (k, N, ...)
        g = lin.state.grad
        k, n = jv.shape[0], g.shape[0]
        coef = (g * jv).reshape(k, n, -1).sum(2) / lin.state.scale
        return lin.vjp_block([g * coef.view((k, n) + (1,) * (g.dim() - 1))])

    return _chunk_product(lin, role, mv, mm)


def hessian_chunk(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk, scale: float,
                  backend: str = "double-backward") -> ChunkProduct:
    """Hessian of the chunk's scaled loss: reverse-over-reverse or forward-over-reverse."""
    if backend == "double-backward":
        value, g, mv, mm = _hessian_reverse(problem, params, chunk, scale)
    elif backend in ("forward", "jvp"):
        value, g, mv, mm = _hessian_forward(problem, params, chunk, scale,
                                            linearize=backend == "forward")
    else:
        raise InputError(
            f"backend: the Hessian supports 'double-backward', 'forward' and 'jvp', got "
            f"{backend!r}"
        )
    state = LossState(value.detach(), torch.empty(0), scale, lambda u: u)
    return ChunkProduct(value.detach(), _flat([t.detach() for t in g]), mv, state, mm)


def _hessian_reverse(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk, scale: float
                     ) -> tuple[Tensor, Tensors, Any, Any]:
    """Value, gradient and ``H v`` (``H V``) by differentiating the gradient's graph."""
    leaves = _leaves(params)
    plist = list(leaves.values())
    with torch.enable_grad():
        out = problem.check_outputs(problem.forward(leaves, chunk.inputs), chunk)
        value = problem.loss.value(out, chunk.targets, scale)
        g = _grad(value, plist, None, create_graph=True)
    cut = undifferentiable_backward(g, list(leaves), linear=False)
    if cut is not None:
        raise cut
    live = [i for i, t in enumerate(g) if t.requires_grad]

    def mv(v: Tensors, weight: float = 0.0) -> Tensor:
        if not live:
            return _flat([torch.zeros_like(p) for p in plist])
        return _flat(_grad([g[i] for i in live], plist, [v[i] for i in live],
                           retain_graph=True))

    batched = batched_backward(plist[0].device)

    def mm(v: Tensors, weight: float = 0.0) -> Tensor:
        k = v[0].shape[0]
        if not batched:
            return _loop(mv, v, weight)
        if not live:
            return plist[0].new_zeros(k, sum(p.numel() for p in plist))
        return _flat_block(_grad([g[i] for i in live], plist, [v[i] for i in live],
                                 retain_graph=True, is_grads_batched=True), k)

    return value, g, mv, mm


def _hessian_forward(problem: Problem, params: Mapping[str, Tensor], chunk: Chunk, scale: float,
                     linearize: bool = True) -> tuple[Tensor, Tensors, Any, Any]:
    """Value, gradient and ``H v`` (``H V``) by linearizing the gradient (forward mode).

    ``linearize=False`` (the ``"jvp"`` backend): one ``torch.func.jvp`` of the gradient per
    product (:func:`per_product_jvp`), nothing traced.
    """
    prim = {n: p.detach() for n, p in params.items()}
    names = list(prim)

    def loss_of(p: dict[str, Tensor], check: bool = False) -> Tensor:
        out = problem.check_outputs(problem.forward(p, chunk.inputs), chunk)
        return problem.loss.value(out, chunk.targets, scale, check)

    with torch.no_grad():
        value = loss_of(prim, check=True)
    gfun = torch.func.grad(loss_of)
    if linearize:
        gdict, hvp, batched = _linearized(gfun, prim)
    else:
        gdict, hvp, batched = gfun(prim), per_product_jvp(gfun, prim), False
    g = [gdict[n] for n in names]

    def mv(v: Tensors, weight: float = 0.0) -> Tensor:
        res = hvp(dict(zip(names, v)))
        return _flat([res[n] for n in names])

    def mm(v: Tensors, weight: float = 0.0) -> Tensor:
        if not batched:
            return _loop(mv, v, weight)
        res = torch.func.vmap(lambda *vs: hvp(dict(zip(names, vs))))(*v)
        return _flat_block([res[n] for n in names], v[0].shape[0])

    return value, g, mv, mm
