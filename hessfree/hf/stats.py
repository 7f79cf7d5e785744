"""``StepStats``: the record of one HF outer step (kfac-jax style), one HDF5 row in a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["StepStats", "ACCEPTED", "REJECTIONS"]

ACCEPTED = "accepted"
#: Why a step can be rejected (parameters untouched, λ raised).
REJECTIONS = (
    "non-finite gradient",   # loss or gradient on the gradient batch is NaN/Inf
    "non-finite curvature",  # the curvature batch's loss or gradient is NaN/Inf
    "non-finite step",       # the chosen step or its objective is NaN/Inf
    "line search failed",    # no Armijo step within ls_max_tries reductions
    "loss increased",        # no line search: the objective went up (reject_worse)
)


@dataclass(frozen=True)
class StepStats:
    """What happened in one call of :meth:`hessfree.HessianFree.step`.

    ``phase`` is the index of the optimizer's phase the step ran in
    (:mod:`hessfree.hf.phases`). Losses are objectives (loss + weight decay). ``loss_*`` are
    on the gradient batch, ``curv_loss_*`` on the curvature batch; ``loss_after`` is NaN when
    nothing evaluated it (no line search); ``heldout_loss_*`` are on the step's held-out batch
    (NaN without one; ``check_loss_*`` before), where ρ and rejection were then measured.
    Costs count evaluations and the cases they covered, so runs with different batch sizes
    compare in gradient-equivalents (a GGN product costs about one gradient,
    ``benchmarks/RESULTS.md``; a forward pass a third).
    """

    step: int
    phase: int
    accepted: bool
    reason: str
    loss_before: float
    loss_after: float
    curv_loss_before: float
    curv_loss_after: float
    rho: float
    model_change: float
    lambda_before: float
    lambda_after: float
    cg_iters: int
    cg_reason: str
    cg_decay: float
    backtrack_iter: int
    backtrack_evals: int
    step_size: float
    ls_evals: int
    grad_norm: float
    step_norm: float
    heldout_loss_before: float
    heldout_loss_after: float
    heldout_model_change: float
    gradients: int
    forwards: int
    products: int
    grad_cases: int
    forward_cases: int
    product_cases: int
    seconds: float
    seconds_gradient: float
    seconds_precond: float
    seconds_setup: float
    seconds_cg: float
    seconds_products: float
    seconds_backtrack: float
    seconds_stepsize: float

    @property
    def grad_equivalents(self) -> float:
        """Cost in single-case gradients: gradients + products + forwards/3, by cases."""
        return self.grad_cases + self.product_cases + self.forward_cases / 3.0

    def as_dict(self) -> dict[str, float | int | str | bool]:
        """Every field by name (the HDF5 columns)."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(f.name for f in fields(cls))
