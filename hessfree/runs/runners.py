"""One update of each optimizer family behind one :class:`Runner` protocol.

* :class:`HFRunner` (``hf``, ``hf-momentum``): a :class:`~hessfree.HessianFree` with the phase
  schedule of its settings (Martens: one phase, [M10]; momentum-like: the phases of
  [S13 A.6]); each update draws the batches its current phase asks for.
* :class:`MomentumRunner` (``nag``, ``cm``, ``sgd``): the ``torch.optim`` optimizers of
  :mod:`hessfree.momentum` ([S13 Eq. 1-5]) on minibatches; an update whose loss or gradient is
  not finite is rejected (the parameters and velocities stay as they were).

Every runner returns one row per update in the schema of :mod:`hessfree.runs.rows`, evaluates
its model where the optimizer's iterate is (NAG: at θ, not at the look-ahead point), names the
objective its next update minimises, and saves and restores its whole state.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, ContextManager, Protocol

import torch

from hessfree import momentum
from hessfree._checks import all_finite
from hessfree.curvature import Problem
from hessfree.hf import HessianFree
from hessfree.quadratic import Quadratic
from hessfree.runs.batching import GRADIENT, BatchDrawer
from hessfree.runs.experiment import Dataset
from hessfree.runs.rows import hf_row, momentum_row
from hessfree.runs.settings import GRAD_CHUNK, HFSettings, MomentumHFSettings, MomentumSettings
from hessfree.schedules import Constant

__all__ = ["HFRunner", "MomentumRunner", "Runner", "make_runner"]

QuadraticHook = Callable[[Quadratic], None]


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

    def step(self, on_quadratic: QuadraticHook | None = None) -> dict[str, Any]:
        """One update; its row (:mod:`hessfree.runs.rows`)."""

    def evaluation_context(self) -> ContextManager[None]:
        """A context in which the model holds the iterate to evaluate."""

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after ``row``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class HFRunner:
    """``hf`` and ``hf-momentum`` updates (module docstring).

    Args:
        optimizer: ``"hf"`` or ``"hf-momentum"``.
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

    def step(self, on_quadratic: QuadraticHook | None = None) -> dict[str, Any]:
        """One HF update (its batches drawn by the optimizer); its row."""
        return hf_row(self.opt.step(on_quadratic=on_quadratic), self.n_train)

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
    """``nag``, ``cm`` and ``sgd`` updates (module docstring).

    Args:
        optimizer: ``"nag"``, ``"cm"`` or ``"sgd"``.
        problem: the objective.
        data: the run's data.
        settings: :class:`MomentumSettings`.
        seed: seeds the minibatch stream.
        total_steps: the run's length in updates when known (Eq. 5's final low-μ phase).
    """

    def __init__(self, optimizer: str, problem: Problem, data: Dataset,
                 settings: MomentumSettings, seed: int, total_steps: int | None) -> None:
        self.optimizer = optimizer
        self.problem = problem
        self.settings = settings
        self.n_train = data.n_train
        self.schedule = Constant(0.0) if optimizer == "sgd" else settings.mu_schedule(total_steps)
        self.params = problem.resolve_params()
        plist = list(self.params.values())
        if optimizer == "sgd":
            self.opt: momentum.CM = momentum.SGD(plist, lr=settings.lr)
        else:
            cls = momentum.NAG if optimizer == "nag" else momentum.CM
            self.opt = cls(plist, lr=settings.lr, schedule=self.schedule)
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

    def step(self, on_quadratic: QuadraticHook | None = None) -> dict[str, Any]:
        """One update on a minibatch; its row."""
        t0 = time.perf_counter()
        n = self.settings.batch_size
        batch = self.drawer.minibatch(self._t, n, GRADIENT)
        value, grad = self.problem.value_and_grad(self.params, batch)
        ok = math.isfinite(value) and all_finite(grad)
        mu = float(self.schedule(self.opt.t))  # the optimizer's clock (rejections do not tick)
        if ok:
            sizes = [p.numel() for p in self.params.values()]
            for p, g in zip(self.params.values(), torch.split(grad, sizes)):
                p.grad = g.view(p.shape)
            self.opt.step()
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


def make_runner(optimizer: str, problem: Problem, data: Dataset, settings: Any, seed: int,
                total_steps: int | None = None) -> HFRunner | MomentumRunner:
    """The runner of ``optimizer`` with its settings record."""
    if optimizer in ("hf", "hf-momentum"):
        return HFRunner(optimizer, problem, data, settings, seed)
    return MomentumRunner(optimizer, problem, data, settings, seed, total_steps)
