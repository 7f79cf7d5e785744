"""Diagonals of curvature operators: exact, Monte-Carlo, Gauss-Newton-Bartlett, Hutchinson.

:func:`diag` returns a :class:`DiagonalEstimate`: the diagonal (flat, in the operator's dtype,
weight decay included like the operator's products) with its standard error per entry.

======================  ==============  ===================================================
method                  operators       cost
======================  ==============  ===================================================
``"exact"``             GGN, EF         one per-case-gradient pass per output of a case
                                        (``D``); ``D`` gradients on the ``nn.Linear`` path
``"mc"``                GGN             one per-case-gradient pass per sample
``"gnb"``               GGN             one gradient per sample
``"hutchinson"``        any operator    one product per sample
======================  ==============  ===================================================

* **exact** ([Dan20 §3]'s exact GGN diagonal, by symmetric factors of ``H_L``): each case's
  output Hessian is ``H_i = Σ_k λ_ik v_ik v_ikᵀ``, so ``diag(Jᵀ H J) = Σ_i Σ_k λ_ik
  (J_iᵀ v_ik)²``; one seed per eigenvector (zero eigenvalues, e.g. softmax's constant
  direction, are skipped). Its standard error is 0. For the empirical Fisher: the per-case
  squared gradients (:func:`hessfree.curvature.diagonal.fisher_diagonal`).
* **mc** (the Monte-Carlo Fisher, [Mar20 §9]): for a matching loss the Fisher of the model's
  predictive distribution is the GGN; a label ``ỹ`` drawn from the model gives a loss gradient
  ``ẽ`` with ``E[ẽ ẽᵀ] = H_L``, so ``E[(J_iᵀ ẽ_i)²] = diag(J_iᵀ H_i J_i)``.
* **gnb** (Gauss-Newton-Bartlett, [Liu23 §2.3]): the sampled gradients of different cases are
  independent with mean 0 (Bartlett's identity), so ``E[(Σ_i J_iᵀ ẽ_i)²] = Σ_i
  diag(J_iᵀ H_i J_i)``: the square of one ordinary gradient on sampled labels (Sophia's
  estimator ``B · ĝ ⊙ ĝ`` for the mean loss). Cheapest per sample, noisiest.
* **hutchinson** ([BKS07]): ``E[z ⊙ A z] = diag(A)`` for Rademacher ``z``; the only estimator
  for the Hessian's diagonal, and it works on any operator (damped, filtered, quadratics).

Sums over cases run chunk by chunk over the operator's batch; with a process group
(``Problem(group=)``) the per-rank sums travel in one all-reduce (``exact``: one; ``mc`` and
``gnb``: one of ``samples × P`` numbers), and ``hutchinson`` uses the operator's products (ranks
must draw the same probes: give each the same ``generator`` seed). ``mc`` and ``gnb`` draw
labels per rank, so across ranks they are the same estimator, not the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hessfree import _checks
from hessfree.batches import Chunk
from hessfree.curvature.accumulate import DIAGONAL, PLAIN
from hessfree.curvature.diagonal import fisher_diagonal
from hessfree.curvature.jacobians import LinearTape, output_hessian_eig, weighted_sq
from hessfree.curvature.losses import MSE, BCEWithLogits, CrossEntropy, split_mask
from hessfree.curvature.sequence_loss import TokenCrossEntropy
from hessfree.errors import InputError, InputTypeError

__all__ = ["DEFAULT_SAMPLES", "METHODS", "DiagonalEstimate", "diag"]

METHODS = ("exact", "mc", "gnb", "hutchinson")
#: samples of the stochastic estimators when none are given
DEFAULT_SAMPLES = 32


@dataclass(frozen=True)
class DiagonalEstimate:
    """The diagonal of a curvature operator and its standard error.

    Attributes:
        value: the diagonal, flat, in the operator's dtype and device.
        stderr: per entry, ``std / sqrt(samples)`` over the samples (0 for ``"exact"``).
        method: how it was computed (:data:`METHODS`).
        samples: the samples drawn (1 for ``"exact"``).
        passes: backward passes spent (exact: one per seed and chunk; mc: one per sample and
            chunk, each a per-case-gradient pass; gnb: ordinary gradients), 0 for Hutchinson.
        products: curvature products spent (Hutchinson), else 0.
        group_samples: with ``groups``, each sample's sum of the diagonal over each group
            (``(samples, groups)``, float64, CPU): unbiased samples of the blocks' traces.
    """

    value: Tensor
    stderr: Tensor
    method: str
    samples: int
    passes: int
    products: int
    group_samples: Tensor | None = field(default=None, repr=False)

    def group_traces(self) -> tuple[Tensor, Tensor]:
        """Each group's trace and its standard error (float64, CPU), from ``group_samples``."""
        if self.group_samples is None:
            raise InputError("groups: this estimate was computed without groups")
        gs = self.group_samples
        if gs.shape[0] < 2:
            return gs.mean(0), torch.zeros(gs.shape[1], dtype=torch.float64)
        return gs.mean(0), gs.std(0) / math.sqrt(gs.shape[0])


class _Moments:
    """Running sums of per-sample diagonals (float64) and their sums over groups."""

    def __init__(self, dim: int, groups: Sequence[slice] | None, device: torch.device) -> None:
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sq = torch.zeros(dim, dtype=torch.float64, device=device)
        self.groups = groups
        self.rows: list[Tensor] = []
        self.n = 0

    def add(self, D: Tensor) -> None:
        """Add samples, the rows of ``D`` (``(s, dim)``)."""
        D = D.double()
        self.sum += D.sum(0)
        self.sq += D.square().sum(0)
        self.n += D.shape[0]
        if self.groups is not None:
            self.rows.append(torch.stack([D[:, g].sum(1) for g in self.groups], 1).cpu())

    def finish(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
        mean = self.sum / self.n
        var = (self.sq - self.n * mean.square()).clamp_min(0) / max(self.n - 1, 1)
        err = var.sqrt() / math.sqrt(self.n) if self.n > 1 else torch.zeros_like(mean)
        groups = torch.cat(self.rows) if self.rows else None
        return mean.to(dtype), err.to(dtype), groups


def _groups(groups: Any, dim: int) -> list[slice] | None:
    if groups is None:
        return None
    out = []
    for g in groups:
        if not (isinstance(g, slice) and isinstance(g.start, int) and isinstance(g.stop, int)
                and 0 <= g.start <= g.stop <= dim and g.step in (None, 1)):
            raise InputError(f"groups: expected slices of the flat vector within [0, {dim}), "
                             f"got {g!r}")
        out.append(g)
    return out


def diag(op: Any, method: str = "exact", *, samples: int | None = None,
         generator: torch.Generator | None = None, chunk_size: int | None = None,
         groups: Sequence[slice] | None = None, block: int = 8) -> DiagonalEstimate:
    """The diagonal of ``op`` by ``method`` (see the module docstring), with standard errors.

    Args:
        op: a ``GGN`` (any method), an ``EmpiricalFisher`` (``"exact"``, ``"hutchinson"``), a
            ``Hessian`` or any operator with ``matmat`` (``"hutchinson"``).
        method: ``"exact"``, ``"mc"``, ``"gnb"`` or ``"hutchinson"``.
        samples: samples of a stochastic method (>= 2; None: :data:`DEFAULT_SAMPLES`).
        generator: a ``torch.Generator`` for the labels or probes (None: torch's global one).
        chunk_size: cases per per-case-gradient slice (default: about 64 MiB of gradients).
        groups: slices of the flat vector (e.g. one per module) whose per-sample sums to keep.
        block: Hutchinson probes per block product.

    Returns:
        A :class:`DiagonalEstimate`.
    """
    method = _checks.choice(method, "method", METHODS)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator: expected a torch.Generator or None, got "
                             f"{type(generator).__name__}")
    if method == "exact":
        if samples is not None:
            raise InputError("samples: the exact diagonal draws no samples")
        return _exact(op, chunk_size, groups)
    samples = DEFAULT_SAMPLES if samples is None else _checks.integer(samples, "samples", 2)
    if method == "hutchinson":
        return _hutchinson(op, samples, generator, groups, _checks.integer(block, "block", 1))
    return _sampled(op, method, samples, generator, chunk_size, groups)


# -- what the GGN-specific methods need from the operator -------------------------------------
def _kind(op: Any) -> str:
    return getattr(op, "kind", "") if hasattr(op, "problem") and hasattr(op, "params") else ""


def _forward(op: Any, chunk: Chunk) -> tuple[Tensor, LinearTape | None]:
    tape = LinearTape.record(op.problem, op.params, chunk.inputs)
    if tape is not None:
        out = tape.out.detach()
    else:
        with torch.no_grad():
            out = op.problem.forward(op.params, chunk.inputs)
    return op.problem.check_outputs(out, chunk), tape


def _exact(op: Any, chunk_size: int | None, groups: Any) -> DiagonalEstimate:
    kind = _kind(op)
    if kind == "fisher":
        value = fisher_diagonal(op.problem, op.params, op.batch, chunk_size)
        passes = 1
    elif kind == "ggn":
        value, passes = _exact_ggn(op, chunk_size)
    else:
        raise InputError(f"method: 'exact' needs a GGN or an EmpiricalFisher, got "
                         f"{type(op).__name__}; use method='hutchinson' (any operator)")
    mom = _Moments(value.numel(), _groups(groups, value.numel()), value.device)
    mom.add(value[None])
    _, _, group_samples = mom.finish(value.dtype)
    return DiagonalEstimate(value, torch.zeros_like(value), "exact", 1, passes, 0,
                            group_samples)


def _exact_ggn(op: Any, chunk_size: int | None) -> tuple[Tensor, int]:
    problem, params = op.problem, op.params
    passes = 0

    def step(chunk: Chunk, scale: float, totals: list | None) -> list:
        nonlocal passes
        total = torch.zeros(op.dim, dtype=op.dtype, device=op.device) if totals is None \
            else totals[0]
        out, tape = _forward(op, chunk)
        lam, V = output_hessian_eig(problem.loss.prepare(out, chunk.targets, 1.0), out)
        top = float(lam.abs().max()) if lam.numel() else 0.0
        for k in range(V.shape[0]):
            if float(lam[:, k].abs().max()) <= 10 * torch.finfo(lam.dtype).eps * top:
                continue  # a null direction of every case's H_L (softmax's constant one)
            total += weighted_sq(problem, params, chunk.inputs, V[k], lam[:, k], tape,
                                 chunk_size)
            passes += 1
        return [total]

    # unscaled per-case terms: the weight of all the cases (and ranks) after the pass
    sums = problem.accumulator.fold(op.batch, step, (DIAGONAL,), deferred=True)
    return sums.parts[0], passes


# -- sampled labels: MC and Gauss-Newton-Bartlett ---------------------------------------------
def _draw(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    where = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=where).to(like.device)


def sampled_output_grads(loss: Any, out: Tensor, targets: Any,
                         generator: torch.Generator | None) -> Tensor:
    """``ẽ``: the loss gradient (per case, unscaled) at labels drawn from the model.

    ``E[ẽ_i ẽ_iᵀ] = H_i`` (the per-case output Hessian, masks and soft-target sums included)
    for the matching losses: squared error (``t ~ N(z, 1/2)``: ``H = 2I``), logistic
    (``t ~ Bernoulli(σ(z))``) and softmax cross-entropy (``y ~ Categorical(softmax(z))``).
    """
    values, mask = split_mask(targets)
    w = torch.ones((), dtype=out.dtype, device=out.device) if mask is None \
        else mask.unsqueeze(-1).to(out.dtype)
    where = generator.device if generator is not None else out.device
    if type(loss) is MSE:
        return math.sqrt(2.0) * _draw(tuple(out.shape), generator, out) * w.sqrt()
    if type(loss) is BCEWithLogits:
        p = torch.sigmoid(out)
        t = torch.bernoulli(p.to(where), generator=generator).to(out.device)
        return (p - t) * w.sqrt()
    if type(loss) is TokenCrossEntropy:  # y ~ softmax at the tokens that count
        p = torch.softmax(out, -1)
        flat = p.reshape(-1, p.shape[-1]).to(where)
        y = torch.multinomial(flat, 1, generator=generator).to(out.device)
        counts = loss.token_weights(targets).unsqueeze(-1).to(out.dtype)
        return (p - F.one_hot(y.reshape(p.shape[:-1]), p.shape[-1]).to(out.dtype)) * counts
    if type(loss) is CrossEntropy:
        p = torch.softmax(out, -1)
        flat = p.reshape(-1, p.shape[-1]).to(where)
        y = torch.multinomial(flat, 1, generator=generator).to(out.device)
        onehot = F.one_hot(y.reshape(p.shape[:-1]), p.shape[-1]).to(out.dtype)
        s = values.sum(-1, keepdim=True) if values.is_floating_point() else 1.0
        return (p - onehot) * (w * s).sqrt()
    raise InputError("method: 'mc' and 'gnb' draw labels from the model's predictive "
                     "distribution, which needs a matching loss (MSE, BCEWithLogits, "
                     "CrossEntropy, TokenCrossEntropy); use 'exact' or 'hutchinson'")


def _sampled(op: Any, method: str, samples: int, generator: torch.Generator | None,
             chunk_size: int | None, groups: Any) -> DiagonalEstimate:
    if _kind(op) != "ggn":
        raise InputError(f"method: {method!r} estimates a GGN's diagonal, got "
                         f"{type(op).__name__}; use method='hutchinson' (any operator)")
    problem, params = op.problem, op.params
    passes = 0

    def step(chunk: Chunk, scale: float, totals: list | None) -> list:
        nonlocal passes
        acc = torch.zeros(samples, op.dim, dtype=op.dtype, device=op.device) if totals is None \
            else totals[0]
        if method == "mc":
            out, tape = _forward(op, chunk)
            ones = out.new_ones(chunk.n)
            for s in range(samples):
                E = sampled_output_grads(problem.loss, out, chunk.targets, generator)
                acc[s] += weighted_sq(problem, params, chunk.inputs, E, ones, tape, chunk_size)
        else:
            acc += _gnb_chunk(op, chunk, samples, generator)
        passes += samples
        return [acc]

    acc_ = problem.accumulator
    if method == "gnb":  # the per-sample gradients are summed over every case, then squared
        sums = acc_.fold(op.batch, step, (PLAIN,), deferred=True)
        acc = acc_.decay(sums.parts[0].square() / sums.weight, DIAGONAL)
    else:
        acc = acc_.fold(op.batch, step, (DIAGONAL,), deferred=True).parts[0]
    mom = _Moments(op.dim, _groups(groups, op.dim), op.device)
    mom.add(acc)
    value, err, group_samples = mom.finish(op.dtype)
    return DiagonalEstimate(value, err, method, samples, passes, 0, group_samples)


def _gnb_chunk(op: Any, chunk: Chunk, samples: int, generator: torch.Generator | None
               ) -> Tensor:
    """``Σ_i J_iᵀ ẽ_i`` on one chunk for each sample, ``(samples, P)`` (one backward each)."""
    problem = op.problem
    leaves = {n: p.detach().requires_grad_(True) for n, p in op.params.items()}
    with torch.enable_grad():
        out = problem.check_outputs(problem.forward(leaves, chunk.inputs), chunk)
    rows = []
    for _ in range(samples):
        E = sampled_output_grads(problem.loss, out.detach(), chunk.targets, generator)
        gs = torch.autograd.grad(out, list(leaves.values()), E, retain_graph=True,
                                 allow_unused=True, materialize_grads=True)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


# -- Hutchinson on any operator -------------------------------------------------------------
def _hutchinson(op: Any, samples: int, generator: torch.Generator | None, groups: Any,
                block: int) -> DiagonalEstimate:
    mm = getattr(op, "matmat", None)
    if isinstance(op, Tensor):
        mm = op.__matmul__
    shape = getattr(op, "shape", None)
    if not callable(mm) or not (isinstance(shape, tuple) and len(shape) == 2):
        raise InputTypeError(f"op: expected an operator with matmat and a shape (n, n), got "
                             f"{type(op).__name__}")
    n, dtype, device = shape[0], op.dtype, op.device
    mom = _Moments(n, _groups(groups, n), device)
    done = 0
    where = generator.device if generator is not None else device
    while done < samples:
        b = min(block, samples - done)
        Z = torch.randint(0, 2, (n, b), generator=generator, device=where).to(device, dtype)
        Z = Z.mul_(2).sub_(1)
        mom.add((Z * mm(Z)).T)
        done += b
    value, err, group_samples = mom.finish(dtype)
    return DiagonalEstimate(value, err, "hutchinson", samples, 0, samples, group_samples)
