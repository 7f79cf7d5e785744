"""Momentum baselines exactly as Sutskever et al. (2013) Eq. 1-4 [S13 Eq. 1-4], and μ schedules.

Classical momentum (CM), Eq. 1-2::

    v_{t+1} = μ_t v_t − ε ∇f(θ_t),        θ_{t+1} = θ_t + v_{t+1}

Nesterov's accelerated gradient (NAG), Eq. 3-4::

    v_{t+1} = μ_t v_t − ε ∇f(θ_t + μ_t v_t),        θ_{t+1} = θ_t + v_{t+1}

NAG without a second forward pass (change of variables of Sutskever's thesis [Sut13T] and Bengio
et al. 2013 [Ben13], valid for a time-varying μ_t). The parameters the model holds are the
look-ahead point ``φ_t = θ_t + μ_t v_t``, where the gradient ``g_t = ∇f(φ_t)`` is taken. Then
``v_{t+1} = μ_t v_t − ε g_t`` and::

    φ_{t+1} = θ_{t+1} + μ_{t+1} v_{t+1}
            = θ_t + v_{t+1} + μ_{t+1} v_{t+1}
            = (φ_t − μ_t v_t) + v_{t+1} + μ_{t+1} v_{t+1}
            = φ_t − ε g_t + μ_{t+1} v_{t+1}          (since v_{t+1} − μ_t v_t = −ε g_t)

With ``v_0 = 0``, ``φ_0 = θ_0``. The true iterate is ``θ_t = φ_t − μ_t v_t``
(:meth:`NAG.true_params`, :meth:`NAG.at_true_params`). For constant μ this is
``torch.optim.SGD(nesterov=True)``, whose buffer is ``b = −v/ε``; CM is ``SGD(momentum=μ)``
with the same buffer relation.

μ schedules (``t -> μ_t``) live in :mod:`hessfree.schedules`: :class:`SutskeverSchedule`
([S13 Eq. 5] and the low-momentum final phase of [S13 §3]), :class:`RNNSchedule` ([S13 §4]),
:class:`Constant`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from hessfree import _checks, schedules
from hessfree._checks import all_finite
from hessfree.errors import InputError, InputTypeError
from hessfree.schedules import Constant

__all__ = ["CM", "NAG", "SGD"]


def _as_schedule(schedule: Any) -> Callable[[int], float]:
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        return Constant(_checks.probability(schedule, "schedule"))
    if not callable(schedule):
        raise InputTypeError(
            f"schedule: expected a number in [0, 1] or a callable t -> mu, got "
            f"{type(schedule).__name__}"
        )
    return schedule


def _mu(schedule: Callable[[int], float], t: int) -> float:
    mu = schedule(t)
    if isinstance(mu, Tensor) and mu.numel() == 1:
        mu = mu.item()
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0.0 <= mu <= 1.0:
        raise InputError(f"schedule: returned {mu!r} at t = {t}; expected a number in [0, 1]")
    return float(mu)


def _finite(loss: Any) -> bool:
    """Whether a closure's loss is finite (no loss counts as finite)."""
    if loss is None:
        return True
    value = loss.detach() if isinstance(loss, Tensor) else torch.as_tensor(float(loss))
    return bool(torch.isfinite(value).all())


class CM(Optimizer):
    """Classical momentum, Sutskever et al. (2013) Eq. 1-2 ([S13 Eq. 1-2]), with a μ schedule.

    Used the usual way: ``loss.backward()``, then ``opt.step()``. Parameters without a gradient
    are skipped (as in ``torch.optim.SGD``). Counters: :attr:`t` (updates taken, the schedule's
    clock, shared by all parameter groups) and :attr:`grads_used` (gradient evaluations: one per
    update). ``state_dict()`` holds the velocities ``v``, the groups (``lr``, ``schedule``) and the
    counters, so ``load_state_dict`` resumes exactly.

    Non-finite gradients: by default, as every ``torch.optim`` optimizer, a NaN or infinite
    gradient is applied as it is, and NaN enters the velocities and parameters. With
    ``skip_non_finite=True`` such an update is rejected instead, as is one whose ``closure``
    returned a loss that is not finite: parameters, velocities and the schedule's clock stay
    exactly as they were and :attr:`rejected` counts it (the trainer's momentum runner relies on
    this and records the rejection).

    Args:
        params: parameters or parameter groups (a group may set its own ``lr``/``schedule``).
        lr: the learning rate ε (> 0).
        schedule: μ as a number in [0, 1] or a callable ``t -> μ_t`` (e.g.
            :class:`SutskeverSchedule`; use picklable schedules if the state is saved to disk).
        skip_non_finite: reject updates whose gradient is not finite (see above).
    """

    nesterov = False

    def __init__(self, params: Iterable[Any], lr: float, schedule: Any = 0.9,
                 skip_non_finite: bool = False) -> None:
        self.t = 0
        self.grads_used = 0
        self.rejected = 0
        self.skip_non_finite = _checks.boolean(skip_non_finite, "skip_non_finite")
        super().__init__(params, {"lr": lr, "schedule": schedule})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its ``lr`` and ``schedule``."""
        group = dict(param_group)
        for key in ("lr", "schedule"):
            if key not in group:
                group[key] = self.defaults[key]
        _checks.number(group["lr"], "lr", 0.0, strict_min=True)
        group["schedule"] = _as_schedule(group["schedule"])
        _mu(group["schedule"], 0)  # fail early on a schedule that cannot give μ_0
        super().add_param_group(group)

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise InputTypeError(f"{type(self).__name__}: sparse gradients are not supported")
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
        gathered = [self._gather(group) for group in self.param_groups]
        self.grads_used += 1
        if self.skip_non_finite and not (_finite(loss) and all(
                all_finite(g) for _, grads, _ in gathered for g in grads)):
            self.rejected += 1
            return loss
        for group, (mu, mu_next), (params, grads, bufs) in zip(self.param_groups, mus, gathered):
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
        return loss

    @property
    def mu(self) -> float:
        """μ of the next update (μ_t of the first parameter group's schedule)."""
        return _mu(self.param_groups[0]["schedule"], self.t)

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
        """Torch's optimizer state plus the counters ``t`` and ``grads_used``.

        Schedules are stored in their JSON form (:func:`hessfree.schedules.to_dict`), so the
        state is plain data (``torch.load(..., weights_only=True)`` reads it).
        """
        state = super().state_dict()
        for group in state["param_groups"]:
            group["schedule"] = schedules.to_dict(group["schedule"])
        state["counters"] = {"t": self.t, "grads_used": self.grads_used,
                             "rejected": self.rejected}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore velocities, groups and counters saved by :meth:`state_dict`.

        A schedule saved as an arbitrary callable cannot be rebuilt: the group keeps its own.
        """
        state = dict(state_dict)
        counters = state.pop("counters", None)
        if not isinstance(counters, dict) or not {"t", "grads_used"} <= set(counters):
            raise InputError(
                f"state_dict: expected a {type(self).__name__} state with 'counters' "
                "{'t', 'grads_used'}"
            )
        groups = []
        for saved, current in zip(state.get("param_groups", []), self.param_groups):
            group = dict(saved)
            sched = group.get("schedule")
            if isinstance(sched, dict):
                group["schedule"] = current["schedule"] if sched.get("schedule") == "callable" \
                    else schedules.from_dict(sched)
            groups.append(group)
        state["param_groups"] = groups or state.get("param_groups", [])
        super().load_state_dict(state)
        self.t = _checks.integer(counters["t"], "state_dict['counters']['t']", minimum=0)
        self.grads_used = _checks.integer(counters["grads_used"],
                                          "state_dict['counters']['grads_used']", minimum=0)
        self.rejected = _checks.integer(counters.get("rejected", 0),
                                        "state_dict['counters']['rejected']", minimum=0)


class NAG(CM):
    """Nesterov's accelerated gradient, [S13 Eq. 3-4], one gradient per update.

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
    """Plain gradient descent ``θ ← θ − ε ∇f(θ)``: CM with μ = 0 ([S13 Table 1]'s "0" column).

    Args:
        params: parameters or parameter groups.
        lr: the learning rate ε (> 0).
        skip_non_finite: reject updates whose gradient is not finite (see :class:`CM`).
    """

    def __init__(self, params: Iterable[Any], lr: float, skip_non_finite: bool = False) -> None:
        super().__init__(params, lr, schedule=0.0, skip_non_finite=skip_non_finite)
