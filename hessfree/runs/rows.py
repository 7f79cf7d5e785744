"""The row schema of ``/steps``: the columns every optimizer writes, then its own.

Every runner returns one row per update. Its first columns are shared by all optimizers, so
plots, reports and comparisons read them without knowing which optimizer wrote the file:

===============  =======  ==================================================================
column           type     meaning
===============  =======  ==================================================================
``step``         int      the update's index (0, 1, ...)
``accepted``     bool     whether the parameters moved
``reason``       str      ``"accepted"`` or why the update was rejected (HF: one of
                          ``hessfree.hf.REJECTIONS``; momentum: ``"non-finite gradient"``)
``loss``         float    objective (loss + weight decay) on the update's gradient batch,
                          before the update (NAG: at its look-ahead point)
``grad_equiv``   float    cost of the update in gradient-equivalents of the training set:
                          single-case gradients / ``n_train``, a curvature product counted as
                          a gradient, a forward pass as a third
``seconds``      float    wall-clock seconds of the update
===============  =======  ==================================================================

HF rows (``hf``, ``hf-momentum``) add every other field of :class:`hessfree.StepStats`
(``phase``, ``rho``, ``lambda_after``, ``cg_iters``, ...; its ``loss_before`` is ``loss``).
Momentum rows (``nag``, ``cm``, ``sgd``) add ``mu`` (μ of the update), ``lr`` and
``grad_cases``. ``/eval`` rows are ``step``, ``seconds``, ``grad_equiv`` (totals at the
evaluation), ``train_error``, ``test_error`` and ``train_loss``.
"""

from __future__ import annotations

from typing import Any

from hessfree.hf import StepStats

__all__ = ["EVAL", "HF_ONLY", "MOMENTUM_ONLY", "SHARED", "hf_row", "momentum_row"]

#: columns of every ``/steps`` row, in order
SHARED = ("step", "accepted", "reason", "loss", "grad_equiv", "seconds")
#: columns of every ``/eval`` row
EVAL = ("step", "seconds", "grad_equiv", "train_error", "test_error", "train_loss")
#: the columns HF rows add (every StepStats field not shared)
HF_ONLY = tuple(f for f in StepStats.field_names()
                if f not in SHARED and f != "loss_before")
#: the columns momentum rows add
MOMENTUM_ONLY = ("mu", "lr", "grad_cases")


def hf_row(stats: StepStats, n_train: int) -> dict[str, Any]:
    """The row of an HF update."""
    d = stats.as_dict()
    row = {"step": d["step"], "accepted": d["accepted"], "reason": d["reason"],
           "loss": d["loss_before"], "grad_equiv": stats.grad_equivalents / n_train,
           "seconds": d["seconds"]}
    row.update((k, d[k]) for k in HF_ONLY)
    return row


def momentum_row(step: int, accepted: bool, reason: str, loss: float, n: int, n_train: int,
                 seconds: float, mu: float, lr: float) -> dict[str, Any]:
    """The row of a NAG/CM/SGD update on ``n`` cases."""
    return {"step": step, "accepted": accepted, "reason": reason, "loss": loss,
            "grad_equiv": n / n_train, "seconds": seconds, "mu": mu, "lr": lr, "grad_cases": n}
