"""Spectra of curvature operators in torch: extreme eigenpairs, trace and spectral density.

* :func:`eigsh` — the ``k`` largest/smallest/... eigenpairs by Lanczos with full
  reorthogonalisation and Krylov-Schur (thick) restarts, optionally with a block of ``b``
  start vectors, so that each step is one ``op @ V`` with ``b`` columns;
* :func:`trace` — Hutchinson's estimator of ``tr(A)`` with its standard error;
* :func:`density` — the spectral density by stochastic Lanczos quadrature (SLQ).

They work on the package's operator base (:class:`hessfree.linops.FlatOperator`: the curvature
operators ``GGN``, ``Hessian``, ``EmpiricalFisher``, ``G.damped(λ)``, a
:class:`hessfree.Quadratic`, combinations) and on what :func:`hessfree.linops.as_operator` turns
into one: a dense symmetric tensor, or any object with ``matvec``/``matmat`` (or ``@``) and
``dim`` or ``shape`` (plus ``dtype``/``device``, else those of ``v0`` or torch's defaults). Bad
arguments raise :class:`~hessfree.errors.InputError` / ``InputTypeError`` naming them.
Everything runs in the operator's dtype and on its device; only the small projected matrices
(``ncv × ncv``) go to the CPU in float64. Products are counted by the operator
(``op.products``; a block of ``k`` columns counts ``k``).

This is the research use of [Yao20] (PyHessian): top eigenvalues, trace and density of the
curvature of a trained network, here on hessfree's exact products and their block path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.errors import InputError, InputTypeError
from hessfree.linops import FlatOperator, as_operator

__all__ = ["WHICH", "SpectralDensity", "TraceEstimate", "density", "eigsh", "trace"]

#: the parts of the spectrum :func:`eigsh` can return (scipy's names)
WHICH = ("LA", "SA", "LM", "SM", "BE")
DISTRIBUTIONS = ("rademacher", "gaussian")


# -- operators ------------------------------------------------------------------------------
def _operator(op: Any, like: Tensor | None) -> FlatOperator:
    """``op`` as a floating-point :class:`~hessfree.linops.FlatOperator` (dense: symmetric).

    What does not declare a dtype or device takes ``like``'s, else torch's defaults.
    """
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else torch.device("cpu")
    A = as_operator(op, None, dtype, device, name="op", symmetric=True)
    if not A.dtype.is_floating_point:
        raise InputError(f"op: expected a floating-point dtype, got {A.dtype}")
    return A


def _mm(A: FlatOperator, V: Tensor) -> Tensor:
    """``A V`` for ``V`` of shape ``(n, b)`` (one single product when ``b = 1``)."""
    if V.shape[1] == 1:
        return A.apply(V[:, 0].contiguous()).reshape(-1, 1)
    return A.apply_block(V)


def _random(shape: tuple[int, ...], distribution: str, generator: torch.Generator | None,
            dtype: torch.dtype, device: torch.device) -> Tensor:
    """Gaussian or Rademacher entries, drawn on the generator's device, then moved."""
    where = generator.device if generator is not None else device
    if distribution == "gaussian":
        z = torch.randn(shape, generator=generator, dtype=dtype, device=where)
    else:
        z = torch.randint(0, 2, shape, generator=generator, device=where).to(dtype).mul_(2).sub_(1)
    return z.to(device)


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator: expected a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    return generator


# -- eigsh ----------------------------------------------------------------------------------
def _select(theta: Tensor, which: str, count: int) -> Tensor:
    """Indices of the ``count`` wanted Ritz values (``theta`` ascending, float64 CPU)."""
    if which == "LA":
        return torch.arange(len(theta) - count, len(theta))
    if which == "SA":
        return torch.arange(count)
    if which in ("LM", "SM"):
        order = torch.argsort(theta.abs(), descending=which == "LM", stable=True)
        return order[:count]
    low = count // 2  # BE: half from each end, one more from the high end when count is odd
    return torch.cat([torch.arange(low), torch.arange(len(theta) - (count - low), len(theta))])


class _Krylov:
    """A Krylov basis and its projected matrix: ``A Q[:, :j] = Q[:, :j+b] H[:j+b, :j]``.

    The orthonormal basis is stored by rows, ``Qt = Qᵀ`` (``(m + b) × n``), so that projections
    read contiguous memory; ``H`` is float64 on the CPU.
    """

    def __init__(self, A: FlatOperator, m: int, b: int, generator: torch.Generator | None) -> None:
        self.A, self.m, self.b, self.gen = A, m, b, generator
        self.Qt = torch.zeros(m + b, A.dim, dtype=A.dtype, device=A.device)
        self.H = torch.zeros(m + b, m, dtype=torch.float64)
        self.eps = torch.finfo(A.dtype).eps
        self.anorm = 0.0  # running estimate of ||A|| (largest ||A q|| seen)
        self.breakdowns = 0  # exact breakdowns (invariant Krylov spaces) after the start

    def _project_out(self, Wt: Tensor, nq: int, C: Tensor) -> Tensor:
        """Full reorthogonalisation of the rows of ``Wt`` against ``Qt[:nq]`` (adds to ``C``).

        One classical Gram-Schmidt pass, and a second when the first removed more than
        ``1 − 1/√2`` of a row's norm (the DGKS test; "twice is enough") [GVL13 §10.3].
        """
        Q = self.Qt[:nq]
        for _ in range(2):
            before = torch.linalg.vector_norm(Wt, dim=1)
            c = Q @ Wt.T  # (nq, b)
            Wt = Wt - c.T @ Q
            C += c.double().cpu()
            if bool((torch.linalg.vector_norm(Wt, dim=1) >= 0.7071 * before).all()):
                break
        return Wt

    def _orthonormalize(self, Wt: Tensor, nq: int) -> tuple[Tensor, Tensor]:
        """Orthonormalise the rows of ``Wt`` (``b × n``) against ``Qt[:nq]`` and each other.

        Returns the coefficients ``C`` on ``Qt[:nq]`` and ``R`` (upper triangular, ``b × b``)
        with ``W = Q[:, :nq] C + Q[:, nq:nq+b] R``; the new rows are written into ``Qt``. The
        Lanczos recurrence (the last ``2b`` vectors) is removed first, then the whole basis
        (:meth:`_project_out`). A row that vanishes (the Krylov space is invariant: an exact
        breakdown) gets coupling 0 and is replaced by a random direction orthogonal to the
        basis, so the search goes on.
        """
        b = Wt.shape[0]
        wnorm = torch.linalg.vector_norm(Wt, dim=1)
        C = torch.zeros(nq, b, dtype=torch.float64)
        lo = max(0, nq - 2 * b)
        if nq:
            local = self.Qt[lo:nq]
            c = local @ Wt.T
            Wt = Wt - c.T @ local
            C[lo:] += c.double().cpu()
            Wt = self._project_out(Wt, nq, C)
        R = torch.zeros(b, b, dtype=torch.float64)
        tiny = 10 * math.sqrt(self.A.dim) * self.eps
        for i in range(b):
            w = Wt[i]
            new = self.Qt[nq:nq + i]
            if i:
                for _ in range(2):
                    c = new @ w
                    w = w - c @ new
                    R[:i, i] += c.double().cpu()
            r = float(torch.linalg.vector_norm(w))
            if r > tiny * max(self.anorm, float(wnorm[i])):
                self.Qt[nq + i] = w / r
                R[i, i] = r
            else:  # breakdown: coupling 0, continue with a fresh direction
                self.Qt[nq + i] = self._fresh(nq + i)
                self.breakdowns += nq > 0
        return C, R

    def _fresh(self, nq: int) -> Tensor:
        """A random unit vector orthogonal to ``Qt[:nq]``, or zero when none is left."""
        A = self.A
        z = _random((1, A.dim), "gaussian", self.gen, A.dtype, A.device)
        z0 = float(torch.linalg.vector_norm(z))
        Q = self.Qt[:nq]
        for _ in range(2):
            z = z - (Q @ z.T).T @ Q
        r = float(torch.linalg.vector_norm(z))
        if r <= math.sqrt(self.eps) * z0:  # the basis spans everything
            return torch.zeros_like(z[0])
        return z[0] / r

    def start(self, V0: Tensor) -> None:
        """Orthonormal start block from ``V0`` (``n × b``)."""
        self._orthonormalize(V0.T, 0)

    def expand(self, j: int) -> None:
        """Column block ``j:j+b``: one ``A @ Q[:, j:j+b]`` and its orthogonalisation."""
        b = self.b
        W = _mm(self.A, self.Qt[j:j + b].T)
        if W.shape != (self.A.dim, b):
            raise InputError(f"op: A @ V gave shape {tuple(W.shape)}, expected {(self.A.dim, b)}")
        Wt = W.T
        self.anorm = max(self.anorm, float(torch.linalg.vector_norm(Wt, dim=1).max()))
        C, R = self._orthonormalize(Wt, j + b)
        self.H[:j + b, j:j + b] = C
        self.H[j + b:j + 2 * b, j:j + b] = R

    def ritz(self, j: int) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (ascending) and vectors of ``H[:j, :j]``, residual norms ``||Ay − θy||``."""
        T = self.H[:j, :j]
        theta, S = torch.linalg.eigh(0.5 * (T + T.T))
        res = torch.linalg.vector_norm(self.H[j:j + self.b, :j] @ S, dim=0)
        return theta, S, res

    def vectors(self, S: Tensor, j: int) -> Tensor:
        """``Q[:, :j] S`` as a contiguous ``n × s`` tensor (Ritz vectors)."""
        return (S.T.to(self.A.dtype).to(self.A.device) @ self.Qt[:j]).T.contiguous()

    def restart(self, S: Tensor, keep: Tensor, theta: Tensor) -> int:
        """Keep the Ritz vectors ``keep`` and the residual block (Krylov-Schur [Ste01])."""
        m, b = self.m, self.b
        p = len(keep)
        Sk = S[:, keep]
        Y = Sk.T.to(self.A.dtype).to(self.A.device) @ self.Qt[:m]
        self.Qt[p:p + b] = self.Qt[m:m + b]  # p + b <= m: no overlap
        self.Qt[:p] = Y
        self.Qt[p + b:] = 0
        coupling = self.H[m:m + b, :m] @ Sk
        self.H.zero_()
        self.H[:p, :p] = torch.diag(theta[keep])
        self.H[p:p + b, :p] = coupling
        return p


def eigsh(op: Any, k: int = 6, which: str = "LA", *, tol: float | None = None,
          ncv: int | None = None, maxiter: int | None = None, v0: Tensor | None = None,
          generator: torch.Generator | None = None, block: int | None = None,
          return_eigenvectors: bool = True) -> Tensor | tuple[Tensor, Tensor]:
    """``k`` eigenpairs of a symmetric operator by Lanczos (scipy's ``eigsh`` in torch).

    (Over 60 lines for this documentation of scipy's arguments; the steps are in ``_Krylov``.)

    Lanczos with full reorthogonalisation (classical Gram-Schmidt, twice; [GVL13 §10.1,
    §10.3]), restarted by Krylov-Schur, the thick restart of the symmetric case [Ste01; WS00]:
    the basis grows to ``ncv`` vectors; if the wanted Ritz pairs have not converged, the
    ``p ≈ (ncv + k)/2`` best Ritz vectors and the residual block are kept and the basis grows
    again. ``block = b > 1`` runs block Lanczos from ``b`` start vectors: each step is one
    ``op @ V`` with ``b`` columns (one batched pass on hessfree's operators, cheaper than
    ``b`` products) and it finds eigenvalues of multiplicity up to ``b``; single-vector
    Lanczos (``b = 1``) finds one copy of a multiple eigenvalue.

    An exact breakdown (the Krylov space is invariant, e.g. a matrix with few distinct
    eigenvalues) is continued from a random direction orthogonal to the basis; from then on the
    Ritz pairs are checked only when the basis is full.

    Cost in products: ``ncv`` for the first basis (fewer when it converges earlier — the Ritz
    pairs are checked after every step once the basis has more than ``k`` vectors), then
    ``ncv − p`` per restart; plus ``O(n · ncv)`` vector work per step for the
    reorthogonalisation, and ``(ncv + b) · n`` numbers of memory in the operator's dtype.

    Args:
        op: the operator (see the module docstring).
        k: how many eigenpairs, ``1 <= k < n``.
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest, ``"LM"``/``"SM"`` largest/smallest
            magnitude, ``"BE"`` both ends (``k // 2`` smallest and the rest largest).
        tol: a Ritz pair ``(θ, y)`` has converged when ``||A y − θ y|| <= tol·|θ|`` ([ARPACK]'s
            test; floored at ``eps·||A||``), so eigenvalues are accurate to about ``tol·|θ|``
            (often far better: the error is ``O(residual² / gap)``). None: ``sqrt(eps)`` of the
            dtype (1.5e-8 in float64, 3.5e-4 in float32).
        ncv: basis size (``k + b <= ncv <= n``, rounded down to a multiple of ``b``); None:
            ``max(20, 2k + 1, k + 2b, 6b)`` rounded up to a multiple of ``b``, at most ``n`` (a
            block needs a few steps of depth between restarts).
        maxiter: the most restarts (None: 1000); :class:`RuntimeError` beyond it.
        v0: start vector (``n``) or block (``n × b``); None: Gaussian from ``generator``.
        generator: a ``torch.Generator`` for the random start (and for fresh directions after
            an exact breakdown); None: torch's global generator.
        block: the block size ``b`` (None: 1).
        return_eigenvectors: also return the eigenvectors.

    Returns:
        The eigenvalues in ascending order (like scipy), a tensor of the operator's dtype on its
        device; with ``return_eigenvectors``, ``(values, vectors)`` with the unit eigenvectors
        as the columns of an ``n × k`` tensor.

    Raises:
        ValueError: a bad argument (the message names it).
        RuntimeError: not converged within ``maxiter`` restarts.
    """
    generator = _check_generator(generator)
    if v0 is not None and not isinstance(v0, Tensor):
        raise InputTypeError(f"v0: expected a tensor, got {type(v0).__name__}")
    A = _operator(op, v0)
    n = A.dim
    which = _checks.choice(which, "which", WHICH)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise InputError(f"k: expected an integer with 1 <= k < n = {n} (for the whole spectrum "
                         f"use torch.linalg.eigvalsh on a dense matrix), got {k!r}")
    b = 1 if block is None else _checks.integer(block, "block", 1, n - k)
    m = _basis_size(ncv, n, k, b)
    eps = torch.finfo(A.dtype).eps
    tol = math.sqrt(eps) if tol is None else max(_checks.number(tol, "tol", 0.0), eps)
    maxiter = 1000 if maxiter is None else _checks.integer(maxiter, "maxiter", 0)
    _checks.boolean(return_eigenvectors, "return_eigenvectors")
    K = _Krylov(A, m, b, generator)
    K.start(_start_block(v0, A, b, generator))
    # keep about half of the room for the wanted pairs and their neighbours
    steps = max(1, min((m - (k + (m - k) // 2) + b - 1) // b, (m - k) // b))
    p = m - steps * b
    j, restarts = 0, 0
    while True:
        while j < m:
            K.expand(j)
            j += b
            # after an exact breakdown the copies of multiple eigenvalues come one per fresh
            # direction: then only a full basis is checked
            if j > k and (j == m or not K.breakdowns):
                theta, S, res = K.ritz(j)
                want = _select(theta, which, k)
                floor = eps * max(K.anorm, float(theta.abs().max()))
                open_ = res[want] > torch.clamp(tol * theta[want].abs(), min=floor)
                if not bool(open_.any()):
                    return _result(K, theta, S, want, j, return_eigenvectors)
        if restarts >= maxiter:
            raise RuntimeError(f"eigsh: {int(open_.sum())} of {k} Ritz pairs not converged after "
                               f"{maxiter} restarts; raise maxiter, ncv or tol")
        restarts += 1
        j = K.restart(S, _select(theta, which, p), theta)


def _basis_size(ncv: int | None, n: int, k: int, b: int) -> int:
    """The Krylov basis size: a multiple of ``b`` in ``[k + b, n]`` (see :func:`eigsh`)."""
    if ncv is None:
        m = min(n, -(-max(20, 2 * k + 1, k + 2 * b, 6 * b) // b) * b)
    else:
        m = _checks.integer(ncv, "ncv", k + b, n)
    m -= m % b
    if m < k + b:
        raise InputError(f"ncv: need a multiple of block = {b} with k + block <= ncv <= n = {n}, "
                         f"got {ncv!r}")
    return m


def _start_block(v0: Tensor | None, A: FlatOperator, b: int,
                 generator: torch.Generator | None) -> Tensor:
    """``b`` start vectors: ``v0`` (checked), completed by Gaussian ones from ``generator``."""
    n = A.dim
    if v0 is None:
        return _random((n, b), "gaussian", generator, A.dtype, A.device)
    if v0.shape not in ((n,), (n, b)):
        raise InputError(f"v0: expected shape ({n},) or ({n}, {b}), got {tuple(v0.shape)}")
    if v0.dtype != A.dtype or v0.device != A.device:
        raise InputError(f"v0: expected dtype {A.dtype} on {A.device}, got {v0.dtype} on "
                         f"{v0.device}")
    if not bool(torch.isfinite(v0).all()) or not bool(v0.abs().sum(0).gt(0).all()):
        raise InputError("v0: expected finite, nonzero start vectors")
    V0 = v0.detach().reshape(n, -1).clone()
    if V0.shape[1] < b:
        extra = _random((n, b - V0.shape[1]), "gaussian", generator, A.dtype, A.device)
        V0 = torch.cat([V0, extra], 1)
    return V0


def _result(K: _Krylov, theta: Tensor, S: Tensor, want: Tensor, j: int,
            vectors: bool) -> Tensor | tuple[Tensor, Tensor]:
    order = want[torch.argsort(theta[want], stable=True)]
    values = theta[order].to(K.A.dtype).to(K.A.device)
    if not vectors:
        return values
    return values, K.vectors(S[:, order], j)


# -- trace ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of ``tr(A)``.

    Attributes:
        estimate: the mean of ``zᵀAz`` over the probes.
        stderr: its standard error, ``std(zᵀAz) / sqrt(samples)`` (sample standard deviation).
        samples: number of probes ``z`` (= products spent).
        distribution: ``"rademacher"`` or ``"gaussian"``.
        values: each probe's ``zᵀAz`` (float64, CPU).
    """

    estimate: float
    stderr: float
    samples: int
    distribution: str
    values: Tensor = field(repr=False, compare=False)

    def __float__(self) -> float:
        return self.estimate


def trace(op: Any, samples: int = 100, *, generator: torch.Generator | None = None,
          distribution: str = "rademacher", block: int | None = None) -> TraceEstimate:
    """``tr(A)`` by Hutchinson's estimator, with its standard error [Hut89; Yao20].

    ``E[zᵀAz] = tr(A)`` for probes with independent entries of mean 0 and variance 1;
    Rademacher entries (±1) give the smallest variance, ``2 Σ_{i≠j} A_ij²``, Gaussian ones
    ``2 ||A||_F²`` [Hut89]. The probes go through ``op @ Z`` in blocks of ``block`` columns.

    Args:
        op: the operator (see the module docstring).
        samples: number of probes (>= 2, for the standard error); one product each.
        generator: a ``torch.Generator`` (None: torch's global generator).
        distribution: ``"rademacher"`` or ``"gaussian"``.
        block: probes per ``op @ Z`` (None: ``min(samples, 8)``; memory ``2·block·n``).

    Returns:
        A :class:`TraceEstimate`.
    """
    generator = _check_generator(generator)
    A = _operator(op, None)
    samples = _checks.integer(samples, "samples", 2)
    distribution = _checks.choice(distribution, "distribution", DISTRIBUTIONS)
    block = min(samples, 8) if block is None else _checks.integer(block, "block", 1)
    values = []
    done = 0
    while done < samples:
        cols = min(block, samples - done)
        Z = _random((A.dim, cols), distribution, generator, A.dtype, A.device)
        AZ = _mm(A, Z)
        values.append((Z.double() * AZ.double()).sum(0).cpu())
        done += cols
    vals = torch.cat(values)
    return TraceEstimate(float(vals.mean()), float(vals.std() / math.sqrt(samples)), samples,
                         distribution, vals)


# -- density --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SpectralDensity:
    """A spectral density estimated by stochastic Lanczos quadrature.

    Attributes:
        grid: the points ``t`` (float64, CPU).
        density: ``φ(t) = (1/n_v) Σ_l Σ_i τ_li N(t; θ_li, σ²)``, which integrates to 1.
        nodes: ``θ_li``, the Ritz values of probe ``l`` (``num_probes × num_steps``).
        weights: ``τ_li``, the squared first components of the Ritz vectors; each row sums to
            1. A probe whose Krylov space became invariant after ``s < num_steps`` steps (an
            exact breakdown: then its ``s`` nodes are exact) has nodes and weights 0 after ``s``.
        steps: the Lanczos steps of each probe (``num_probes``).
        sigma: the width of the Gaussians.
    """

    grid: Tensor = field(repr=False)
    density: Tensor = field(repr=False)
    nodes: Tensor = field(repr=False)
    weights: Tensor = field(repr=False)
    steps: Tensor = field(repr=False)
    sigma: float

    def mass(self, low: float, high: float) -> float:
        """The quadrature's mass of ``[low, high]``: the summed weights of the nodes in it / n_v.

        An estimate of the fraction of eigenvalues in the interval (no broadening involved).
        """
        inside = (self.nodes >= low) & (self.nodes <= high) & (self.weights > 0)
        return float((self.weights * inside).sum() / self.nodes.shape[0])


def _lanczos_probes(A: FlatOperator, Z: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lanczos with full reorthogonalisation from each column of ``Z`` (all in one block).

    Returns ``alpha`` and ``beta`` (``P × steps``, float64 CPU; ``beta[:, i]`` couples vectors
    ``i`` and ``i + 1``) and the number of steps of each probe before an exact breakdown.
    """
    P = Z.shape[1]
    Q = torch.zeros(P, steps, A.dim, dtype=A.dtype, device=A.device)
    alpha = torch.zeros(P, steps, dtype=torch.float64)
    beta = torch.zeros(P, steps, dtype=torch.float64)
    done = torch.full((P,), steps, dtype=torch.int64)
    v = (Z / torch.linalg.vector_norm(Z, dim=0)).T.contiguous()  # (P, n)
    eps = torch.finfo(A.dtype).eps
    anorm = torch.zeros(P, dtype=torch.float64)
    for i in range(steps):
        Q[:, i] = v
        w = _mm(A, v.T).T  # (P, n)
        anorm = torch.maximum(anorm, torch.linalg.vector_norm(w, dim=1).double().cpu())
        a = (w * v).sum(1)
        alpha[:, i] = a.double().cpu()
        basis = Q[:, :i + 1]
        for _ in range(2):  # full reorthogonalisation, twice [GVL13 §10.3]
            c = torch.linalg.vecdot(basis, w.unsqueeze(1))  # (P, i + 1)
            w = w - (c.unsqueeze(1) @ basis).squeeze(1)
        r = torch.linalg.vector_norm(w, dim=1).double().cpu()
        if i + 1 == steps:
            break
        live = done == steps
        broke = live & (r <= 10 * math.sqrt(A.dim) * eps * anorm)
        done[broke] = i + 1
        keep = (done == steps).to(A.dtype).to(A.device)
        beta[:, i] = torch.where(done == steps, r, torch.zeros_like(r))
        v = w / r.clamp_min(1e-300).to(A.dtype).to(A.device).unsqueeze(1) * keep.unsqueeze(1)
    return alpha, beta, done


def density(op: Any, num_probes: int = 8, num_steps: int = 64, *,
            grid: int | Tensor = 1000, sigma: float | None = None,
            generator: torch.Generator | None = None, distribution: str = "rademacher",
            block: int | None = None) -> SpectralDensity:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature [UCS17; Yao20].

    (Over 60 lines for this documentation; the Lanczos runs are in ``_lanczos_probes``.)

    For each probe ``v`` (random, unit norm), ``num_steps`` Lanczos steps give a tridiagonal
    ``T`` with eigenvalues ``θ_i`` and eigenvectors ``u_i``; ``Σ_i τ_i f(θ_i)``, ``τ_i = u_i[0]²``,
    is the Gauss quadrature of ``vᵀ f(A) v`` (exact for polynomials of degree ``< 2·num_steps``),
    and ``vᵀ f(A) v`` estimates ``tr f(A) / n`` [GVL13 §10.2]. With ``f`` a Gaussian of width
    ``σ`` this is a smoothed density of the eigenvalues, averaged over the probes [UCS17; LSY16].
    Lanczos runs with full reorthogonalisation (as in PyHessian [Yao20] and the Hessian densities
    of [GKX19]), all probes of a block in one ``op @ V`` per step.

    Args:
        op: the operator (see the module docstring).
        num_probes: number of random probes (one product per probe and step).
        num_steps: Lanczos steps per probe (``1 <= num_steps <= n``).
        grid: the points at which to evaluate the density: a 1-D tensor, or a number of points
            spread evenly over ``[min θ − 5σ, max θ + 5σ]``.
        sigma: the Gaussians' standard deviation; None: 1% of ``max θ − min θ`` (1 if zero).
        generator: a ``torch.Generator`` (None: torch's global generator).
        distribution: the probes' entries, ``"rademacher"`` or ``"gaussian"`` (then normalised).
        block: probes per block (None: all); memory ``block · num_steps · n`` numbers.

    Returns:
        A :class:`SpectralDensity` (grid, density, the raw nodes and weights).
    """
    generator = _check_generator(generator)
    A = _operator(op, None)
    num_probes = _checks.integer(num_probes, "num_probes", 1)
    num_steps = _checks.integer(num_steps, "num_steps", 1, A.dim)
    distribution = _checks.choice(distribution, "distribution", DISTRIBUTIONS)
    block = num_probes if block is None else _checks.integer(block, "block", 1)
    if isinstance(grid, Tensor):
        if grid.dim() != 1 or grid.numel() < 2 or not grid.is_floating_point():
            raise InputError(f"grid: expected a 1-D floating-point tensor of >= 2 points, got "
                             f"shape {tuple(grid.shape)} and dtype {grid.dtype}")
    else:
        _checks.integer(grid, "grid", 2)
    if sigma is not None:
        sigma = _checks.number(sigma, "sigma", 0.0, strict_min=True)

    nodes = torch.zeros(num_probes, num_steps, dtype=torch.float64)
    weights = torch.zeros(num_probes, num_steps, dtype=torch.float64)
    steps = torch.zeros(num_probes, dtype=torch.int64)
    for start in range(0, num_probes, block):
        cols = min(block, num_probes - start)
        Z = _random((A.dim, cols), distribution, generator, A.dtype, A.device)
        alpha, beta, done = _lanczos_probes(A, Z, num_steps)
        for i in range(cols):
            s = int(done[i])
            T = torch.diag(alpha[i, :s]) + torch.diag(beta[i, :s - 1], 1) \
                + torch.diag(beta[i, :s - 1], -1)
            theta, U = torch.linalg.eigh(T)
            nodes[start + i, :s] = theta
            weights[start + i, :s] = U[0].square()
            steps[start + i] = s
    valid = weights > 0
    lo, hi = float(nodes[valid].min()), float(nodes[valid].max())
    if sigma is None:
        spread = hi - lo
        sigma = 0.01 * spread if spread > 0 else (0.01 * abs(hi) if hi else 1.0)
    if isinstance(grid, Tensor):
        t = grid.detach().to("cpu", torch.float64)
    else:
        t = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid, dtype=torch.float64)
    gauss = torch.exp(-0.5 * ((t[:, None] - nodes[valid][None, :]) / sigma).square())
    phi = gauss @ weights[valid] / (num_probes * sigma * math.sqrt(2 * math.pi))
    return SpectralDensity(t, phi, nodes, weights, steps, float(sigma))
