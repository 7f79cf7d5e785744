"""``HessianFree``: Martens' (2010) Hessian-free optimizer, one outer step at a time.

One step (``docs/architecture.md``, "One HF step"; [M10 §4]):

1. the step's batches, checked once (given, or drawn from the optimizer's
   :class:`~hessfree.hf.phases.BatchSource` as the current phase says), and the measurement
   policy that says which batch measures what (:func:`hessfree.hf.measure.resolve`);
2. loss and gradient ``g`` on the gradient batch (:meth:`HessianFree._gradient`);
3. the curvature operator (GGN, or Hessian) on the curvature batch, one forward pass, cached;
4. the diagonal preconditioner ``(diag EF + λ)^0.75`` ([M10 §4.7]);
5. CG on ``(G + λI) p = −g`` from ``ζ`` times the previous CG solution (the last iterate, not the
   backtracked one, as in HFDemo), Martens' stopping rule, stored iterates ([M10 §4.4-4.5]);
6. CG-backtracking over the stored iterates ([M10 §4.6]) on the gradient batch (HFDemo), the
   curvature batch or a held-out batch ([HF-RNN]);
7. ρ = (f(θ+p) − f(θ)) / (q(p) − q(0)) on the curvature batch (or the held-out batch) and the
   Levenberg-Marquardt rule ([M10 §4.1]);
8. the step size: Armijo line search on the gradient batch, HF-RNN's first-decrease search, or a
   fixed learning rate (:mod:`hessfree.hf.stepsize`);
9. the parameters move in place — or, when anything is non-finite or the loss went up, the step
   is rejected: parameters stay bit-identical and λ is raised (a step the search rejects: λ
   follows ρ, as in HFDemo and HF-RNN, unless ``boost_on_reject``).

The settings of a step come from the current :class:`~hessfree.hf.phases.Phase` of the
optimizer's :class:`~hessfree.hf.phases.PhaseSchedule` (one phase unless given); the optimizer
moves its phase counters after each step, so reading the current phase changes nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hessfree import _checks, cg
from hessfree._checks import is_finite
from hessfree.batches import Chunks, leaves, take
from hessfree.curvature import GGN, Hessian, Problem
from hessfree.curvature.diagonal import fisher_diagonal
from hessfree.curvature.problem import Evaluation
from hessfree.curvature.sequential import value_grad_diagonal
from hessfree.errors import InputError, InputTypeError
from hessfree.hf.backtrack import Backtracked, cg_backtrack
from hessfree.hf.config import HFConfig
from hessfree.hf.damping import lm_update, reduction_ratio
from hessfree.hf.measure import (
    BACKTRACK,
    GRADIENT,
    HELDOUT,
    SEARCH,
    THETA,
    Measures,
    Values,
    nan_if_none,
    resolve,
)
from hessfree.hf.phases import ROLES, BatchSource, Phase, PhaseSchedule
from hessfree.hf.precondition import inverse_preconditioner
from hessfree.hf.record import StepRecord, Timer
from hessfree.hf.stats import ACCEPTED, StepStats
from hessfree.hf.stepsize import (
    LINE_SEARCH_FAILED,
    LOSS_INCREASED,
    Judged,
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

#: the step's argument naming each role's batch (in messages)
_ARGUMENTS = {GRADIENT: "grad_batch", **{r: f"{r}_batch" for r in ROLES[1:]}}


@dataclass
class _LocalModel:
    """The local model of a step: curvature operator, objective and gradient at θ."""

    G: GGN | Hessian
    f0: float
    g: Tensor
    diag: Tensor | None
    n_grad: int
    n_curv: int


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
        source: where :meth:`step` draws a step's batches when it is given none (each role its
            phase names, from the phase's :class:`~hessfree.hf.phases.BatchSpec`; e.g.
            ``hessfree.runs.batching.BatchDrawer``); None: every step is given its batches.
    """

    def __init__(self, problem: Problem, params: Any = None, config: HFConfig | None = None,
                 phases: PhaseSchedule | list[Phase] | tuple[Phase, ...] | None = None,
                 source: BatchSource | None = None) -> None:
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
        if source is not None and not callable(getattr(source, "draw", None)):
            raise InputTypeError(f"source: expected an object with draw(spec, t, role), got "
                                 f"{type(source).__name__}")
        self.problem = problem
        self.base_config = config
        self.schedule = phases
        self.source = source
        #: what the steps update: the parameters, or their float32 master copies under a
        #: mixed precision policy (each update is then written back into :attr:`live`)
        self.params = problem.resolve_params(params)
        self.live = problem.live_params(params) if problem.precision is not None else None
        self.layout = ParamLayout.from_params(self.params)
        if self.layout.dtype in (torch.bfloat16, torch.float16):
            raise InputError(
                f"params: {self.layout.dtype} parameters would make CG and the update "
                f"{self.layout.dtype} too; use Problem(..., precision='float32') (the model "
                "still runs in its dtype; curvature, CG and the update are float32)")
        self.lam = float(self._config_of(0).initial_lambda)
        self.t = 0
        self.cg_total = 0
        #: (phase index, steps done in it, CG iterations done in it), past finished phases
        self._phase = phases.advance(0, 0, 0)
        self._objectives: dict[int, Problem] = {}
        #: whether the model passed the determinism probe (run once, on the first operator)
        self._probed = False
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
        """Index of the phase the next step runs in."""
        return self._phase[0]

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

    # -- the step's batches and local model ----------------------------------------------------
    def _theta(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    def _batches(self, given: dict[str, Any]) -> dict[str, Chunks]:
        """The step's batches by role, each checked once (drawn from the source if none given)."""
        if given[GRADIENT] is None:
            named = [_ARGUMENTS[r] for r, b in given.items() if b is not None]
            if named:
                raise InputError(f"grad_batch: required with {', '.join(named)}")
            if self.source is None:
                raise InputError("grad_batch: required (or give HessianFree a source= to draw "
                                 "each phase's batches from)")
            phase = self.phase
            given = {role: None if getattr(phase, role) is None else
                     self.source.draw(getattr(phase, role), self.t, code)
                     for code, role in enumerate(ROLES)}  # the gradient batch first
        return {role: Chunks.of(b, _ARGUMENTS[role]) for role, b in given.items()
                if b is not None}

    def _operator(self, theta: dict[str, Tensor], batch: Chunks) -> GGN | Hessian:
        """The phase's curvature operator; the model is probed for determinism once."""
        cfg, probe = self.config, not self._probed
        if not probe:
            self.objective.check_modes()  # cheap; the probe's forward passes ran once
        if cfg.curvature == "hessian":
            G: GGN | Hessian = Hessian(self.objective, batch, params=theta, check=probe,
                                       backend=cfg.backend if cfg.backend != "sequential"
                                       else "auto")
        else:
            G = GGN(self.objective, batch, params=theta, backend=cfg.backend, check=probe,
                    structural_damping=cfg.structural_damping)
        self._probed = True
        return G

    def _check_outputs(self, theta: dict[str, Tensor], grad: Chunks, curv: Chunks) -> None:
        """The two batches must give the same number of output units.

        Inputs of the same trailing shapes and dtypes do; otherwise one-case probes tell.
        """
        a, b = (leaves(c.first().inputs) for c in (grad, curv))
        if [(t.shape[1:], t.dtype) for t in a] == [(t.shape[1:], t.dtype) for t in b]:
            return
        with torch.no_grad():
            units = [self.objective.forward(theta, take(c.first().inputs, slice(0, 1)))
                     .shape[-1] for c in (grad, curv)]
        if units[0] != units[1]:
            raise InputError(f"curvature_batch: the model gives {units[1]} output units on it but "
                             f"{units[0]} on grad_batch")

    def _local_model(self, theta: dict[str, Tensor], batches: dict[str, Chunks], plan: Measures,
                     record: StepRecord, values: Values) -> _LocalModel:
        """The curvature operator and the objective and gradient at θ."""
        if plan.curvature != GRADIENT:
            self._check_outputs(theta, batches[GRADIENT], batches[plan.curvature])
        with Timer(record, "seconds_setup"):
            G = self._operator(theta, batches[plan.curvature])
        n_curv = G.n_cases  # over all ranks
        record.gradient(n_curv)
        values.put(plan.curvature, THETA, G.value)
        if plan.curvature == GRADIENT:
            return _LocalModel(G, G.value, G.grad, None, n_curv, n_curv)
        e = self._gradient(theta, batches[GRADIENT], plan.fused, record)
        values.put(GRADIENT, THETA, e.value)
        assert e.grad is not None
        return _LocalModel(G, e.value, e.grad, e.diag, e.cases, n_curv)

    def quadratic(self, grad_batch: Any, curvature_batch: Any = None) -> Quadratic:
        """The quadratic ``q(p) = gᵀp + ½ pᵀ(G + λI)p`` the next step would solve by CG.

        Built exactly as :meth:`step` builds it (current parameters, λ, phase config, curvature
        and backend, structural damping, objective); it costs a gradient and an operator set-up.
        """
        given = {GRADIENT: grad_batch, ROLES[1]: curvature_batch}
        batches = self._batches(given)
        record = StepRecord(self.t, self.phase_index, self.lam, 0.0)
        theta = self._theta()
        plan = resolve(self.config, batches, held_out=False)
        m = self._local_model(theta, batches, plan, record,
                              Values(self.objective, theta, self.layout, batches, record))
        return Quadratic(m.G, m.g, self.lam)

    # -- the step -----------------------------------------------------------------------------
    def step(self, grad_batch: Any = None, curvature_batch: Any = None, *,
             heldout_batch: Any = None, backtrack_batch: Any = None, search_batch: Any = None,
             on_quadratic: Callable[[Quadratic], None] | None = None,
             check_batch: Any = None) -> StepStats:
        """One outer HF iteration; updates the parameters in place and returns its record.

        Args:
            grad_batch: ``(inputs, targets)`` or a list of minibatches, for the loss, the
                gradient and the line search (Martens: the full training set). None (with no
                other batch): every batch the current phase names is drawn from ``source``.
            curvature_batch: the same form, for the curvature products (Martens: 1/4 of
                CURVES); ``None``: the gradient batch.
            heldout_batch: a batch the step was not fitted to, on which ρ (and, with
                ``reject_on_heldout``, a fixed rate's rejection) measures the step instead of the
                curvature batch (one gradient and one objective evaluation; ρ compares with the
                quadratic model built with this batch's gradient); None: as HFDemo.
            backtrack_batch: the held-out batch of CG-backtracking when the config says
                ``backtrack_batch="heldout"`` ([HF-RNN] ``BT_batches``); else unused.
            search_batch: the batch of the step-size search when the config says
                ``ls_batch="heldout"`` ([HF-RNN] ``line_search_batches``); else unused.
            on_quadratic: called with the step's :class:`~hessfree.Quadratic` (the one
                :meth:`quadratic` would give) before CG runs, e.g. to save it.
            check_batch: the old name of ``heldout_batch`` (a ``DeprecationWarning``).

        Which batch measures what is resolved once, before anything runs
        (:mod:`hessfree.hf.measure`).
        """
        t_start = time.perf_counter()
        heldout_batch = _checks.renamed(heldout_batch, check_batch, "heldout_batch",
                                        "check_batch", "HessianFree.step")
        batches = self._batches(dict(zip(ROLES, (grad_batch, curvature_batch, heldout_batch,
                                                backtrack_batch, search_batch))))
        cfg, theta = self.config, self._theta()
        plan = resolve(cfg, batches, float(value_at(cfg.learning_rate, self.t)))
        self._solution_before = self.last_solution
        record = StepRecord(self.t, self.phase_index, self.lam,
                            float(value_at(cfg.cg_decay, self.t)))
        values = Values(self.objective, theta, self.layout, batches, record)
        m = self._local_model(theta, batches, plan, record, values)
        record.loss_before, record.curv_loss_before = m.f0, m.G.value
        record.grad_norm = float(m.g.norm())
        if not (is_finite(m.f0) and is_finite(m.g)):
            return self._finish(record, t_start, "non-finite gradient")
        if not (is_finite(m.G.value) and is_finite(m.G.grad)):
            return self._finish(record, t_start, "non-finite curvature")
        if on_quadratic is not None:
            on_quadratic(Quadratic(m.G, m.g, self.lam))
        M = self._preconditioner(theta, batches, plan, m, record)
        res = self._cg(m.G, m.g, M, record, m.n_curv)
        with Timer(record, "seconds_backtrack"):
            bt = self._backtrack(res, plan, values)
        record.backtrack_iter, record.backtrack_evals = bt.iteration, bt.evaluations
        self._rho(m, res, bt, plan, values, record)
        if not (is_finite(bt.step) and is_finite(bt.value)):
            return self._finish(record, t_start, "non-finite step")
        with Timer(record, "seconds_stepsize"):
            size = self._step_size(m, bt, plan, values)
        self._move(bt.step, size, record)
        return self._finish(record, t_start, size.rejection or ACCEPTED)

    def _move(self, step: Tensor, size: StepSize, record: StepRecord) -> None:
        """θ += α·step in place unless the step size rejects the step (and record it)."""
        record.loss_after, record.step_size = size.value, size.alpha
        record.ls_evals = size.evaluations
        if size.rejection is None:
            with torch.no_grad():
                for n, d in self.layout.split(step).items():
                    self.params[n].add_(d, alpha=size.alpha)
                    if self.live is not None:  # the model's copy, rounded to its dtype
                        self.live[n].copy_(self.params[n])
            record.step_norm = abs(size.alpha) * float(step.norm())

    def _gradient(self, theta: dict[str, Tensor], batch: Chunks, fused: bool,
                  record: StepRecord) -> Evaluation:
        """Objective and gradient on the gradient batch (and the diagonal EF when ``fused``).

        A model the analytic backend serves gets the diagonal from the same pass, as HFDemo
        computes ``grad2``.
        """
        with Timer(record, "seconds_gradient"):
            e = value_grad_diagonal(self.objective, theta, batch) if fused else None
            if e is not None:
                record.forward(e.cases)  # the (δ²)ᵀ(x²) matmuls cost about a forward pass
            else:
                e = self.objective.evaluate(theta, batch, grad=True)
            record.gradient(e.cases)  # cases over all ranks (a token loss counts tokens)
        return e

    def _preconditioner(self, theta: dict[str, Tensor], batches: dict[str, Chunks],
                        plan: Measures, m: _LocalModel, record: StepRecord) -> Tensor | None:
        if plan.precondition is None:
            return None
        with Timer(record, "seconds_precond"):
            diag = m.diag
            if diag is None:
                diag = fisher_diagonal(self.objective, theta, batches[plan.precondition])
                record.gradient(m.n_grad if plan.precondition == GRADIENT else m.n_curv)
            M = inverse_preconditioner(diag, self.lam, self.config.precond_exponent)
        return M if is_finite(M) else None

    def _cg(self, G: GGN | Hessian, g: Tensor, M: Tensor | None, record: StepRecord,
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
        A = record.counted(G.damped(self.lam), cases)
        x0 = self.last_solution.mul(zeta) if zeta > 0 and bool(self.last_solution.any()) \
            else None
        with Timer(record, "seconds_cg"):
            res = cg.solve(A, -g, x0=x0, M=M, stop=stop, max_iters=max_iters, store=store)
        self.last_solution = res.x.clone()  # HFDemo: ch = chs{end}
        record.cg_iters, record.cg_reason = res.iters, res.reason
        return res

    def _after_cg(self, record: StepRecord) -> float:
        """Seconds a step is expected to spend after CG (backtracking, ρ, the step size).

        The last step's, or at least this step's time before CG (the first step: that alone).
        """
        before = record.seconds_gradient + record.seconds_precond + record.seconds_setup
        if not self.history:
            return before
        last = self.history[-1]
        return max(before, last.seconds - last.seconds_cg - last.seconds_gradient
                   - last.seconds_precond - last.seconds_setup)

    def _backtrack(self, res: cg.CGResult, plan: Measures, values: Values) -> Backtracked:
        """The chosen iterate, its objective (and every evaluated one's) on the plan's batch.

        With ``cg_store_every`` ([HF-RNN]) the last iterate is a candidate only when CG stopped
        before its cap or it lies on the grid; without backtracking it is the only one. A
        held-out batch costs one evaluation at θ too ([HF-RNN]: ``obj_reduction`` subtracts
        ``loss(0)``).
        """
        cfg = self.config
        iterates = list(res.iterates) if cfg.backtracking else [(res.iters, res.x)]
        if (cfg.backtracking and cfg.cg_store_every and res.reason == cg.MAX_ITERATIONS
                and len(iterates) > 1 and (iterates[-1][0] - 1) % cfg.cg_store_every):
            iterates.pop()  # [HF-RNN]: evaluated only at i % cg_eval_freq == 0 or an early stop
        if plan.backtrack == BACKTRACK:
            values.at_theta(BACKTRACK)
        bt = cg_backtrack(lambda step: values.evaluate(plan.backtrack, step), iterates,
                          cfg.backtrack_rule)
        for iteration, value in bt.values:
            values.put(plan.backtrack, (iteration, 1.0), value)
        return bt

    def _rho(self, m: _LocalModel, res: cg.CGResult, bt: Backtracked, plan: Measures,
             values: Values, record: StepRecord) -> None:
        """ρ and the quadratic model's change along the step ρ measures (in the record).

        The curvature batch's objective there is always measured (HFDemo's ``ll_chunk``,
        [HF-RNN] ``RHO_batches``); a held-out batch replaces it in ρ, compared with the model
        built with the held-out batch's own gradient ``g_c``: ``g_cᵀp + ½ pᵀBp`` (``Bp`` the same
        product). A step fitted to its minibatch gains less on other cases than the fitted model
        says; a model built on the same cases measures how far the curvature holds along ``p``.
        """
        iteration, p = (bt.iteration, bt.step) if plan.rho_backtracked else (res.iters, res.x)
        f_rho = values.at(plan.curvature, (iteration, 1.0), p)
        record.curv_loss_after = nan_if_none(values.known(plan.curvature, (bt.iteration, 1.0)))
        f_ref = m.G.value
        record.model_change, Bp = self._model_change(m.G, m.g, p, record, m.n_curv)
        model_change = record.model_change
        if plan.rho == HELDOUT:
            e = values.at_theta(HELDOUT, grad=True)
            assert e.grad is not None
            record.heldout_loss_before = f_ref = e.value
            record.heldout_loss_after = f_rho = values.at(HELDOUT, (iteration, 1.0), p)
            record.heldout_model_change = model_change = \
                float(torch.dot(e.grad, p) + 0.5 * torch.dot(p, Bp))
        record.rho = reduction_ratio(f_rho, f_ref, model_change)

    def _model_change(self, G: GGN | Hessian, g: Tensor, p: Tensor, record: StepRecord,
                      cases: int) -> tuple[float, Tensor]:
        """q(p) − q(0) = gᵀp + ½ pᵀBp, B undamped (HFDemo) or damped; one product; and Bp."""
        B = record.counted(G.damped(self.lam) if self.config.rho_damped else G, cases)
        Bp = B.apply(p)
        return float(torch.dot(g, p) + 0.5 * torch.dot(p, Bp)), Bp

    def _step_size(self, m: _LocalModel, bt: Backtracked, plan: Measures, values: Values
                   ) -> StepSize:
        """The plan's step-size policy: a search (Armijo, first decrease) or a fixed rate."""
        cfg, rate, i = self.config, plan.rate, bt.iteration
        if plan.search_rule == "first-decrease" and plan.search == SEARCH:
            f0 = values.at_theta(SEARCH).value
            size = first_decrease(values.along(SEARCH, i, bt.step), f0, cfg, alpha0=rate)
            # its value is the search batch's, not the gradient batch's: not reported as such
            return StepSize(size.alpha, math.nan if size.rejection is None else m.f0,
                            size.evaluations, size.rejection)
        if plan.search_rule == "first-decrease":
            return first_decrease(values.along(GRADIENT, i, bt.step), m.f0, cfg, alpha0=rate)
        if plan.search_rule == "armijo":
            return line_search(values.along(GRADIENT, i, bt.step), m.f0,
                               float(torch.dot(m.g, bt.step)), values.known(GRADIENT, (i, rate)),
                               cfg, alpha0=rate)
        judged = None
        if plan.reject is not None:  # before: measured at θ; after: at the step
            judged = Judged(nan_if_none(values.known(plan.reject, THETA)),
                            values.at(plan.reject, (i, rate), bt.step), plan.reject == GRADIENT)
        return fixed_rate(rate, m.f0, nan_if_none(values.known(GRADIENT, (i, rate))), judged)

    def _finish(self, record: StepRecord, t_start: float, reason: str) -> StepStats:
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
        self._phase = self.schedule.advance(index, steps + 1, cg_steps + stats.cg_iters)
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
        state = {"version": STATE_VERSION, "lam": self.lam, "step": self.t,
                 "cg_total": self.cg_total, "phase": [index, steps, cg_steps],
                 "last_solution": self.last_solution.clone(), "dim": self.layout.numel,
                 "config": self.base_config.to_dict(), "phases": self.schedule.to_dict()}
        if self.live is not None:  # the float32 masters: the model holds them rounded
            state["master_params"] = self.problem.flat(self.params)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuse a state of another version, size, config or phases.

        Version-1 states (before phases) hold ``x_prev`` for the hot start and no phase
        counters; they load into a one-phase optimizer. A config or phase schedule saved by an
        earlier hessfree, without fields added since, is read with those fields' defaults (so
        the settings of old results files and checkpoints still compare equal).
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
        self._check_same("config", _config_dict(state.get("config")), self.base_config.to_dict())
        if version == 1:
            if len(self.schedule) != 1:
                raise InputError("state: a version-1 state has no phases; this optimizer has "
                                 f"{len(self.schedule)}")
            phase = (0, int(state["step"]), 0)
        else:
            self._check_same("phases", _phases_dict(state.get("phases")), self.schedule.to_dict())
            phase = tuple(int(x) for x in state["phase"])
        self.lam = float(state["lam"])
        self.t = int(state["step"])
        self.cg_total = int(state.get("cg_total", 0))
        self._phase = self.schedule.advance(*phase)  # saved before or after moving on
        self.last_solution = state[key].detach().to(self.layout.device,
                                                    self.layout.dtype).clone()
        if self.live is not None and "master_params" in state:
            with torch.no_grad():
                for n, p in self.layout.split(state["master_params"].to(
                        self.layout.device, self.layout.dtype)).items():
                    self.params[n].copy_(p)
                    self.live[n].copy_(p)

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


def _config_dict(saved: Any) -> Any:
    """A saved config as this hessfree writes it (fields added since take their defaults)."""
    return HFConfig.from_dict(saved).to_dict() if isinstance(saved, dict) else saved


def _phases_dict(saved: Any) -> Any:
    """A saved phase schedule as this hessfree writes it (see :func:`_config_dict`)."""
    return PhaseSchedule.from_dict(saved).to_dict() if isinstance(saved, dict) else saved
