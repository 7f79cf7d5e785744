"""``HessianFree``: Martens' (2010) Hessian-free optimizer, one outer step at a time.

One step (``DESIGN.md``, "The data flow of one HF step"):

1. loss and gradient ``g`` on the gradient batch;
2. the curvature operator (GGN, or Hessian) on the curvature batch, one forward pass, cached;
3. the diagonal preconditioner ``(diag EF + λ)^0.75`` (Martens 2010 §4.7);
4. CG on ``(G + λI) p = −g`` from ``ζ`` times the previous CG solution (the last iterate, not the
   backtracked one, as in HFDemo), Martens' stopping rule, stored iterates (§4.4-4.5);
5. CG-backtracking over the stored iterates (§4.6);
6. ρ = (f(θ+p) − f(θ)) / (q(p) − q(0)) and the Levenberg-Marquardt rule (§4.1);
7. the Armijo line search on the gradient batch (or a fixed learning rate);
8. the parameters move in place — or, when anything is non-finite or the loss went up, the step
   is rejected: parameters stay bit-identical and λ is raised.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from hessfree import cg
from hessfree.curvature import GGN, Hessian, Problem
from hessfree.curvature.diagonal import fisher_diagonal
from hessfree.curvature.problem import as_chunks
from hessfree.curvature.sequential import value_grad_diagonal
from hessfree.hf.backtrack import Backtracked, cg_backtrack
from hessfree.hf.config import HFConfig
from hessfree.hf.damping import lm_update, reduction_ratio
from hessfree.hf.linesearch import armijo
from hessfree.hf.precondition import inverse_preconditioner
from hessfree.hf.schedules import value_at
from hessfree.hf.stats import ACCEPTED, StepStats
from hessfree.vectors import ParamLayout

__all__ = ["HessianFree"]

STATE_VERSION = 1


class _Tally:
    """Costs and timings accumulated during one step."""

    def __init__(self) -> None:
        self.counts = dict(gradients=0, forwards=0, products=0, grad_cases=0, forward_cases=0,
                           product_cases=0)
        self.seconds = dict(gradient=0.0, precond=0.0, setup=0.0, cg=0.0, products=0.0,
                            backtrack=0.0, linesearch=0.0)

    def add(self, kind: str, cases: int, n: int = 1) -> None:
        self.counts[kind + "s"] += n
        self.counts[{"gradient": "grad", "forward": "forward", "product": "product"}[kind]
                    + "_cases"] += n * cases


class _TimedOperator:
    """Wraps the damped operator CG uses: counts and times the products."""

    def __init__(self, op: Any, tally: _Tally, cases: int) -> None:
        self.op, self.tally, self.cases = op, tally, cases
        self.shape = op.shape

    def __matmul__(self, v: Tensor) -> Tensor:
        t0 = time.perf_counter()
        out = self.op._mv_flat(v)
        self.tally.seconds["products"] += time.perf_counter() - t0
        self.tally.add("product", self.cases)
        return out


def _finite(x: float | Tensor) -> bool:
    if isinstance(x, Tensor):
        return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())
    return math.isfinite(x)


class HessianFree:
    """Martens' Hessian-free optimizer (2010), with the momentum-like variant as a preset.

    Args:
        problem: the :class:`~hessfree.Problem` (model, matching loss, weight decay).
        params: the tensors to optimise, updated in place (``None``: the module's trainable
            parameters, so the user's ``nn.Module`` sees the new values).
        config: an :class:`HFConfig` (default: Martens 2010).
    """

    def __init__(self, problem: Problem, params: Any = None, config: HFConfig | None = None
                 ) -> None:
        if not isinstance(problem, Problem):
            raise TypeError(f"problem: expected a hessfree.Problem, got {type(problem).__name__}")
        config = HFConfig() if config is None else config
        if not isinstance(config, HFConfig):
            raise TypeError(f"config: expected an HFConfig, got {type(config).__name__}")
        self.problem = problem
        self.config = config
        self.params = problem.resolve_params(params)
        self.layout = ParamLayout.from_params(self.params)
        self.lam = float(config.initial_lambda)
        self.t = 0
        self.x_prev = torch.zeros(self.layout.numel, dtype=self.layout.dtype,
                                  device=self.layout.device)
        self.history: list[StepStats] = []

    # -- helpers ------------------------------------------------------------------------------
    def _theta(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    def _at(self, theta: dict[str, Tensor], step: Tensor, alpha: float = 1.0
            ) -> dict[str, Tensor]:
        parts = self.layout.split(step)
        return {n: theta[n].add(parts[n], alpha=alpha) for n in theta}

    def _objective(self, theta: dict[str, Tensor], batch: Any, tally: _Tally, cases: int,
                   step: Tensor, alpha: float = 1.0) -> float:
        tally.add("forward", cases)
        return self.problem.value(self._at(theta, step, alpha), batch)

    def _operator(self, theta: dict[str, Tensor], batch: Any) -> GGN | Hessian:
        cfg = self.config
        if cfg.curvature == "hessian":
            return Hessian(self.problem, batch, params=theta, backend=cfg.backend
                           if cfg.backend != "sequential" else "auto")
        return GGN(self.problem, batch, params=theta, backend=cfg.backend,
                   structural_damping=cfg.structural_damping)

    def _check_outputs(self, theta: dict[str, Tensor], grad_batch: Any, curv_batch: Any
                       ) -> None:
        """The two batches must give the same number of output units (one-case probes)."""
        units = []
        with torch.no_grad():
            for name, batch in (("grad_batch", grad_batch), ("curvature_batch", curv_batch)):
                c = as_chunks(batch, name)[0]
                x = c.inputs[:1] if isinstance(c.inputs, Tensor) else \
                    type(c.inputs)(t[:1] for t in c.inputs)
                units.append(self.problem.forward(theta, x).shape[-1])
        if units[0] != units[1]:
            raise ValueError(f"curvature_batch: the model gives {units[1]} output units on it but "
                             f"{units[0]} on grad_batch")

    # -- the step -----------------------------------------------------------------------------
    def step(self, grad_batch: Any, curvature_batch: Any = None) -> StepStats:
        """One outer HF iteration; updates the parameters in place and returns its record.

        Args:
            grad_batch: ``(inputs, targets)`` or a list of minibatches, for the loss, the
                gradient and the line search (Martens: the full training set).
            curvature_batch: the same form, for the curvature products and CG-backtracking
                (Martens: 1/4 of CURVES); ``None``: the gradient batch.
        """
        t_start = time.perf_counter()
        cfg, tally, theta = self.config, _Tally(), self._theta()
        same = curvature_batch is None
        curv_batch = grad_batch if same else curvature_batch
        n_grad = sum(c.n for c in as_chunks(grad_batch, "grad_batch"))
        n_curv = n_grad if same else sum(c.n for c in as_chunks(curv_batch, "curvature_batch"))
        if not same:
            self._check_outputs(theta, grad_batch, curv_batch)
        rec = dict(step=self.t, lambda_before=self.lam, cg_decay=float(value_at(cfg.cg_decay,
                                                                                  self.t)))
        t0 = time.perf_counter()
        G = self._operator(theta, curv_batch)
        tally.add("gradient", n_curv)
        tally.seconds["setup"] = time.perf_counter() - t0
        diag = None
        if same:
            f0, g = G.value, G.grad
        else:
            f0, g, diag = self._gradient(theta, grad_batch, n_grad, tally)
        rec.update(loss_before=f0, curv_loss_before=G.value, grad_norm=float(g.norm()))
        if not (_finite(f0) and _finite(g)):
            return self._finish(rec, tally, t_start, "non-finite gradient")
        if not (_finite(G.value) and _finite(G.grad)):
            return self._finish(rec, tally, t_start, "non-finite curvature")
        M = self._preconditioner(theta, grad_batch if cfg.precond_batch == "gradient"
                                 else curv_batch, n_grad if cfg.precond_batch == "gradient"
                                 else n_curv, tally, diag)
        res = self._cg(G, g, M, tally, n_curv, rec)
        bt_batch, n_bt, f_ref = ((grad_batch, n_grad, f0) if cfg.backtrack_batch == "gradient"
                                 else (curv_batch, n_curv, G.value))
        t0 = time.perf_counter()
        bt, last_value = self._backtrack(theta, res, bt_batch, n_bt, tally)
        tally.seconds["backtrack"] = time.perf_counter() - t0
        rec.update(backtrack_iter=bt.iteration, backtrack_evals=bt.evaluations,
                   curv_loss_after=bt.value if cfg.backtrack_batch == "curvature" else math.nan)
        p_rho, f_rho = (bt.step, bt.value) if cfg.rho_after_backtracking else (res.x, last_value)
        rec["model_change"] = self._model_change(G, g, p_rho, tally, n_curv)
        rec["rho"] = reduction_ratio(f_rho, f_ref, rec["model_change"])
        if not (_finite(bt.step) and _finite(bt.value)):
            return self._finish(rec, tally, t_start, "non-finite step")
        t0 = time.perf_counter()
        alpha, f_after, reason = self._step_size(theta, bt, g, f0, grad_batch, n_grad,
                                                 same or cfg.backtrack_batch == "gradient",
                                                 G.value, curv_batch, n_curv, tally, rec)
        tally.seconds["linesearch"] = time.perf_counter() - t0
        rec.update(loss_after=f_after, step_size=alpha)
        if reason is None:
            with torch.no_grad():
                for n, d in self.layout.split(bt.step).items():
                    self.params[n].add_(d, alpha=alpha)
            rec["step_norm"] = abs(alpha) * float(bt.step.norm())
        return self._finish(rec, tally, t_start, reason or ACCEPTED)

    def _gradient(self, theta: dict[str, Tensor], batch: Any, cases: int, tally: _Tally
                  ) -> tuple[float, Tensor, Tensor | None]:
        """Objective and gradient on the gradient batch (and the diagonal EF when fused).

        With the preconditioner on the gradient batch and a model the analytic backend serves,
        the diagonal comes from the same pass, as HFDemo computes ``grad2``.
        """
        t0 = time.perf_counter()
        fused = None
        if self.config.preconditioner and self.config.precond_batch == "gradient":
            fused = value_grad_diagonal(self.problem, theta, as_chunks(batch))
        if fused is None:
            f0, g = self.problem.value_and_grad(theta, batch)
            diag = None
        else:
            f0, g, diag = fused
            tally.add("forward", cases)  # the (δ²)ᵀ(x²) matmuls cost about a forward pass
        tally.add("gradient", cases)
        tally.seconds["gradient"] = time.perf_counter() - t0
        return f0, g, diag

    def _preconditioner(self, theta: dict[str, Tensor], batch: Any, cases: int, tally: _Tally,
                        diag: Tensor | None = None) -> Tensor | None:
        if not self.config.preconditioner:
            return None
        t0 = time.perf_counter()
        if diag is None:
            diag = fisher_diagonal(self.problem, theta, as_chunks(batch))
            tally.add("gradient", cases)
        M = inverse_preconditioner(diag, self.lam, self.config.precond_exponent)
        tally.seconds["precond"] = time.perf_counter() - t0
        return M if _finite(M) else None

    def _cg(self, G: GGN | Hessian, g: Tensor, M: Tensor | None, tally: _Tally, cases: int,
            rec: dict) -> cg.CGResult:
        cfg = self.config
        zeta = rec["cg_decay"]
        max_iters = int(value_at(cfg.cg_max_iters, self.t))
        stop = [] if cfg.cg_fixed_iters else cg.MartensProgress(
            eps=cfg.cg_eps, min_gap=cfg.cg_min_gap, gap_ratio=cfg.cg_gap_ratio)
        store = cg.Geometric(cfg.cg_store_ratio, first=cfg.cg_store_first) \
            if cfg.backtracking else cg.Never()
        A = _TimedOperator(G.damped(self.lam), tally, cases)
        x0 = self.x_prev.mul(zeta) if zeta > 0 and bool(self.x_prev.any()) else None
        t0 = time.perf_counter()
        res = cg.solve(A, -g, x0=x0, M=M, stop=stop, max_iters=max_iters, store=store)
        tally.seconds["cg"] = time.perf_counter() - t0
        self.x_prev = res.x.clone()  # hot start from the last iterate (HFDemo: ch = chs{end})
        rec.update(cg_iters=res.iters, cg_reason=res.reason)
        return res

    def _backtrack(self, theta: dict[str, Tensor], res: cg.CGResult, batch: Any, cases: int,
                   tally: _Tally) -> tuple[Backtracked, float]:
        """The chosen step and the objective at the last CG iterate (for ρ before backtracking)."""
        values: dict[int, float] = {}

        def objective(step: Tensor) -> float:
            f = self._objective(theta, batch, tally, cases, step)
            values[id(step)] = f
            return f

        iterates = res.iterates if self.config.backtracking else [(res.iters, res.x)]
        bt = cg_backtrack(objective, iterates)
        return bt, values[id(iterates[-1][1])]

    def _model_change(self, G: GGN | Hessian, g: Tensor, p: Tensor, tally: _Tally,
                      cases: int) -> float:
        """q(p) − q(0) = gᵀp + ½ pᵀBp, B undamped (HFDemo) or damped; one product."""
        t0 = time.perf_counter()
        B = G.damped(self.lam) if self.config.rho_damped else G
        Bp = B._mv_flat(p)
        tally.seconds["products"] += time.perf_counter() - t0
        tally.add("product", cases)
        return float(torch.dot(g, p) + 0.5 * torch.dot(p, Bp))

    def _step_size(self, theta: dict[str, Tensor], bt: Backtracked, g: Tensor, f0: float,
                   grad_batch: Any, n_grad: int, bt_on_grad: bool, f_curv0: float,
                   curv_batch: Any, n_curv: int, tally: _Tally, rec: dict
                   ) -> tuple[float, float, str | None]:
        """Step size, gradient-batch objective after it (NaN if unknown), rejection reason."""
        cfg = self.config
        if cfg.line_search:
            ls = armijo(lambda a: self._objective(theta, grad_batch, tally, n_grad, bt.step, a),
                        f0, float(torch.dot(g, bt.step)), cfg.ls_c, cfg.ls_shrink,
                        cfg.ls_max_tries, first_value=bt.value if bt_on_grad else None)
            rec["ls_evals"] = ls.evaluations
            return (ls.alpha, ls.value, None) if ls.accepted else \
                (0.0, f0, "line search failed")
        alpha = float(value_at(cfg.learning_rate, self.t))
        rec["ls_evals"] = 0
        if not cfg.reject_worse:
            return alpha, (bt.value if bt_on_grad and alpha == 1.0 else math.nan), None
        if alpha == 1.0:
            f_new, ref = bt.value, (f0 if bt_on_grad else f_curv0)
        else:
            f_new, ref = self._objective(theta, curv_batch, tally, n_curv, bt.step, alpha), f_curv0
        if not (_finite(f_new) and f_new <= ref):
            return 0.0, f0, "loss increased"
        return alpha, (f_new if bt_on_grad else math.nan), None

    def _finish(self, rec: dict, tally: _Tally, t_start: float, reason: str) -> StepStats:
        """λ update (raised on rejection), counters, the record."""
        accepted = reason == ACCEPTED
        # a rejected step counts as ρ = NaN: λ is raised once (HFDemo treats NaN like ρ < 1/4)
        self.lam = lm_update(self.lam, rec.get("rho", math.nan) if accepted else math.nan,
                             self.config)
        defaults = dict(loss_after=math.nan, curv_loss_after=math.nan, rho=math.nan,
                        model_change=math.nan, cg_iters=0, cg_reason="", backtrack_iter=-1,
                        backtrack_evals=0, step_size=0.0, ls_evals=0, step_norm=0.0,
                        grad_norm=math.nan, curv_loss_before=math.nan, loss_before=math.nan)
        fields = {**defaults, **rec}
        if not accepted:
            fields["step_size"], fields["step_norm"] = 0.0, 0.0
        stats = StepStats(
            accepted=accepted, reason=reason, lambda_after=self.lam,
            seconds=time.perf_counter() - t_start,
            **{f"seconds_{k}": v for k, v in tally.seconds.items()}, **tally.counts,
            **{k: (float(v) if isinstance(v, Tensor) else v) for k, v in fields.items()})
        self.t += 1
        self.history.append(stats)
        return stats

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """λ, the CG hot-start vector, the step counter and the config: enough to resume."""
        return {"version": STATE_VERSION, "lam": self.lam, "step": self.t,
                "x_prev": self.x_prev.clone(), "dim": self.layout.numel,
                "config": self.config.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the config stays the one this optimizer was built with)."""
        missing = [k for k in ("lam", "step", "x_prev", "dim") if k not in state]
        if missing:
            raise ValueError(f"state: missing entries {missing}")
        if int(state["dim"]) != self.layout.numel or state["x_prev"].numel() != self.layout.numel:
            raise ValueError(f"state: saved for {int(state['dim'])} parameters, this optimizer "
                             f"has {self.layout.numel}")
        self.lam = float(state["lam"])
        self.t = int(state["step"])
        self.x_prev = state["x_prev"].detach().to(self.layout.device, self.layout.dtype).clone()
