"""``HessianFree``: Martens' (2010) Hessian-free optimizer, one outer step at a time.

One step (``docs/architecture.md``, "One HF step"; [M10 §4]):

1. loss and gradient ``g`` on the gradient batch (:meth:`HessianFree._gradient`);
2. the curvature operator (GGN, or Hessian) on the curvature batch, one forward pass, cached;
3. the diagonal preconditioner ``(diag EF + λ)^0.75`` ([M10 §4.7]);
4. CG on ``(G + λI) p = −g`` from ``ζ`` times the previous CG solution (the last iterate, not the
   backtracked one, as in HFDemo), Martens' stopping rule, stored iterates ([M10 §4.4-4.5]);
5. CG-backtracking over the stored iterates ([M10 §4.6]) on the gradient batch (HFDemo), the
   curvature batch or a held-out batch ([HF-RNN]);
6. ρ = (f(θ+p) − f(θ)) / (q(p) − q(0)) on the curvature batch and the Levenberg-Marquardt rule
   ([M10 §4.1]);
7. the step size: Armijo line search on the gradient batch, HF-RNN's first-decrease search, or a
   fixed learning rate (:mod:`hessfree.hf.stepsize`);
8. the parameters move in place — or, when anything is non-finite or the loss went up, the step
   is rejected: parameters stay bit-identical and λ is raised (a step the search rejects: λ
   follows ρ, as in HFDemo and HF-RNN, unless ``boost_on_reject``).

The settings of a step come from the current :class:`~hessfree.hf.phases.Phase` of the
optimizer's :class:`~hessfree.hf.phases.PhaseSchedule` (one phase unless given), which the
optimizer advances by its own counters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from hessfree import cg
from hessfree._checks import is_finite
from hessfree.batches import iter_chunks, take
from hessfree.curvature import GGN, Hessian, Problem
from hessfree.curvature.diagonal import fisher_diagonal
from hessfree.curvature.sequential import value_grad_diagonal
from hessfree.errors import InputError, InputTypeError
from hessfree.hf.backtrack import Backtracked, cg_backtrack
from hessfree.hf.config import HFConfig
from hessfree.hf.damping import lm_update, reduction_ratio
from hessfree.hf.phases import Phase, PhaseSchedule
from hessfree.hf.precondition import inverse_preconditioner
from hessfree.hf.stats import ACCEPTED, StepStats
from hessfree.hf.stepsize import (
    LINE_SEARCH_FAILED,
    LOSS_INCREASED,
    StepSize,
    first_decrease,
    fixed_rate,
    line_search,
)
from hessfree.quadratic.core import Quadratic
from hessfree.schedules import value_at
from hessfree.vectors import ParamLayout

__all__ = ["HessianFree", "STATE_VERSION"]

#: version of :meth:`HessianFree.state_dict`; ``load_state_dict`` reads 1 and 2
STATE_VERSION = 2


@dataclass
class _StepRecord:
    """What one step has found so far; frozen into :class:`StepStats` at the end.

    Defaults are the values of a step that stopped before reaching a field.
    """

    step: int
    phase: int
    lambda_before: float
    cg_decay: float
    loss_before: float = math.nan
    loss_after: float = math.nan
    curv_loss_before: float = math.nan
    curv_loss_after: float = math.nan
    rho: float = math.nan
    model_change: float = math.nan
    cg_iters: int = 0
    cg_reason: str = ""
    backtrack_iter: int = -1
    backtrack_evals: int = 0
    step_size: float = 0.0
    ls_evals: int = 0
    grad_norm: float = math.nan
    step_norm: float = 0.0
    check_loss_before: float = math.nan
    check_loss_after: float = math.nan
    check_model_change: float = math.nan
    gradients: int = 0
    forwards: int = 0
    products: int = 0
    grad_cases: int = 0
    forward_cases: int = 0
    product_cases: int = 0
    seconds_gradient: float = 0.0
    seconds_precond: float = 0.0
    seconds_setup: float = 0.0
    seconds_cg: float = 0.0
    seconds_products: float = 0.0
    seconds_backtrack: float = 0.0
    seconds_linesearch: float = 0.0

    def gradient(self, cases: int) -> None:
        """Count a gradient evaluation (or its equivalent) over ``cases`` cases."""
        self.gradients += 1
        self.grad_cases += cases

    def forward(self, cases: int) -> None:
        """Count an objective evaluation over ``cases`` cases."""
        self.forwards += 1
        self.forward_cases += cases

    def product(self, cases: int, seconds: float) -> None:
        """Count a curvature product over ``cases`` cases and its time."""
        self.products += 1
        self.product_cases += cases
        self.seconds_products += seconds

    def freeze(self, reason: str, lambda_after: float, seconds: float) -> StepStats:
        """The :class:`StepStats` of the step (a rejected step has step size and norm 0)."""
        accepted = reason == ACCEPTED
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if not accepted:
            values["step_size"] = values["step_norm"] = 0.0
        return StepStats(accepted=accepted, reason=reason, lambda_after=lambda_after,
                         seconds=seconds, **values)


class _CountedOperator:
    """The damped operator CG uses, counting and timing its products in the step record."""

    def __init__(self, op: Any, record: _StepRecord, cases: int) -> None:
        self.op, self.record, self.cases = op, record, cases
        self.shape = op.shape

    def __matmul__(self, v: Tensor) -> Tensor:
        t0 = time.perf_counter()
        out = self.op.matvec(v)
        self.record.product(self.cases, time.perf_counter() - t0)
        return out


class _Timer:
    """``with _Timer(record, "seconds_cg"):`` adds the block's wall time to that field."""

    def __init__(self, record: _StepRecord, name: str) -> None:
        self.record, self.name = record, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        setattr(self.record, self.name,
                getattr(self.record, self.name) + time.perf_counter() - self.t0)


@dataclass
class _Model:
    """The local model of a step: curvature operator, objective and gradient at θ."""

    G: GGN | Hessian
    f0: float
    g: Tensor
    diag: Tensor | None
    n_grad: int
    n_curv: int
    same: bool


class HessianFree:
    """Martens' Hessian-free optimizer (2010), with the momentum-like variant as a preset.

    Args:
        problem: the :class:`~hessfree.Problem` (model, matching loss, weight decay).
        params: the tensors to optimise, updated in place (``None``: the module's trainable
            parameters, so the user's ``nn.Module`` sees the new values).
        config: an :class:`HFConfig` (default: Martens 2010); the config of every phase that
            does not set its own.
        phases: a :class:`~hessfree.hf.phases.PhaseSchedule` (or a list of phases); default:
            one unbounded phase with ``config``.
    """

    def __init__(self, problem: Problem, params: Any = None, config: HFConfig | None = None,
                 phases: PhaseSchedule | list[Phase] | tuple[Phase, ...] | None = None
                 ) -> None:
        if not isinstance(problem, Problem):
            raise InputTypeError(
                f"problem: expected a hessfree.Problem, got {type(problem).__name__}")
        config = HFConfig() if config is None else config
        if not isinstance(config, HFConfig):
            raise InputTypeError(f"config: expected an HFConfig, got {type(config).__name__}")
        if phases is None:
            phases = PhaseSchedule.single()
        elif isinstance(phases, (list, tuple)):
            phases = PhaseSchedule(tuple(phases))
        elif not isinstance(phases, PhaseSchedule):
            raise InputTypeError(f"phases: expected a PhaseSchedule or a list of Phase, got "
                                 f"{type(phases).__name__}")
        self.problem = problem
        self.base_config = config
        self.schedule = phases
        self.params = problem.resolve_params(params)
        self.layout = ParamLayout.from_params(self.params)
        self.lam = float(self._config_of(0).initial_lambda)
        self.t = 0
        self.cg_total = 0
        self._phase = (0, 0, 0)  # (index, steps done in it, CG iterations done in it)
        self._objectives: dict[int, Problem] = {}
        #: the last CG solution (not the backtracked step): ζ times it starts the next CG
        self.last_solution = torch.zeros(self.layout.numel, dtype=self.layout.dtype,
                                         device=self.layout.device)
        self._solution_before = self.last_solution
        self.history: list[StepStats] = []
        #: why no further step can make progress (None while steps can): the gradient is
        #: exactly zero, or a step that would raise λ past ``lambda_max``
        self.stop_reason: str | None = None
        #: a :func:`time.perf_counter` value by which each step should end (a caller's
        #: wall-clock budget, e.g. ``hessfree train --seconds``), or None: CG then stops early
        #: (reason ``"deadline"``) to leave the time :meth:`_after_cg` expects the rest needs
        self.deadline: float | None = None

    # -- phases --------------------------------------------------------------------------------
    def _config_of(self, index: int) -> HFConfig:
        return self.schedule[index].config or self.base_config

    @property
    def phase_index(self) -> int:
        """Index of the phase the next step runs in (advancing past finished phases)."""
        index, steps, cg_steps = self._phase
        while index + 1 < len(self.schedule) and self.schedule[index].done(steps, cg_steps):
            index, steps, cg_steps = index + 1, 0, 0
        self._phase = (index, steps, cg_steps)
        return index

    @property
    def phase(self) -> Phase:
        """The phase the next step runs in: its batches, config and objective."""
        return self.schedule[self.phase_index]

    @property
    def config(self) -> HFConfig:
        """The HFConfig of the next step (the current phase's)."""
        return self._config_of(self.phase_index)

    @property
    def objective(self) -> Problem:
        """The problem whose objective the next step minimises (the phase's weight decay)."""
        index = self.phase_index
        wd = self.schedule[index].weight_decay
        if wd is None or wd == self.problem.weight_decay:
            return self.problem
        if index not in self._objectives:
            self._objectives[index] = self.problem.with_weight_decay(wd)
        return self._objectives[index]

    # -- helpers ------------------------------------------------------------------------------
    def _theta(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    def _at(self, theta: dict[str, Tensor], step: Tensor, alpha: float = 1.0
            ) -> dict[str, Tensor]:
        parts = self.layout.split(step)
        return {n: theta[n].add(parts[n], alpha=alpha) for n in theta}

    def _value(self, theta: dict[str, Tensor], batch: Any, record: _StepRecord, cases: int,
               step: Tensor, alpha: float = 1.0) -> float:
        record.forward(cases)
        return self.objective.value(self._at(theta, step, alpha), batch)

    def _operator(self, theta: dict[str, Tensor], batch: Any) -> GGN | Hessian:
        cfg = self.config
        if cfg.curvature == "hessian":
            return Hessian(self.objective, batch, params=theta, backend=cfg.backend
                           if cfg.backend != "sequential" else "auto")
        return GGN(self.objective, batch, params=theta, backend=cfg.backend,
                   structural_damping=cfg.structural_damping)

    def _check_outputs(self, theta: dict[str, Tensor], grad_batch: Any, curv_batch: Any
                       ) -> None:
        """The two batches must give the same number of output units (one-case probes)."""
        units = []
        with torch.no_grad():
            for name, batch in (("grad_batch", grad_batch), ("curvature_batch", curv_batch)):
                c = next(iter_chunks(batch, name))
                units.append(self.objective.forward(theta, take(c.inputs, slice(0, 1)))
                             .shape[-1])
        if units[0] != units[1]:
            raise InputError(f"curvature_batch: the model gives {units[1]} output units on it but "
                             f"{units[0]} on grad_batch")

    def _local_model(self, theta: dict[str, Tensor], grad_batch: Any, curvature_batch: Any,
                     record: _StepRecord) -> _Model:
        """Steps 1-2: the curvature operator and the objective and gradient at θ."""
        same = curvature_batch is None
        curv_batch = grad_batch if same else curvature_batch
        if not same:
            self._check_outputs(theta, grad_batch, curv_batch)
        with _Timer(record, "seconds_setup"):
            G = self._operator(theta, curv_batch)
        n_curv = G.n_cases  # over all ranks
        record.gradient(n_curv)
        if same:
            return _Model(G, G.value, G.grad, None, n_curv, n_curv, True)
        f0, g, diag, n_grad = self._gradient(theta, grad_batch, record)
        return _Model(G, f0, g, diag, n_grad, n_curv, False)

    def quadratic(self, grad_batch: Any, curvature_batch: Any = None) -> Quadratic:
        """The quadratic ``q(p) = gᵀp + ½ pᵀ(G + λI)p`` the next step would solve by CG.

        Built exactly as :meth:`step` builds it (current parameters, λ, phase config, curvature
        and backend, structural damping, objective); it costs a gradient and an operator set-up.
        """
        record = _StepRecord(self.t, self.phase_index, self.lam, 0.0)
        model = self._local_model(self._theta(), grad_batch, curvature_batch, record)
        return Quadratic(model.G, model.g, self.lam)

    # -- the step -----------------------------------------------------------------------------
    def step(self, grad_batch: Any, curvature_batch: Any = None,
             on_quadratic: Callable[[Quadratic], None] | None = None,
             check_batch: Any = None, backtrack_batch: Any = None,
             search_batch: Any = None) -> StepStats:
        """One outer HF iteration; updates the parameters in place and returns its record.

        Args:
            grad_batch: ``(inputs, targets)`` or a list of minibatches, for the loss, the
                gradient and the line search (Martens: the full training set).
            curvature_batch: the same form, for the curvature products and CG-backtracking
                (Martens: 1/4 of CURVES); ``None``: the gradient batch.
            on_quadratic: called with the step's :class:`~hessfree.Quadratic` (the one
                :meth:`quadratic` would give) before CG runs, e.g. to save it.
            check_batch: a batch the step was not fitted to, on which ρ and ``reject_worse``
                measure the step instead of the curvature batch (one gradient and one
                objective evaluation; ρ compares with the quadratic model built with this
                batch's gradient, :meth:`_check`); None: as HFDemo, on the curvature batch.
            backtrack_batch: the held-out batch of CG-backtracking when the config says
                ``backtrack_batch="heldout"`` ([HF-RNN] ``BT_batches``); else unused.
            search_batch: the batch of the step-size search when the config says
                ``ls_batch="heldout"`` ([HF-RNN] ``line_search_batches``); else unused.
        """
        t_start = time.perf_counter()
        cfg, theta = self.config, self._theta()
        _needs("backtrack_batch", "backtrack_batch",
               cfg.backtrack_batch == "heldout" and cfg.backtracking, backtrack_batch)
        _needs("search_batch", "ls_batch", cfg.ls_batch == "heldout" and cfg.line_search,
               search_batch)
        self._solution_before = self.last_solution
        record = _StepRecord(self.t, self.phase_index, self.lam,
                             float(value_at(cfg.cg_decay, self.t)))
        m = self._local_model(theta, grad_batch, curvature_batch, record)
        curv_batch = grad_batch if m.same else curvature_batch
        record.loss_before, record.curv_loss_before = m.f0, m.G.value
        record.grad_norm = float(m.g.norm())
        if not (is_finite(m.f0) and is_finite(m.g)):
            return self._finish(record, t_start, "non-finite gradient")
        if not (is_finite(m.G.value) and is_finite(m.G.grad)):
            return self._finish(record, t_start, "non-finite curvature")
        if on_quadratic is not None:
            on_quadratic(Quadratic(m.G, m.g, self.lam))
        on_grad = cfg.precond_batch == "gradient"
        M = self._preconditioner(theta, grad_batch if on_grad else curv_batch,
                                 m.n_grad if on_grad else m.n_curv, record, m.diag)
        res = self._cg(m.G, m.g, M, record, m.n_curv)
        with _Timer(record, "seconds_backtrack"):
            bt_batch, n_bt, on_curv = self._backtrack_batch(theta, m, grad_batch, curv_batch,
                                                            backtrack_batch, record)
            bt, last_value = self._backtrack(theta, res, bt_batch, n_bt, record)
        record.backtrack_iter, record.backtrack_evals = bt.iteration, bt.evaluations
        p_rho = bt.step if cfg.rho_after_backtracking else res.x
        # ρ on the curvature batch: HFDemo ll_chunk, [HF-RNN] RHO_batches
        if on_curv and cfg.rho_after_backtracking:
            f_rho = bt.value
        elif on_curv and not math.isnan(last_value):
            f_rho = last_value
        else:
            f_rho = self._value(theta, curv_batch, record, m.n_curv, p_rho)
        record.curv_loss_after = f_rho if p_rho is bt.step else (bt.value if on_curv
                                                                 else math.nan)
        f_ref = m.G.value
        record.model_change, Bp = self._model_change(m.G, m.g, p_rho, record, m.n_curv)
        check = None
        model_change = record.model_change
        if check_batch is not None:
            check = self._check(theta, check_batch, p_rho, Bp, record)
            f_rho, f_ref = record.check_loss_after, record.check_loss_before
            model_change = record.check_model_change
        record.rho = reduction_ratio(f_rho, f_ref, model_change)
        if not (is_finite(bt.step) and is_finite(bt.value)):
            return self._finish(record, t_start, "non-finite step")
        with _Timer(record, "seconds_linesearch"):
            size = self._step_size(theta, bt, m, grad_batch, curv_batch, record, check,
                                   p_rho is bt.step, search_batch)
        record.loss_after, record.step_size = size.value, size.alpha
        record.ls_evals = size.evaluations
        if size.rejection is None:
            with torch.no_grad():
                for n, d in self.layout.split(bt.step).items():
                    self.params[n].add_(d, alpha=size.alpha)
            record.step_norm = abs(size.alpha) * float(bt.step.norm())
        return self._finish(record, t_start, size.rejection or ACCEPTED)

    def _gradient(self, theta: dict[str, Tensor], batch: Any, record: _StepRecord
                  ) -> tuple[float, Tensor, Tensor | None, int]:
        """Objective and gradient on the gradient batch (and the diagonal EF when fused).

        With the preconditioner on the gradient batch and a model the analytic backend serves,
        the diagonal comes from the same pass, as HFDemo computes ``grad2``.
        """
        with _Timer(record, "seconds_gradient"):
            fused = None
            if self.config.preconditioner and self.config.precond_batch == "gradient":
                fused = value_grad_diagonal(self.objective, theta, batch)
            if fused is None:
                f0, g = self.objective.value_and_grad(theta, batch)
                diag = None
            else:
                f0, g, diag = fused
            cases = self.objective.last_cases  # over all ranks
            if fused is not None:
                record.forward(cases)  # the (δ²)ᵀ(x²) matmuls cost about a forward pass
            record.gradient(cases)
        return f0, g, diag, cases

    def _preconditioner(self, theta: dict[str, Tensor], batch: Any, cases: int,
                        record: _StepRecord, diag: Tensor | None = None) -> Tensor | None:
        if not self.config.preconditioner:
            return None
        with _Timer(record, "seconds_precond"):
            if diag is None:
                diag = fisher_diagonal(self.objective, theta, batch)
                record.gradient(cases)
            M = inverse_preconditioner(diag, self.lam, self.config.precond_exponent)
        return M if is_finite(M) else None

    def _cg(self, G: GGN | Hessian, g: Tensor, M: Tensor | None, record: _StepRecord,
            cases: int) -> cg.CGResult:
        cfg = self.config
        zeta = record.cg_decay
        max_iters = int(value_at(cfg.cg_max_iters, self.t))
        stop = [] if cfg.cg_fixed_iters else cg.MartensProgress(
            eps=cfg.cg_eps, min_gap=cfg.cg_min_gap, gap_ratio=cfg.cg_gap_ratio)
        if not cfg.backtracking:
            store = cg.Never()
        elif cfg.cg_store_every:  # [HF-RNN]: x_1, x_11, x_21, ...
            store = cg.Every(cfg.cg_store_every, first=1)
        else:
            store = cg.Geometric(cfg.cg_store_ratio, first=cfg.cg_store_first)
        if self.deadline is not None:
            stop = [*([stop] if callable(stop) else stop),
                    cg.Deadline(self.deadline - self._after_cg(record))]
        A = _CountedOperator(G.damped(self.lam), record, cases)
        x0 = self.last_solution.mul(zeta) if zeta > 0 and bool(self.last_solution.any()) \
            else None
        with _Timer(record, "seconds_cg"):
            res = cg.solve(A, -g, x0=x0, M=M, stop=stop, max_iters=max_iters, store=store)
        self.last_solution = res.x.clone()  # HFDemo: ch = chs{end}
        record.cg_iters, record.cg_reason = res.iters, res.reason
        return res

    def _after_cg(self, record: _StepRecord) -> float:
        """Seconds a step is expected to spend after CG (backtracking, ρ, the step size).

        The last step's, or at least this step's time before CG (the first step: that alone).
        """
        before = record.seconds_gradient + record.seconds_precond + record.seconds_setup
        if not self.history:
            return before
        last = self.history[-1]
        return max(before, last.seconds - last.seconds_cg - last.seconds_gradient
                   - last.seconds_precond - last.seconds_setup)

    def _backtrack_batch(self, theta: dict[str, Tensor], m: _Model, grad_batch: Any,
                         curv_batch: Any, heldout: Any, record: _StepRecord
                         ) -> tuple[Any, int, bool]:
        """The backtracking batch, its cases, and whether it is the curvature batch.

        A held-out batch costs one evaluation at θ for its case count ([HF-RNN] evaluates it
        there too: ``obj_reduction`` subtracts ``loss(0)``).
        """
        where = self.config.backtrack_batch
        if where == "heldout" and self.config.backtracking:
            with torch.no_grad():
                self.objective.value(theta, heldout)
            n = self.objective.last_cases
            record.forward(n)
            return heldout, n, False
        if where == "gradient" and not m.same:
            return grad_batch, m.n_grad, False
        return curv_batch, m.n_curv, True

    def _backtrack(self, theta: dict[str, Tensor], res: cg.CGResult, batch: Any, cases: int,
                   record: _StepRecord) -> tuple[Backtracked, float]:
        """The chosen step and the objective at the last CG iterate (for ρ before backtracking).

        With ``cg_store_every`` ([HF-RNN]) the last iterate is a candidate only when CG stopped
        before its cap or it lies on the grid; without backtracking it is the only one.
        """
        values: dict[int, float] = {}

        def objective(step: Tensor) -> float:
            f = self._value(theta, batch, record, cases, step)
            values[id(step)] = f
            return f

        cfg = self.config
        iterates = list(res.iterates) if cfg.backtracking else [(res.iters, res.x)]
        if (cfg.backtracking and cfg.cg_store_every and res.reason == cg.MAX_ITERATIONS
                and len(iterates) > 1 and (iterates[-1][0] - 1) % cfg.cg_store_every):
            iterates.pop()  # [HF-RNN]: evaluated only at i % cg_eval_freq == 0 or an early stop
        bt = cg_backtrack(objective, iterates, cfg.backtrack_rule)
        final = res.iterates[-1][1] if cfg.backtracking else res.x
        return bt, values.get(id(final), math.nan)  # NaN: the last iterate was not evaluated

    def _model_change(self, G: GGN | Hessian, g: Tensor, p: Tensor, record: _StepRecord,
                      cases: int) -> tuple[float, Tensor]:
        """q(p) − q(0) = gᵀp + ½ pᵀBp, B undamped (HFDemo) or damped; one product; and Bp."""
        t0 = time.perf_counter()
        B = G.damped(self.lam) if self.config.rho_damped else G
        Bp = B.matvec(p)
        record.product(cases, time.perf_counter() - t0)
        return float(torch.dot(g, p) + 0.5 * torch.dot(p, Bp)), Bp

    def _check(self, theta: dict[str, Tensor], batch: Any, step: Tensor, Bp: Tensor,
               record: _StepRecord) -> tuple[Any, int]:
        """The check batch's objective before and after ``step``, and the model's prediction.

        The prediction uses the check batch's own gradient ``g_c`` with the step's curvature:
        ``g_cᵀp + ½ pᵀBp`` (``Bp`` is the product ρ already took). A step fitted to its
        minibatch gains less on other cases than the fitted model says; comparing with a model
        built on the same cases measures how far the curvature model holds along ``p``, not how
        much of the step fitted the minibatch's noise.
        """
        before, g_check = self.objective.value_and_grad(theta, batch)
        n = self.objective.last_cases
        record.gradient(n)
        record.check_loss_before = before
        record.check_loss_after = self._value(theta, batch, record, n, step, 1.0)
        record.check_model_change = float(torch.dot(g_check, step) + 0.5 * torch.dot(step, Bp))
        return batch, n

    def _step_size(self, theta: dict[str, Tensor], bt: Backtracked, m: _Model, grad_batch: Any,
                   curv_batch: Any, record: _StepRecord, check: tuple[Any, int] | None = None,
                   checked_bt: bool = True, search_batch: Any = None) -> StepSize:
        """The step-size policy of the config: a search (Armijo, first decrease) or a fixed rate."""
        cfg = self.config
        bt_on_grad = m.same or cfg.backtrack_batch == "gradient"
        alpha = float(value_at(cfg.learning_rate, self.t))
        if cfg.line_search and cfg.ls_rule == "first-decrease":
            return self._first_decrease(theta, bt, m, grad_batch, record, search_batch, alpha,
                                        bt_on_grad)
        if cfg.line_search:
            known_at_start = bt.value if bt_on_grad and alpha == 1.0 else None
            return line_search(
                lambda a: self._value(theta, grad_batch, record, m.n_grad, bt.step, a),
                m.f0, float(torch.dot(m.g, bt.step)), known_at_start, cfg, alpha0=alpha)

        def compare(a: float) -> tuple[float, float, bool]:
            if check is not None and cfg.reject_on_check:  # on cases it was not fitted to
                after = record.check_loss_after if a == 1.0 and checked_bt else \
                    self._value(theta, check[0], record, check[1], bt.step, a)
                return after, record.check_loss_before, False
            if a == 1.0:  # the backtracking already evaluated rate 1
                return bt.value, (m.f0 if bt_on_grad else m.G.value), bt_on_grad
            f_new = self._value(theta, curv_batch, record, m.n_curv, bt.step, a)
            return f_new, m.G.value, m.same

        known = bt.value if bt_on_grad and alpha == 1.0 else math.nan
        return fixed_rate(alpha, cfg.reject_worse, m.f0, known, compare)

    def _first_decrease(self, theta: dict[str, Tensor], bt: Backtracked, m: _Model,
                        grad_batch: Any, record: _StepRecord, search_batch: Any, alpha: float,
                        bt_on_grad: bool) -> StepSize:
        """[HF-RNN]'s search on the gradient batch or on the held-out ``search_batch``."""
        if self.config.ls_batch == "heldout":
            with torch.no_grad():
                f0 = self.objective.value(theta, search_batch)
            n = self.objective.last_cases
            record.forward(n)
            size = first_decrease(
                lambda a: self._value(theta, search_batch, record, n, bt.step, a), f0,
                self.config, alpha0=alpha)
            # its value is the search batch's, not the gradient batch's: not reported as such
            return StepSize(size.alpha, math.nan if size.rejection is None else m.f0,
                            size.evaluations, size.rejection)

        def objective(a: float) -> float:
            if a == 1.0 and bt_on_grad:  # the backtracking evaluated it already
                return bt.value
            return self._value(theta, grad_batch, record, m.n_grad, bt.step, a)

        return first_decrease(objective, m.f0, self.config, alpha0=alpha)

    def _finish(self, record: _StepRecord, t_start: float, reason: str) -> StepStats:
        """λ update (raised on rejection), counters, the record."""
        accepted = reason == ACCEPTED
        cfg = self.config
        # a rejected step counts as ρ = NaN: λ is raised once (HFDemo treats NaN like ρ < 1/4);
        # [HF-RNN] (boost_on_reject=False) updates λ from ρ before its search rejects a step
        searched_out = reason in (LINE_SEARCH_FAILED, LOSS_INCREASED)
        rho = record.rho if accepted or (searched_out and not cfg.boost_on_reject) else math.nan
        if record.grad_norm == 0.0:
            self.stop_reason = "converged: the gradient is exactly zero"
        elif not (rho >= cfg.lm_lower) and self.lam * cfg.lm_boost > cfg.lambda_max:
            self.stop_reason = (f"no progress possible: λ would exceed lambda_max = "
                                f"{cfg.lambda_max:g} (the last step was {reason}, "
                                f"ρ = {record.rho:.3g})")
        self.lam = lm_update(self.lam, rho, cfg)
        if not accepted and cfg.reset_on_reject:
            self.last_solution = self._solution_before  # do not carry a rejected direction
        if not accepted and cfg.zero_on_reject:  # [HF-RNN]: "setting CG_x to zero"
            self.last_solution = torch.zeros_like(self.last_solution)
        stats = record.freeze(reason, self.lam, time.perf_counter() - t_start)
        index, steps, cg_steps = self._phase
        self._phase = (index, steps + 1, cg_steps + stats.cg_iters)
        self.cg_total += stats.cg_iters
        self.t += 1
        self.history.append(stats)
        return stats

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: λ, the CG hot start, the counters, the phases.

        Version :data:`STATE_VERSION`; the phase schedule and base config are included and
        checked by :meth:`load_state_dict`.
        """
        index, steps, cg_steps = self._phase
        return {"version": STATE_VERSION, "lam": self.lam, "step": self.t,
                "cg_total": self.cg_total, "phase": [index, steps, cg_steps],
                "last_solution": self.last_solution.clone(), "dim": self.layout.numel,
                "config": self.base_config.to_dict(), "phases": self.schedule.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuse a state of another version, size, config or phases.

        Version-1 states (before phases) hold ``x_prev`` for the hot start and no phase
        counters; they load into a one-phase optimizer.
        """
        if not isinstance(state, dict):
            raise InputError(f"state: expected a dict, got {type(state).__name__}")
        missing = [k for k in ("version", "lam", "step", "dim") if k not in state]
        if missing:
            raise InputError(f"state: missing entries {missing}")
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise InputError(f"state: version {version!r} is not one this hessfree reads "
                             f"(1 or {STATE_VERSION})")
        key = "x_prev" if version == 1 else "last_solution"
        if key not in state:
            raise InputError(f"state: missing entries {[key]}")
        if int(state["dim"]) != self.layout.numel or state[key].numel() != self.layout.numel:
            raise InputError(f"state: saved for {int(state['dim'])} parameters, this optimizer "
                             f"has {self.layout.numel}")
        self._check_same("config", state.get("config"), self.base_config.to_dict())
        if version == 1:
            if len(self.schedule) != 1:
                raise InputError("state: a version-1 state has no phases; this optimizer has "
                                 f"{len(self.schedule)}")
            phase = (0, int(state["step"]), 0)
        else:
            self._check_same("phases", state.get("phases"), self.schedule.to_dict())
            phase = tuple(int(x) for x in state["phase"])
        self.lam = float(state["lam"])
        self.t = int(state["step"])
        self.cg_total = int(state.get("cg_total", 0))
        self._phase = phase  # type: ignore[assignment]
        self.last_solution = state[key].detach().to(self.layout.device,
                                                    self.layout.dtype).clone()

    @staticmethod
    def _check_same(name: str, saved: Any, ours: Any) -> None:
        if saved is None:
            return
        if isinstance(saved, dict) and isinstance(ours, dict) and name == "config":
            diff = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
            if diff:
                raise InputError(
                    "state: saved with another config; differing fields: "
                    + ", ".join(f"{k} (saved {saved.get(k)!r}, now {ours.get(k)!r})"
                                for k in diff))
        elif saved != ours:
            raise InputError(f"state: saved with other {name}: saved {saved!r}, now {ours!r}")


def _needs(name: str, field: str, needed: bool, batch: Any) -> None:
    """Refuse a step whose config asks for a held-out batch the caller did not give."""
    if needed and batch is None:
        raise InputError(f"{name}: the config evaluates on a held-out batch ({field}='heldout'); "
                         f"pass {name}=<batch>")
