"""Momentum baselines exactly as Sutskever, Martens, Dahl & Hinton (2013) Eq. 1-4, and μ schedules.

Classical momentum (CM), Eq. 1-2::

    v_{t+1} = μ_t v_t − ε ∇f(θ_t),        θ_{t+1} = θ_t + v_{t+1}

Nesterov's accelerated gradient (NAG), Eq. 3-4::

    v_{t+1} = μ_t v_t − ε ∇f(θ_t + μ_t v_t),        θ_{t+1} = θ_t + v_{t+1}

NAG without a second forward pass (change of variables of Sutskever's thesis and Bengio et al.
2013, valid for a time-varying μ_t). The parameters the model holds are the look-ahead point
``φ_t = θ_t + μ_t v_t``, where the gradient ``g_t = ∇f(φ_t)`` is taken. Then
``v_{t+1} = μ_t v_t − ε g_t`` and::

    φ_{t+1} = θ_{t+1} + μ_{t+1} v_{t+1}
            = θ_t + v_{t+1} + μ_{t+1} v_{t+1}
            = (φ_t − μ_t v_t) + v_{t+1} + μ_{t+1} v_{t+1}
            = φ_t − ε g_t + μ_{t+1} v_{t+1}          (since v_{t+1} − μ_t v_t = −ε g_t)

With ``v_0 = 0``, ``φ_0 = θ_0``. The true iterate is ``θ_t = φ_t − μ_t v_t``
(:meth:`NAG.true_params`, :meth:`NAG.at_true_params`). For constant μ this is
``torch.optim.SGD(nesterov=True)``, whose buffer is ``b = −v/ε``; CM is ``SGD(momentum=μ)``
with the same buffer relation.

Schedules (plain picklable callables ``t -> μ_t``): :class:`SutskeverSchedule` (Eq. 5 and the
low-momentum final phase, papers.md §1.2), :class:`RNNSchedule` (§4, papers.md §1.6),
:class:`ConstantSchedule`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["CM", "NAG", "SGD", "ConstantSchedule", "RNNSchedule", "SutskeverSchedule"]


def _check_mu(value: Any, arg: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 <= value <= 1.0:
        raise ValueError(f"{arg}: expected a momentum coefficient in [0, 1], got {value!r}")
    return float(value)


def _check_count(value: Any, arg: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg}: expected an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ConstantSchedule:
    """``μ_t = mu`` for every ``t``."""

    mu: float

    def __post_init__(self) -> None:
        _check_mu(self.mu, "mu")

    def __call__(self, t: int) -> float:
        """μ at update ``t``."""
        _check_count(t, "t")
        return float(self.mu)


@dataclass(frozen=True)
class SutskeverSchedule:
    """Eq. 5 of Sutskever et al. (2013): ``μ_t = min(1 − 2^(−1 − log2(⌊t/250⌋ + 1)), μ_max)``.

    Equivalently ``1 − 1/(2(k + 1))`` with ``k = ⌊t/warm⌋``: 0.5, 0.75, ..., 0.9 at t = 1000,
    0.99 at 12,250, 0.999 at 124,750 (papers.md §1.2). When ``total_steps`` is given, μ is
    reduced to ``final_mu`` (0.9) during the last ``final_steps`` (1000) updates, "without
    reducing the learning rate" and "unless µ is 0": the final μ is ``min(μ_t, final_mu)``, so
    μ is never raised (μ_max = 0 stays 0).

    Args:
        mu_max: the cap, chosen in the paper from {0.999, 0.995, 0.99, 0.9, 0}.
        warm: updates per schedule stage (250).
        final_mu: the momentum of the final phase (0.9).
        final_steps: length of the final phase (1000).
        total_steps: the run's number of updates; ``None``: no final phase.
    """

    mu_max: float
    warm: int = 250
    final_mu: float = 0.9
    final_steps: int = 1000
    total_steps: int | None = None

    def __post_init__(self) -> None:
        _check_mu(self.mu_max, "mu_max")
        _check_count(self.warm, "warm", 1)
        _check_mu(self.final_mu, "final_mu")
        _check_count(self.final_steps, "final_steps")
        if self.total_steps is not None:
            _check_count(self.total_steps, "total_steps")

    def __call__(self, t: int) -> float:
        """μ at update ``t`` (``t = 0`` is the first update)."""
        _check_count(t, "t")
        k = t // self.warm
        mu = min(1.0 - 0.5 / (k + 1), float(self.mu_max))  # 2^(-1-log2(k+1)) = 1/(2(k+1))
        if self.total_steps is not None and t >= self.total_steps - self.final_steps:
            mu = min(mu, float(self.final_mu))
        return mu


@dataclass(frozen=True)
class RNNSchedule:
    """Sutskever et al. (2013) §4: ``μ = 0.9`` for the first 1000 updates, then ``mu0``.

    Args:
        mu0: the momentum after the warm phase, in the paper from {0, 0.9, 0.98, 0.995}.
        warm_mu: the momentum of the warm phase (0.9).
        warm_steps: its length in updates (1000).
    """

    mu0: float
    warm_mu: float = 0.9
    warm_steps: int = 1000

    def __post_init__(self) -> None:
        _check_mu(self.mu0, "mu0")
        _check_mu(self.warm_mu, "warm_mu")
        _check_count(self.warm_steps, "warm_steps")

    def __call__(self, t: int) -> float:
        """μ at update ``t``."""
        _check_count(t, "t")
        return float(self.warm_mu if t < self.warm_steps else self.mu0)


def _as_schedule(schedule: Any) -> Callable[[int], float]:
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        return ConstantSchedule(_check_mu(schedule, "schedule"))
    if not callable(schedule):
        raise TypeError(
            f"schedule: expected a number in [0, 1] or a callable t -> mu, got "
            f"{type(schedule).__name__}"
        )
    return schedule


def _mu(schedule: Callable[[int], float], t: int) -> float:
    mu = schedule(t)
    if isinstance(mu, Tensor) and mu.numel() == 1:
        mu = mu.item()
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0.0 <= mu <= 1.0:
        raise ValueError(f"schedule: returned {mu!r} at t = {t}; expected a number in [0, 1]")
    return float(mu)


class CM(Optimizer):
    """Classical momentum, Sutskever et al. (2013) Eq. 1-2, with a μ schedule.

    Used the usual way: ``loss.backward()``, then ``opt.step()``. Parameters without a gradient
    are skipped (as in ``torch.optim.SGD``). Counters: :attr:`t` (updates taken, the schedule's
    clock, shared by all parameter groups) and :attr:`grads_used` (gradient evaluations: one per
    update). ``state_dict()`` holds the velocities ``v``, the groups (``lr``, ``schedule``) and the
    counters, so ``load_state_dict`` resumes exactly.

    Args:
        params: parameters or parameter groups (a group may set its own ``lr``/``schedule``).
        lr: the learning rate ε (> 0).
        schedule: μ as a number in [0, 1] or a callable ``t -> μ_t`` (e.g.
            :class:`SutskeverSchedule`; use picklable schedules if the state is saved to disk).
    """

    nesterov = False

    def __init__(self, params: Iterable[Any], lr: float, schedule: Any = 0.9) -> None:
        self.t = 0
        self.grads_used = 0
        super().__init__(params, {"lr": lr, "schedule": schedule})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its ``lr`` and ``schedule``."""
        group = dict(param_group)
        for key in ("lr", "schedule"):
            if key not in group:
                group[key] = self.defaults[key]
        lr = group["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
                math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
        group["schedule"] = _as_schedule(group["schedule"])
        _mu(group["schedule"], 0)  # fail early on a schedule that cannot give μ_0
        super().add_param_group(group)

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise TypeError(f"{type(self).__name__}: sparse gradients are not supported")
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            bufs.append(state["momentum_buffer"])
        return params, grads, bufs

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update with the gradients in ``p.grad`` (``closure`` re-evaluates the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # every μ first, so that a bad schedule value leaves all state untouched
        mus = [(_mu(g["schedule"], self.t), _mu(g["schedule"], self.t + 1) if self.nesterov
                else 0.0) for g in self.param_groups]
        for group, (mu, mu_next) in zip(self.param_groups, mus):
            params, grads, bufs = self._gather(group)
            if not params:
                continue
            lr = group["lr"]
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads, alpha=-lr)  # v ← μ_t v − ε g_t
            if self.nesterov:
                torch._foreach_add_(params, grads, alpha=-lr)
                torch._foreach_add_(params, bufs, alpha=mu_next)  # φ ← φ − ε g + μ_{t+1} v
            else:
                torch._foreach_add_(params, bufs)  # θ ← θ + v (Eq. 2)
        self.t += 1
        self.grads_used += 1
        return loss

    def true_params(self) -> list[Tensor]:
        """θ_t for every parameter of every group, in order (new tensors, no graph)."""
        return [p.detach().clone() for g in self.param_groups for p in g["params"]]

    @contextmanager
    def at_true_params(self) -> Iterator[None]:
        """Temporarily hold θ_t in the parameters (for evaluation); restored exactly on exit.

        Do not call :meth:`step` inside: the parameters are put back as they were on exit.
        """
        params = [p for g in self.param_groups for p in g["params"]]
        saved = [p.detach().clone() for p in params]
        theta = self.true_params()
        with torch.no_grad():
            for p, value in zip(params, theta):
                p.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(params, saved):
                    p.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """Torch's optimizer state plus the counters ``t`` and ``grads_used``."""
        state = super().state_dict()
        state["counters"] = {"t": self.t, "grads_used": self.grads_used}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore velocities, groups and counters saved by :meth:`state_dict`."""
        state = dict(state_dict)
        counters = state.pop("counters", None)
        if not isinstance(counters, dict) or not {"t", "grads_used"} <= set(counters):
            raise ValueError(
                f"state_dict: expected a {type(self).__name__} state with 'counters' "
                "{'t', 'grads_used'}"
            )
        super().load_state_dict(state)
        self.t = _check_count(counters["t"], "state_dict['counters']['t']")
        self.grads_used = _check_count(counters["grads_used"],
                                       "state_dict['counters']['grads_used']")


class NAG(CM):
    """Nesterov's accelerated gradient, Sutskever et al. (2013) Eq. 3-4, one gradient per update.

    The model holds the look-ahead point ``φ_t = θ_t + μ_t v_t`` and ``p.grad`` must be
    ``∇f(φ_t)``; the update is ``v ← μ_t v − ε g``, ``φ ← φ − ε g + μ_{t+1} v`` (derivation in the
    module docstring). :meth:`true_params` gives ``θ_t = φ_t − μ_t v_t``; evaluate the true
    iterate inside ``with opt.at_true_params(): ...``. Arguments as :class:`CM`.
    """

    nesterov = True

    @torch.no_grad()
    def true_params(self) -> list[Tensor]:
        """θ_t = φ_t − μ_t v_t for every parameter of every group, in order."""
        out = []
        for group in self.param_groups:
            mu = _mu(group["schedule"], self.t)
            for p in group["params"]:
                buf = self.state[p].get("momentum_buffer")
                out.append(p.detach().clone() if buf is None else p.detach() - mu * buf)
        return out


class SGD(CM):
    """Plain gradient descent ``θ ← θ − ε ∇f(θ)``: CM with μ = 0 (Table 1's "0" column).

    Args:
        params: parameters or parameter groups.
        lr: the learning rate ε (> 0).
    """

    def __init__(self, params: Iterable[Any], lr: float) -> None:
        super().__init__(params, lr, schedule=0.0)
