"""``HessianFreeOptimizer``: HF where a ``torch.optim.Optimizer`` is expected.

Training loops (plain PyTorch, PyTorch Lightning, Accelerate) hold an optimizer with
``param_groups``, ``zero_grad()``, ``step(closure)`` and ``state_dict()``. HF needs more than a
gradient: the objective and its gradient on a *gradient batch*, curvature products on a
*curvature batch* (CG runs tens of them on one fixed operator), and objective evaluations at
trial points for CG-backtracking and the line search ([M10 §4]). A closure in torch's sense
(``loss.backward(); return loss``) gives only the gradient at the current parameters, so here
the closure gives HF the **batch** and HF computes everything itself, through the
:class:`~hessfree.Problem` (model and matching loss) the optimizer was built with.

:meth:`HessianFreeOptimizer.step` takes the batch from ``closure()`` or from ``batch=``; the
curvature batch comes from ``curvature_batch=`` or from the optimizer's ``curvature`` policy (the
gradient batch itself, a sub-batch of it, or a fixed batch). Everything else is
:meth:`hessfree.HessianFree.step`, unchanged: the facade holds a ``HessianFree`` (``.hf``) and
adds no HF logic. Its :meth:`~HessianFreeOptimizer.state_dict` (versioned) holds the
``HessianFree`` state, so a run restored with the model's ``state_dict`` continues bit for bit.

What the ``torch.optim`` protocol means here:

* ``param_groups`` is one group over the optimised parameters (HF solves one linear system over
  all of them); ``add_param_group`` is refused.
* ``param_groups[0]["lr"]`` is the step size the last step took (line search or fixed rate; 0
  for a rejected step) and ``["damping"]`` the Levenberg-Marquardt λ: both are read-only. An
  LR scheduler is refused when it is built (``torch.optim.lr_scheduler.*``) or when it first
  changes the rate (``ReduceLROnPlateau``): HF's step size is its line search's, and a schedule
  of the rate is ``HFConfig(learning_rate=schedule)`` ([S13 A.6] decays it that way).
* ``zero_grad`` is torch's (HF never reads ``.grad``: its gradient comes from the problem).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from hessfree import _checks
from hessfree.batches import is_source, leaves, take
from hessfree.curvature import Problem
from hessfree.errors import InputError, InputTypeError
from hessfree.hf import HessianFree, HFConfig, Phase, PhaseSchedule, StepStats
from hessfree.hf.phases import BatchSpec
from hessfree.quadratic.core import Quadratic
from hessfree.schedules import value_at

__all__ = ["FACADE_VERSION", "HessianFreeOptimizer"]

#: version of :meth:`HessianFreeOptimizer.state_dict` (its ``"hessfree"`` entry)
FACADE_VERSION = 1

_CLOSURE = ("HessianFreeOptimizer's closure must return the step's batch: (inputs, targets), a "
            "dict batch, a list of them or a loader (HF evaluates the loss, gradient and "
            "curvature itself through the Problem; see HessianFreeOptimizer.step)")
_SCHEDULER = ("an LR scheduler cannot drive HessianFreeOptimizer: HF's step size comes from its "
              "line search (or HFConfig.learning_rate, which takes a schedule of the step, e.g. "
              "hessfree.schedules.InverseDecay) and λ from Levenberg-Marquardt; "
              "param_groups[0]['lr'] and ['damping'] only report them")


class _ReportedGroup(dict):
    """The one parameter group: ``lr`` and ``damping`` report HF's values and are read-only."""

    READ_ONLY = ("lr", "damping")

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.READ_ONLY and key in self and value != self[key]:
            raise InputError(f"param_groups[0][{key!r}]: {_SCHEDULER}")
        super().__setitem__(key, value)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key == "initial_lr":  # what every torch LRScheduler does first
            raise InputError(f"lr_scheduler: {_SCHEDULER}")
        return super().setdefault(key, default)

    def report(self, lr: float, damping: float) -> None:
        """Set the reported values (the optimizer's own writes)."""
        dict.__setitem__(self, "lr", lr)
        dict.__setitem__(self, "damping", damping)


def _pair(batch: Any, targets: str | tuple[str, str], where: str) -> Any:
    """One batch as the core takes it.

    A dict batch is split into ``(inputs, targets)``; a ``[inputs, targets]`` list (a
    DataLoader's default collate) becomes a tuple; a list of chunks is converted chunk by chunk.
    """
    if isinstance(batch, Mapping):
        keys = (targets,) if isinstance(targets, str) else tuple(targets)
        missing = [k for k in keys if k not in batch]
        if missing:
            raise InputError(f"{where}: the dict batch has no {missing} (the targets, "
                             f"targets={targets!r}); it has {sorted(batch)}")
        inputs = {k: v for k, v in batch.items() if k not in keys}
        return inputs, (batch[targets] if isinstance(targets, str)
                        else tuple(batch[k] for k in keys))
    if isinstance(batch, list) and len(batch) == 2 and isinstance(batch[1], Tensor) \
            and isinstance(batch[0], (Tensor, Mapping)):
        return tuple(batch)
    if isinstance(batch, list):
        return [_pair(b, targets, f"{where}[{i}]") for i, b in enumerate(batch)]
    return batch


class _Converted:
    """A re-iterable view of a loader whose batches go through :func:`_pair`.

    ``sampler`` and ``batch_sampler`` are forwarded, so the core still refuses a shuffled loader.
    """

    def __init__(self, source: Iterable[Any], targets: str | tuple[str, str], where: str
                 ) -> None:
        self.source, self.targets, self.where = source, targets, where
        self.sampler = getattr(source, "sampler", None)
        self.batch_sampler = getattr(source, "batch_sampler", None)

    def __iter__(self) -> Iterator[Any]:
        for i, b in enumerate(self.source):
            yield _pair(b, self.targets, f"{self.where}[{i}]")


def _batch(batch: Any, targets: str | tuple[str, str], where: str) -> Any:
    """Any batch form the core takes, with dict batches and collated lists converted."""
    if is_source(batch):  # a one-shot iterator goes as it is: the core refuses it
        return batch if isinstance(batch, Iterator) else _Converted(batch, targets, where)
    return _pair(batch, targets, where)


def _tensors(params: Any) -> list[Tensor]:
    """The tensors of torch's ``params`` argument: tensors, ``(name, tensor)`` or one group."""
    if isinstance(params, Tensor) or not isinstance(params, Iterable):
        raise InputTypeError(f"params: expected an iterable of tensors (model.parameters()), "
                             f"got {type(params).__name__}")
    items = list(params)
    if items and isinstance(items[0], Mapping):
        if len(items) != 1:
            raise InputError(f"params: HF solves one linear system over all its parameters, so "
                             f"it takes one parameter group, got {len(items)}")
        options = sorted(set(items[0]) - {"params"})
        if options:
            raise InputError(f"params: per-group options {options} are not HF settings; give "
                             "them to HFConfig")
        items = list(items[0].get("params", []))
    items = [p[1] if isinstance(p, tuple) and len(p) == 2 else p for p in items]
    if not items:
        raise InputError("params: expected at least one tensor, got none")
    bad = [type(p).__name__ for p in items if not isinstance(p, Tensor)]
    if bad:
        raise InputTypeError(f"params: expected tensors, got {bad[0]}")
    if len({id(p) for p in items}) != len(items):
        raise InputError("params: a tensor appears more than once")
    return items


def _named(tensors: list[Tensor], problem: Problem) -> dict[str, Tensor]:
    """The problem's names of ``tensors`` (a module's parameter names; ``"0"``... otherwise)."""
    if not problem.is_module:
        return {str(i): t for i, t in enumerate(tensors)}
    own = {id(p): n for n, p in problem.model.named_parameters()}
    stray = [tuple(t.shape) for t in tensors if id(t) not in own]
    if stray:
        raise InputError(
            f"params: {len(stray)} of the {len(tensors)} tensors (shapes {stray[:4]}) are not "
            "parameters of the problem's model, which HF differentiates, so they would never "
            "move; pass the parameters of the model the Problem was built from")
    return {own[id(t)]: t for t in tensors}


def _phases(phases: Any) -> Any:
    """Refuse phases whose batch specs ask for batches the loop does not give."""
    items = phases.phases if isinstance(phases, PhaseSchedule) else phases
    for i, phase in enumerate(items or ()):
        if isinstance(phase, Phase) and (phase.gradient != BatchSpec("all") or phase.curvature
                                         != BatchSpec("same") or phase.heldout is not None):
            raise InputError(
                f"phases[{i}]: its batch specs ({phase.gradient.describe()}, curvature "
                f"{phase.curvature.describe()}) are drawn by hessfree's runners; in a training "
                "loop the loop gives the batches: leave the specs at their defaults and use "
                "curvature= and step(heldout_batch=)")
    return phases


class HessianFreeOptimizer(torch.optim.Optimizer):
    """Hessian-free optimization behind the ``torch.optim.Optimizer`` interface.

    A thin facade over :class:`hessfree.HessianFree` (module docstring); ``.hf`` is the
    ``HessianFree`` it drives, ``.last_stats`` the :class:`~hessfree.StepStats` of the last step.

    Args:
        params: the parameters to optimise (``model.parameters()``, ``named_parameters()`` or one
            parameter group): parameters of ``problem``'s model; the model's other parameters
            stay fixed.
        problem: the :class:`~hessfree.Problem` (the model, its matching loss, weight decay and
            process group) HF minimises.
        config: an :class:`~hessfree.HFConfig` (default: Martens 2010).
        phases: a :class:`~hessfree.PhaseSchedule` (or list of phases) changing the config as
            the run goes; their batch specs must be the defaults (the loop gives the batches).
        curvature: where the curvature products of a step are computed when :meth:`step` gets
            no ``curvature_batch``: ``None``, the gradient batch itself; a float ``f`` in
            (0, 1], the first ``max(1, floor(f·n))`` of its ``n`` cases; an int ``k``, its first
            ``k`` cases (from a shuffled loader, a fresh random sub-batch every step); or a
            fixed batch (a tuple, dict batch, list or unshuffled loader) used at every step.
        targets: the key (or ``(values, mask)`` keys) of the targets in dict batches; the other
            keys are the model's keyword inputs.
    """

    def __init__(self, params: Any, problem: Problem, config: HFConfig | None = None, *,
                 phases: PhaseSchedule | list[Phase] | tuple[Phase, ...] | None = None,
                 curvature: Any = None, targets: str | tuple[str, str] = "labels") -> None:
        if not isinstance(problem, Problem):
            raise InputTypeError(
                f"problem: expected a hessfree.Problem, got {type(problem).__name__}")
        if not (isinstance(targets, str) or (isinstance(targets, tuple) and len(targets) == 2
                                             and all(isinstance(k, str) for k in targets))):
            raise InputTypeError(f"targets: expected a key or a (values, mask) pair of keys, "
                                 f"got {targets!r}")
        tensors = _tensors(params)
        self.targets = targets
        self.curvature = self._curvature_policy(curvature)
        self.hf = HessianFree(problem, _named(tensors, problem), config, _phases(phases))
        lr = float(value_at(self.hf.config.learning_rate, self.hf.t))
        self._building = True
        super().__init__([_ReportedGroup(params=tensors, lr=lr, damping=self.hf.lam)],
                         {"lr": lr, "damping": self.hf.lam})
        self._building = False

    def _curvature_policy(self, curvature: Any) -> Any:
        if isinstance(curvature, bool):
            raise InputTypeError("curvature: expected None, a fraction, a number of cases or a "
                                 "batch, got a bool")
        if curvature is None:
            return None
        if isinstance(curvature, float):
            if not (math.isfinite(curvature) and 0.0 < curvature <= 1.0):
                raise InputError(f"curvature: a fraction of the gradient batch must lie in "
                                 f"(0, 1], got {curvature!r}")
            return curvature
        if isinstance(curvature, int):
            if curvature < 1:
                raise InputError(f"curvature: a number of cases must be >= 1, got {curvature}")
            return curvature
        return _batch(curvature, self.targets, "curvature")

    # -- torch.optim protocol ---------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused after construction: HF's CG and state have the size of its parameters."""
        if not getattr(self, "_building", False):
            raise InputError("add_param_group: HF solves one linear system over the parameters "
                             "it was built with (its CG hot start and preconditioner have their "
                             "size); build a new HessianFreeOptimizer over all the parameters")
        super().add_param_group(param_group)

    @property
    def last_stats(self) -> StepStats | None:
        """The record of the last step (``None`` before the first)."""
        return self.hf.history[-1] if self.hf.history else None

    @property
    def stop_reason(self) -> str | None:
        """Why no further step can make progress (``None`` while steps can); see ``.hf``."""
        return self.hf.stop_reason

    def step(self, closure: Callable[[], Any] | None = None, *, batch: Any = None,
             curvature_batch: Any = None, heldout_batch: Any = None,
             on_quadratic: Callable[[Quadratic], None] | None = None,
             check_batch: Any = None) -> float:
        """One HF step (:meth:`hessfree.HessianFree.step`); returns the loss before it.

        **The closure contract.** ``closure()`` is called once, before anything else, and must
        *return the step's gradient batch*: ``(inputs, targets)``, a ``[inputs, targets]`` list
        as a DataLoader collates it, a dict batch (``targets`` key, default ``"labels"``; the
        other keys are the model's keyword inputs), a list of such chunks, or an unshuffled
        loader. It need not (and should not) run the model or ``backward``: HF evaluates the
        loss and gradient on this batch, the curvature products on the curvature batch, and
        the objective at trial steps (CG-backtracking, line search) itself, through the
        problem, at parameters of its choosing. A closure returning a loss or model outputs
        (tensors with an autograd graph) is refused. A closure returning ``None`` (Lightning
        passes one when ``step`` is called without) leaves the batch to ``batch=``.

        Args:
            closure: returns the gradient batch (above); or None.
            batch: the gradient batch, instead of the closure (not both).
            curvature_batch: the curvature batch of this step; default: the ``curvature``
                policy given at construction.
            heldout_batch: cases the step was not fitted to, on which ρ is measured
                (:meth:`hessfree.HessianFree.step`).
            on_quadratic: called with the step's :class:`~hessfree.Quadratic` before CG runs.
            check_batch: the old name of ``heldout_batch`` (a ``DeprecationWarning``).

        Returns:
            The objective on the gradient batch before the step (``.last_stats`` has the
            rest: loss after, ρ, λ, CG iterations and reason, costs).
        """
        heldout_batch = _checks.renamed(heldout_batch, check_batch, "heldout_batch",
                                        "check_batch", "HessianFreeOptimizer.step")
        grad_batch = self._gradient_batch(closure, batch)
        if curvature_batch is not None:
            curv = _batch(curvature_batch, self.targets, "curvature_batch")
        else:
            curv = self._curvature_of(grad_batch)
        heldout = None if heldout_batch is None else _batch(heldout_batch, self.targets,
                                                           "heldout_batch")
        self._check_precision()
        with torch.enable_grad():
            stats = self.hf.step(grad_batch, curv, heldout_batch=heldout, on_quadratic=on_quadratic)
        self.param_groups[0].report(stats.step_size, self.hf.lam)
        return stats.loss_before

    def _gradient_batch(self, closure: Callable[[], Any] | None, batch: Any) -> Any:
        got = None
        if closure is not None:
            if not callable(closure):
                raise InputTypeError(f"closure: expected a callable, got "
                                     f"{type(closure).__name__}")
            got = closure()
            if isinstance(got, Tensor):
                raise InputTypeError(f"closure: returned a Tensor (a loss?); {_CLOSURE}")
            if got is not None and any(t.grad_fn is not None for t in leaves(
                    got if isinstance(got, (tuple, list, Mapping)) else ())):
                raise InputError(f"closure: returned tensors with an autograd graph (model "
                                 f"outputs?); {_CLOSURE}")
            if got is not None and batch is not None:
                raise InputError("batch: given both by the closure and as batch=; give one")
        where = "batch" if got is None else "closure"
        got = batch if got is None else got
        if got is None:
            raise InputError("batch: step needs the gradient batch, from the closure or as "
                             f"batch=, and got neither; {_CLOSURE}")
        if not isinstance(got, (tuple, list, Mapping)) and not is_source(got):
            said = "returned" if where == "closure" else "got"
            raise InputTypeError(f"{where}: {said} {type(got).__name__}; {_CLOSURE}")
        return _batch(got, self.targets, "batch")

    def _curvature_of(self, grad_batch: Any) -> Any:
        """The curvature batch the policy gives for this gradient batch (None: the same)."""
        policy = self.curvature
        if policy is None or not isinstance(policy, (int, float)):
            return policy
        if not isinstance(grad_batch, tuple):
            raise InputError("curvature: a sub-batch is taken from one (inputs, targets) batch "
                             "per step; with a list or loader as the gradient batch, pass "
                             "curvature_batch= or a fixed curvature batch")
        inputs, targets = grad_batch
        n = int(leaves(inputs)[0].shape[0]) if leaves(inputs) else 0
        k = min(policy, n) if isinstance(policy, int) else max(1, math.floor(n * policy + 1e-9))
        if k >= n:
            return None
        return take(inputs, slice(0, k)), take(targets, slice(0, k))

    def _check_precision(self) -> None:
        """Refuse mixed precision around HF (autocast, Accelerate's wrapped forward)."""
        device = next(iter(self.hf.params.values())).device.type
        wrapped = getattr(self.hf.problem.model, "_original_forward", None) is not None
        if torch.is_autocast_enabled(device) or wrapped:
            raise InputError(
                "precision: the model runs under autocast (Lightning precision='16-mixed' or "
                "'bf16-mixed', Accelerate mixed_precision='fp16'/'bf16'); HF's curvature "
                "products, CG and line search need the model's own precision: use "
                "precision='32-true'/'64-true' or mixed_precision='no' (a bfloat16 model: "
                "hessfree.Problem(..., precision='float32'))")

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The state: torch's ``{"state", "param_groups"}`` plus ``"hessfree"``.

        ``"hessfree"`` holds the ``HessianFree`` state (λ, CG hot start, counters, phases,
        config), the parameter names and a version; plain data and tensors (loadable with
        ``torch.load(weights_only=True)``).
        """
        state = super().state_dict()
        state["hessfree"] = {"version": FACADE_VERSION, "names": list(self.hf.params),
                             "optimizer": self.hf.state_dict()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuse another optimizer's state, version or parameters.

        With the model's parameters restored too, the next steps equal an uninterrupted run's.
        """
        if not isinstance(state_dict, Mapping):
            raise InputTypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        ours = state_dict.get("hessfree")
        if not isinstance(ours, Mapping):
            raise InputError("state_dict: not a HessianFreeOptimizer state (no 'hessfree' "
                             f"entry; it has {sorted(state_dict)}): saved by another optimizer?")
        if ours.get("version") != FACADE_VERSION:
            raise InputError(f"state_dict: version {ours.get('version')!r} is not one this "
                             f"hessfree reads ({FACADE_VERSION})")
        names = list(ours.get("names", []))
        if names != list(self.hf.params):
            raise InputError(f"state_dict: saved for parameters {names[:4]}... "
                             f"({len(names)}), this optimizer has {list(self.hf.params)[:4]}... "
                             f"({len(self.hf.params)})")
        self.hf.load_state_dict(dict(ours["optimizer"]))
        groups = state_dict.get("param_groups") or [{}]
        self.param_groups[0].report(float(groups[0].get("lr", self.param_groups[0]["lr"])),
                                    self.hf.lam)

    def __repr__(self) -> str:
        return (f"HessianFreeOptimizer({len(self.hf.params)} tensors, "
                f"{self.hf.layout.numel} parameters, λ = {self.hf.lam:.4g}, step {self.hf.t})")
