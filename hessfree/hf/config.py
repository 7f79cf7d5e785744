"""``HFConfig``: every setting of the HF driver, with its paper value as default.

Sources (keys of ``docs/references.md``): Martens (2010) [M10 §4] and his HFDemo code
``nnet_train_2.m`` / ``conjgrad_1.m`` [HFDemo], Sutskever's HF-RNN code [HF-RNN], Sutskever et al.
(2013) [S13 A.6]. Earlier ports changed several of these silently ([Other HF codes]); here each is
a named field.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from hessfree import _checks
from hessfree import schedules as _schedules
from hessfree.curvature.products import BACKENDS
from hessfree.errors import InputError

__all__ = ["HFConfig"]

_SCHEDULABLE = ("learning_rate", "cg_decay", "cg_max_iters")
#: the curvature matrices HF can use
CURVATURES = ("ggn", "hessian")
#: batches of the CG-backtracking objective; rules choosing among the stored iterates
BACKTRACK_BATCHES = ("gradient", "curvature", "heldout")
BACKTRACK_RULES = ("walk-back", "best")
#: step-size searches: HFDemo's Armijo, HF-RNN's first decrease
LS_RULES = ("armijo", "first-decrease")


@_checks.accepts_renamed
@dataclass(frozen=True)
class HFConfig:
    """Settings of :class:`hessfree.HessianFree`; defaults are Martens' (2010, HFDemo code).

    Attributes:
        initial_lambda: initial Tikhonov damping λ; HFDemo ``initlambda = 45`` (λ is added to the
            curvature of the *mean* loss, as here; [HFDemo], [M10]).
        lambda_min: lower bound on λ (none in Martens' code: 0).
        lambda_max: upper bound on λ, 1e10. Martens' code has none, and on a problem where no
            step makes progress (converged, or a loss at the limit of its precision) λ then grows
            ×3/2 per step until it overflows; here a step that would raise λ past this bound
            ends the run instead (:attr:`HessianFree.stop_reason`).
        lm_lower: ρ below this raises λ; 1/4 ([M10 §4.1]; [HFDemo]).
        lm_upper: ρ above this lowers λ; 3/4.
        lm_boost: factor raising λ; 3/2 (HFDemo ``boost = 1/drop``).
        lm_drop: factor lowering λ; 2/3 (HFDemo ``drop``).
        rho_damped: ρ's denominator uses the damped model; False as in HFDemo ("disabling the
            damping when computing rho is something I'm not 100% sure about").
        rho_after_backtracking: ρ uses the CG-backtracked step (HFDemo) rather than the last
            CG iterate (ltatzel's port, [Other HF codes]).
        curvature: ``"ggn"`` (Gauss-Newton, [M10 §4.2]; [HFDemo]: "the other choices probably
            won't work") or ``"hessian"``.
        backend: curvature-product backend (``hessfree.GGN``'s ``backend``).
        structural_damping: μ; adds μλ times the hidden-unit Gauss-Newton term to the curvature
            CG sees ([M&S11]; [HF-RNN]: μ = 0.03, relative to λ).
            0 switches it off.
        cg_max_iters: CG iteration cap, 250 ([HFDemo]: "the ICML paper had maxiters=250 for
            everything"); int or schedule.
        cg_eps: Martens' relative-progress tolerance, 5e-4 ([M10 §4.4]; ``conjgrad_1.m``).
        cg_min_gap: minimum progress window, 10 (``mingap``).
        cg_gap_ratio: progress window as a fraction of i, 0.1 (``gapratio``).
        cg_fixed_iters: run exactly ``cg_max_iters`` iterations, no progress test (the momentum-
            like variant, [S13 A.6]: 50 CG steps per update).
        cg_decay: hot-start decay ζ: CG starts from ζ times the previous (last, not backtracked)
            CG solution ([M10 §4.5]); 0.95 ([HFDemo], "not in the paper ... can help a lot"); float
            or schedule.
        cg_store_first: first stored iterate for backtracking, 5 (``inext = 5``).
        cg_store_ratio: growth of the stored-iterate grid, 1.3 (``imult = 1.3``).
        cg_store_every: 0 for the geometric grid above; k >= 1 keeps x_1, x_{1+k}, x_{1+2k}, ...
            and the last iterate only when CG stopped before its cap ([HF-RNN]: the solution is
            evaluated when ``i % cg_eval_freq == 0``, ``cg_eval_freq = 10``, and when CG stops
            early).
        backtracking: CG-backtracking over the stored iterates ([M10 §4.6]); switch.
        backtrack_batch: the batch of the backtracking objective: ``"gradient"`` (HFDemo's
            active "full training set version"; the "current mini-batch version" is commented
            out there), ``"curvature"``, or ``"heldout"`` (a batch the step was not fitted to,
            ``HessianFree.step``'s ``backtrack_batch``; [HF-RNN] ``BT_eval = 'objective'`` on
            ``BT_batches``). ρ is measured on the curvature batch whatever this is (HFDemo:
            ``ll_chunk``; [HF-RNN]: ``RHO_batches = GN_batches``).
        backtrack_rule: ``"walk-back"`` (HFDemo: from the last stored iterate back while the
            objective does not get worse) or ``"best"`` ([HF-RNN]: the stored iterate with the
            lowest objective, the first one on ties).
        preconditioner: diagonal empirical-Fisher preconditioner ([M10 §4.7]); switch.
        precond_exponent: its exponent, 0.75 (HFDemo ``(grad2 + λ + weightcost).^(3/4)``).
        precond_batch: ``"gradient"`` (HFDemo: per-case gradients of the full training set) or
            ``"curvature"``.
        line_search: a step-size search (``ls_rule``) from rate ``learning_rate``; switch.
        ls_rule: ``"armijo"`` (HFDemo: sufficient decrease with ``ls_c``) or
            ``"first-decrease"`` ([HF-RNN] ``line_search``: the first rate with any decrease).
        ls_batch: ``"gradient"`` (HFDemo: the whole training set) or ``"heldout"`` (the step's
            ``search_batch``; [HF-RNN]: ``line_search_batches = [2]``, a third training batch).
        ls_c: sufficient-decrease constant, 1e-2 (HFDemo ``c = 10^(-2)``).
        ls_shrink: step shrink factor, 0.8 (HFDemo ``rate = 0.8*rate``; [HF-RNN] ``.8**i``).
        ls_max_tries: rates tried before the step is rejected: 60 (HFDemo: rates 0.8^0 ...
            0.8^59 are tested, the 60th reduction rejects); [HF-RNN]: 50 (``range(50)``, then 0).
        learning_rate: step size ε (with the line search: the rate it starts from); 1
            ([S13 A.6]); float or schedule.
        reject_worse: without a line search, reject a step that raises the curvature-batch
            objective (with one, Armijo decides); with a held-out batch, the held-out objective.
        reject_on_heldout: with a held-out batch, ``reject_worse`` judges the step there (True) or
            on the batch it was fitted to (False; ρ still comes from the held-out batch).
        reset_on_reject: after a rejected step, start the next CG from ζ times the solution
            before it, not the rejected one (HFDemo carries the rejected solution: False).
        zero_on_reject: after a rejected step, start the next CG from zero ([HF-RNN]: "setting
            CG_x to zero because we chose a stepsize of 0").
        boost_on_reject: a step the step-size search rejects raises λ ×``lm_boost`` (True) or λ
            follows the step's ρ (False: HFDemo and [HF-RNN] compute ρ before the search, and a
            search that ends at rate 0 does not change it). A step rejected for a non-finite
            value has ρ = NaN and raises λ either way (HFDemo ``isnan(rho)``).
    """

    initial_lambda: float = 45.0
    lambda_min: float = 0.0
    lambda_max: float = 1e10
    lm_lower: float = 0.25
    lm_upper: float = 0.75
    lm_boost: float = 1.5
    lm_drop: float = 2.0 / 3.0
    rho_damped: bool = False
    rho_after_backtracking: bool = True
    curvature: str = "ggn"
    backend: str = "auto"
    structural_damping: float = 0.0
    cg_max_iters: Any = 250
    cg_eps: float = 5e-4
    cg_min_gap: int = 10
    cg_gap_ratio: float = 0.1
    cg_fixed_iters: bool = False
    cg_decay: Any = 0.95
    cg_store_first: int = 5
    cg_store_ratio: float = 1.3
    cg_store_every: int = 0
    backtracking: bool = True
    backtrack_batch: str = "gradient"
    backtrack_rule: str = "walk-back"
    preconditioner: bool = True
    precond_exponent: float = 0.75
    precond_batch: str = "gradient"
    line_search: bool = True
    ls_rule: str = "armijo"
    ls_batch: str = "gradient"
    ls_c: float = 1e-2
    ls_shrink: float = 0.8
    ls_max_tries: int = 60
    learning_rate: Any = 1.0
    reject_worse: bool = True
    reject_on_heldout: bool = True
    reset_on_reject: bool = False
    zero_on_reject: bool = False
    boost_on_reject: bool = False

    #: fields an earlier hessfree wrote, by today's name: saved configs, results files and
    #: ``--set`` still read them (the held-out batch was the "check" batch)
    RENAMED: ClassVar[dict[str, str]] = {"reject_on_check": "reject_on_heldout"}

    def __post_init__(self) -> None:
        """Validate every field; raise ``ValueError`` naming the field."""
        _check(self)

    # -- presets ------------------------------------------------------------------------------
    @classmethod
    def martens2010(cls, **overrides: Any) -> HFConfig:
        """Martens (2010) as in his HFDemo code's active lines: every default above.

        Among them: CG-backtracking on the gradient batch (HFDemo's "full training set
        version"), ρ on the curvature chunk with the undamped model, Armijo on the gradient
        batch (c = 1e-2, ×0.8, rates 0.8^0 ... 0.8^59), λ0 = 45, ζ = 0.95, at most 250 CG
        iterations with Martens' progress test, iterates kept at ⌈5·1.3ʲ⌉, preconditioner
        (diag EF + λ + weight cost)^0.75. The batches themselves (the whole training set for the
        gradient, one of ``numchunks`` chunks for the curvature) are the caller's
        (``hessfree.runs.settings.HFSettings``).
        """
        return cls(**overrides)

    @classmethod
    def hf_rnn(cls, **overrides: Any) -> HFConfig:
        """HF as Sutskever's HF-RNN code runs it ([HF-RNN] ``opt/hf.py``, ``opt/r/demo.py``).

        No preconditioner; CG from 0.95 × the last CG solution, at most 300 iterations
        (``max_cg_iter = 300``) with Martens' progress test, which the code applies at every
        iteration (``min_cg_iter = 299`` only gates its unused stop on the curvature batch's
        objective; the demo's comment "we use exactly 300 CG steps" describes the cap, not the
        code path; ``cg_fixed_iters=True`` gives the comment's reading); CG-backtracking on the
        objective of a held-out batch (``BT_eval = 'objective'``), evaluated at iterates 1, 11,
        21, ... and the early-stopped last one, keeping the best; ρ on the curvature batch with
        the damped model (``model(..., damp=True)``); then the first of 0.8^i, i < 50, that
        lowers the objective of a third batch, else no step and the next CG starts from zero;
        λ follows ρ either way. Structural damping μ = 0.03 and the initial λ (0.01 × the
        task's ``num_outputs``) are the caller's (``structural_damping``, ``initial_lambda``).
        """
        base = dict(preconditioner=False, cg_max_iters=300, cg_decay=0.95, cg_store_every=10,
                    backtrack_batch="heldout", backtrack_rule="best", rho_damped=True,
                    rho_after_backtracking=True, line_search=True, ls_rule="first-decrease",
                    ls_batch="heldout", ls_shrink=0.8, ls_max_tries=50, learning_rate=1.0,
                    zero_on_reject=True, boost_on_reject=False)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def momentum_like(cls, **overrides: Any) -> HFConfig:
        """The momentum-like HF of Sutskever et al. (2013) ([S13 §5], [S13 A.6]).

        Learning rate 1 (decay it with a schedule late in training), a fixed number of CG
        steps per update (50), hot-start decay ζ = 0.95 to be raised by a schedule (e.g.
        ``Ramp(0.95, 0.999, ...)``), gradient on the current minibatch only (the trainer's job).
        A.6 does not say whether CG-backtracking was kept; it is off here, so the update is the
        hot-started CG iterate, as in the paper's analogy with NAG (UNCONFIRMED).

        Stability in the minibatch regime (hessfree's choices, measured in
        ``benchmarks/RESULTS.md``, "Momentum-like HF"):

        * ρ from a *held-out batch* (``HessianFree.step(heldout_batch=...)``; the trainer draws a
          second minibatch), compared with the quadratic model built with the held-out batch's own
          gradient: it measures whether the curvature model holds along the step. With ρ on
          the minibatch the step was fitted to, ρ stays near 1 whatever the step does to other
          cases, λ falls to ~1e-4 and the run wanders (CURVES: training error rising from 2.3
          to 3.9).
        * Armijo backtracking on the fitted minibatch from the scheduled rate ε
          (``line_search=True``) instead of rejecting a step that raises its objective. With
          ρ ≈ 1 step after step, Levenberg-Marquardt lowers λ by 2/3 each time until a step
          overshoots; in the minibatch regime that step raised the fitted loss and was
          rejected, and each rejection raised λ by only 3/2, so rejections came in bursts of
          4-5 (CURVES: 10 of the first 100 steps, 50 CG steps each thrown away). Shortened
          instead, the overshooting step still makes progress while λ climbs back, as in
          Martens' HF: 0 of 103 steps rejected, and training error 5.5 at 251
          gradient-equivalents where the rejecting variant was at 7.9.
        """
        base = dict(line_search=True, learning_rate=1.0, cg_fixed_iters=True, cg_max_iters=50,
                    cg_decay=0.95, backtracking=False, reject_worse=True,
                    reject_on_heldout=False, boost_on_reject=True)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> HFConfig:
        """A copy with ``changes`` applied (validated); an old name warns and still applies."""
        for old, new in self.RENAMED.items():
            if old in changes:
                warnings.warn(f"HFConfig: {old} is now called {new}; the old name goes in the "
                              "next release", DeprecationWarning, stacklevel=2)
                changes.setdefault(new, changes.pop(old))
        return replace(self, **changes)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (schedules as ``{"schedule": name, ...}``)."""
        d = asdict(self)
        for name in _SCHEDULABLE:
            d[name] = _schedules.to_dict(getattr(self, name))
        return d

    def to_json(self) -> str:
        """``to_dict`` as JSON (infinity written as the string "inf")."""
        d = self.to_dict()
        for k, v in d.items():
            if isinstance(v, float) and math.isinf(v):
                d[k] = "inf" if v > 0 else "-inf"
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HFConfig:
        """Inverse of :meth:`to_dict` / :meth:`to_json` (old names read, unknown keys raise)."""
        d = {cls.RENAMED.get(k, k): v for k, v in d.items()
             if not (k in cls.RENAMED and cls.RENAMED[k] in d)}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"config: unknown fields {unknown}; known: {sorted(names)}")
        kw = {}
        for k, v in d.items():
            if v in ("inf", "-inf"):
                v = float(v)
            kw[k] = _schedules.from_dict(v) if k in _SCHEDULABLE else v
        return cls(**kw)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _schedulable(cfg: HFConfig, name: str, lo: float, hi: float, integer: bool = False) -> None:
    v = getattr(cfg, name)
    if callable(v):
        return
    try:
        if integer:
            _checks.integer(v, name, int(lo), int(hi))
        else:
            _checks.number(v, name, lo, hi)
    except ValueError:
        raise InputError(f"{name}: expected {'an integer' if integer else 'a number'} in "
                         f"[{lo:g}, {hi:g}] or a schedule t -> value, got {v!r}") from None


def _check(cfg: HFConfig) -> None:
    for name in ("initial_lambda", "lambda_min", "structural_damping"):
        _checks.number(getattr(cfg, name), name, 0.0)
    _checks.number(cfg.lambda_max, "lambda_max", 0.0, allow_inf=True)
    for name in ("lm_boost", "cg_eps", "cg_store_ratio", "precond_exponent", "ls_c"):
        _checks.number(getattr(cfg, name), name, 0.0, strict_min=True)
    if cfg.lambda_max < cfg.lambda_min:
        raise InputError(f"lambda_max: expected >= lambda_min ({cfg.lambda_min}), "
                         f"got {cfg.lambda_max}")
    if not cfg.lambda_min <= cfg.initial_lambda <= cfg.lambda_max:
        raise InputError(f"initial_lambda: expected within [lambda_min, lambda_max] = "
                         f"[{cfg.lambda_min:g}, {cfg.lambda_max:g}], got {cfg.initial_lambda!r}")
    lo, hi = cfg.lm_lower, cfg.lm_upper
    if not (_real(lo) and _real(hi) and 0 < lo <= hi):
        raise InputError(f"lm_lower/lm_upper: expected 0 < lm_lower <= lm_upper, got {lo!r} and "
                         f"{hi!r}")
    _checks.number(cfg.lm_boost, "lm_boost", 1.0, strict_min=True)
    _checks.number(cfg.lm_drop, "lm_drop", 0.0, 1.0, strict_min=True, strict_max=True)
    _checks.number(cfg.cg_store_ratio, "cg_store_ratio", 1.0, strict_min=True)
    _checks.number(cfg.ls_shrink, "ls_shrink", 0.0, 1.0, strict_min=True, strict_max=True)
    _checks.number(cfg.ls_c, "ls_c", 0.0, 1.0, strict_min=True, strict_max=True)
    for name in ("cg_min_gap", "cg_store_first", "ls_max_tries"):
        _checks.integer(getattr(cfg, name), name, minimum=1)
    _schedulable(cfg, "cg_decay", 0.0, 1.0)
    _schedulable(cfg, "cg_max_iters", 1, 100_000, integer=True)
    _schedulable(cfg, "learning_rate", 0.0, math.inf)
    _checks.number(cfg.cg_gap_ratio, "cg_gap_ratio", 0.0, 1.0, strict_min=True)
    _checks.choice(cfg.curvature, "curvature", CURVATURES)
    if cfg.curvature == "hessian" and cfg.structural_damping:
        raise InputError("structural_damping: only defined for curvature='ggn'")
    _checks.choice(cfg.precond_batch, "precond_batch", ("gradient", "curvature"))
    _checks.choice(cfg.backtrack_batch, "backtrack_batch", BACKTRACK_BATCHES)
    _checks.choice(cfg.backtrack_rule, "backtrack_rule", BACKTRACK_RULES)
    _checks.choice(cfg.ls_rule, "ls_rule", LS_RULES)
    _checks.choice(cfg.ls_batch, "ls_batch", ("gradient", "heldout"))
    _checks.integer(cfg.cg_store_every, "cg_store_every", minimum=0)
    if cfg.ls_batch == "heldout" and cfg.ls_rule == "armijo":
        raise InputError("ls_batch: Armijo's test needs the gradient of the batch it searches "
                         "on; 'heldout' goes with ls_rule='first-decrease'")
    for name in ("rho_damped", "rho_after_backtracking", "cg_fixed_iters", "backtracking",
                 "preconditioner", "line_search", "reject_worse", "reject_on_heldout",
                 "reset_on_reject", "zero_on_reject", "boost_on_reject"):
        _checks.boolean(getattr(cfg, name), name)
    _checks.choice(cfg.backend, "backend", ("auto", *BACKENDS))
