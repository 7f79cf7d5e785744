"""One update of an optimizer family behind one :class:`Runner` protocol.

* :class:`HFRunner`: a :class:`~hessfree.HessianFree` with the phase schedule of its settings
  (Martens: one phase, [M10]; momentum-like: the phases of [S13 A.6]); each update draws the
  batches its current phase asks for.
* :class:`MomentumRunner`: an optimizer of :mod:`hessfree.momentum` ([S13 Eq. 1-5]: CM, NAG,
  SGD, built by the family) on minibatches; an update whose loss or gradient is not finite is
  rejected by the optimizer itself (``skip_non_finite``: parameters, velocities and μ's clock
  stay as they were).

Which family uses which runner is registered once, in :mod:`hessfree.runs.families`. Every
runner returns one row per update in the schema of :mod:`hessfree.runs.rows`, evaluates its
model where the optimizer's iterate is (NAG: at θ, not at the look-ahead point), names the
objective its next update minimises, and saves and restores its whole state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, ContextManager, Protocol

import torch

from hessfree import momentum
from hessfree.curvature import Problem
from hessfree.errors import InputTypeError
from hessfree.hf import HessianFree
from hessfree.hf.phases import PhaseSchedule
from hessfree.quadratic import Quadratic
from hessfree.runs.batching import GRADIENT, BatchDrawer
from hessfree.runs.dataset import Dataset
from hessfree.runs.rows import hf_row, momentum_row
from hessfree.runs.settings import GRAD_CHUNK, HFSettings, MomentumHFSettings, MomentumSettings
from hessfree.vectors import ParamLayout

__all__ = ["HFRunner", "MomentumOptimizer", "MomentumRunner", "Runner"]

QuadraticHook = Callable[[Quadratic], None]
#: ``(parameters, settings, total updates or None) -> optimizer``: how a momentum family builds
#: its optimizer (it must reject non-finite updates: ``skip_non_finite=True``)
MomentumOptimizer = Callable[[list[torch.Tensor], MomentumSettings, "int | None"], momentum.CM]


class Runner(Protocol):
    """What the trainer needs from an optimizer family."""

    #: the optimizer's name (``hf``, ``nag``, ...)
    optimizer: str

    @property
    def t(self) -> int:
        """Updates taken."""

    @property
    def objective(self) -> Problem:
        """The problem the next update minimises (evaluated as ``train_loss``)."""

    @property
    def stop_reason(self) -> str | None:
        """Why no further update can make progress (the run ends), or None."""

    @property
    def phases(self) -> PhaseSchedule | None:
        """The optimizer's phase schedule (recorded in the results file), or None."""

    def step(self, on_quadratic: QuadraticHook | None = None) -> dict[str, Any]:
        """One update; its row (:mod:`hessfree.runs.rows`).

        A runner whose class sets ``stops_on_time = True`` also takes ``deadline`` (a
        :func:`time.perf_counter` value or None) and ends its update by then, cutting its own
        work (HF: CG stops early); the trainer passes it under a ``--seconds`` budget.
        """

    def evaluation_context(self) -> ContextManager[None]:
        """A context in which the model holds the iterate to evaluate."""

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after ``row``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class HFRunner:
    """HF updates (module docstring).

    Args:
        optimizer: the family's name.
        problem: the objective (model, loss, weight decay).
        data: the run's data.
        settings: :class:`HFSettings` or :class:`MomentumHFSettings`.
        seed: seeds the batch streams.
    """

    def __init__(self, optimizer: str, problem: Problem, data: Dataset,
                 settings: HFSettings | MomentumHFSettings, seed: int) -> None:
        self.optimizer = optimizer
        self.n_train = data.n_train
        self.schedule = settings.phases(self.n_train, data.fresh is not None)
        self.drawer = BatchDrawer(data, seed, settings.grad_chunk, *_place(problem))
        # the optimizer draws each update's batches from the drawer, as its phase says
        self.opt = HessianFree(problem, config=settings.config, phases=self.schedule,
                               source=self.drawer)

    @property
    def t(self) -> int:
        """Updates taken."""
        return self.opt.t

    @property
    def objective(self) -> Problem:
        """The problem of the current phase."""
        return self.opt.objective

    @property
    def stop_reason(self) -> str | None:
        """The optimizer's reason to stop (e.g. λ at its maximum with no progress), or None."""
        return self.opt.stop_reason

    @property
    def phases(self) -> PhaseSchedule:
        """The phase schedule of the settings."""
        return self.schedule

    #: an update ends by the trainer's deadline (CG stops early: reason ``"deadline"``)
    stops_on_time = True

    def step(self, on_quadratic: QuadraticHook | None = None, deadline: float | None = None
             ) -> dict[str, Any]:
        """One HF update (its batches drawn by the optimizer); its row.

        ``deadline``: CG stops in time for the step to end by it.
        """
        self.opt.deadline = deadline
        try:
            stats = self.opt.step(on_quadratic=on_quadratic)
        finally:
            self.opt.deadline = None
        return hf_row(stats, self.n_train)

    def evaluation_context(self) -> ContextManager[None]:
        """HF's parameters are its iterate."""
        return contextlib.nullcontext()

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """Loss, λ and CG iterations."""
        return {"loss": f"{row['loss']:.4g}", "lam": f"{row['lambda_after']:.3g}",
                "cg": str(row["cg_iters"])}

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state and the batch streams'."""
        return {"opt": self.opt.state_dict(), "batches": self.drawer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.opt.load_state_dict(state["opt"])
        self.drawer.load_state_dict(state["batches"])


class MomentumRunner:
    """Momentum updates (module docstring).

    Args:
        optimizer: the family's name.
        problem: the objective.
        data: the run's data.
        settings: :class:`MomentumSettings`.
        seed: seeds the minibatch stream.
        total_steps: the run's length in updates when known (Eq. 5's final low-μ phase).
        build: the family's optimizer (:data:`MomentumOptimizer`).
    """

    def __init__(self, optimizer: str, problem: Problem, data: Dataset,
                 settings: MomentumSettings, seed: int, total_steps: int | None,
                 build: MomentumOptimizer) -> None:
        self.optimizer = optimizer
        self.problem = problem
        self.settings = settings
        self.n_train = data.n_train
        self.params = problem.resolve_params()
        self.layout = ParamLayout.from_params(self.params)
        self.opt = build(list(self.params.values()), settings, total_steps)
        if not isinstance(self.opt, momentum.CM) or not self.opt.skip_non_finite:
            raise InputTypeError(f"family {optimizer!r}: its optimizer must be a hessfree.momentum "
                                 "optimizer that rejects non-finite updates "
                                 "(skip_non_finite=True)")
        self.drawer = BatchDrawer(data, seed, GRAD_CHUNK, *_place(problem))
        self._t = 0

    @property
    def t(self) -> int:
        """Updates taken (rejected ones included)."""
        return self._t

    @property
    def objective(self) -> Problem:
        """The problem (momentum methods have no phases)."""
        return self.problem

    @property
    def stop_reason(self) -> str | None:
        """Momentum methods run to the end of their budget."""
        return None

    @property
    def phases(self) -> None:
        """Momentum methods have no phases."""
        return None

    def step(self, on_quadratic: QuadraticHook | None = None) -> dict[str, Any]:
        """One update on a minibatch; its row (the optimizer rejects a non-finite one)."""
        t0 = time.perf_counter()
        n = self.settings.batch_size
        batch = self.drawer.minibatch(self._t, n, GRADIENT)

        def closure() -> float:
            value, grad = self.problem.value_and_grad(self.params, batch)
            for p, g in zip(self.params.values(), self.layout.split(grad).values()):
                p.grad = g
            return value

        mu = self.opt.mu  # μ of this update, on the optimizer's clock (rejections do not tick)
        rejected = self.opt.rejected
        value = self.opt.step(closure)
        ok = self.opt.rejected == rejected
        self._t += 1
        return momentum_row(self._t - 1, ok, "accepted" if ok else "non-finite gradient", value,
                            n, self.n_train, time.perf_counter() - t0, mu,
                            float(self.settings.lr))

    def evaluation_context(self) -> ContextManager[None]:
        """NAG holds the look-ahead point; evaluate at the true iterate θ."""
        return self.opt.at_true_params()

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """Loss and μ."""
        return {"loss": f"{row['loss']:.4g}", "mu": f"{row['mu']:.3f}"}

    def state_dict(self) -> dict[str, Any]:
        """Velocities, counters and the minibatch stream."""
        return {"opt": self.opt.state_dict(), "t": self._t, "batches": self.drawer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.opt.load_state_dict(state["opt"])
        self._t = int(state["t"])
        self.drawer.load_state_dict(state["batches"])


def _place(problem: Problem) -> tuple[int, int]:
    """This process's (rank, world size) for sharding batches."""
    r = problem.reducer
    return (0, 1) if r is None else (r.rank, r.world_size)
