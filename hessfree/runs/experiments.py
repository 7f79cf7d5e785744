"""The experiment registry: named presets binding data, model, loss, metric and optimizer settings.

An :class:`Experiment` says how to build its data set and its model (with the papers'
initialization), which matching loss to train with, how to measure error, and the settings each
optimizer uses on it by default (``settings[optimizer]``, taken from ``reference/papers.md``).
Every setting can be overridden (``hessfree train ... --set key=value``); the value is parsed to
the type of the default, and unknown keys are rejected with the list of valid ones.

Built-in presets live in :mod:`hessfree.runs.presets`; users add their own with
:func:`register` (a function call or a decorator on a factory returning an ``Experiment``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "OPTIMIZERS",
    "Dataset",
    "Experiment",
    "build_model",
    "get",
    "names",
    "parse_overrides",
    "register",
]

#: optimizers every experiment can be trained with
OPTIMIZERS = ("hf", "hf-momentum", "nag", "cm", "sgd")

Batch = tuple[Any, Any]


def take(x: Any, idx: Tensor | slice) -> Any:
    """Index the case dimension of a tensor or a (nested) tuple of tensors."""
    if isinstance(x, Tensor):
        return x[idx]
    return type(x)(take(item, idx) for item in x)


def to(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested) to ``device``; floating ones to ``dtype``."""
    if isinstance(x, Tensor):
        return x.to(device, dtype) if x.is_floating_point() else x.to(device)
    return type(x)(to(item, device, dtype) for item in x)


@dataclass
class Dataset:
    """Training and test data, as ``(inputs, targets)`` batches (targets may be ``(values, mask)``).

    Attributes:
        train: the training set (or, for generated tasks, a representative batch).
        test: the test set.
        fresh: for generated tasks (the RNN problems), ``(n, seed) -> batch`` drawing new
            sequences; the trainer then uses fresh data every step, as Sutskever's HF-RNN code.
    """

    train: Batch
    test: Batch
    fresh: Callable[[int, int], Batch] | None = None

    @property
    def n_train(self) -> int:
        """Number of training cases."""
        x = self.train[0]
        return (x if isinstance(x, Tensor) else x[0]).shape[0]

    def to(self, device: torch.device, dtype: torch.dtype) -> Dataset:
        """The data on ``device`` with floating tensors in ``dtype``."""
        fresh = self.fresh
        if fresh is not None:
            base = fresh

            def fresh(n: int, seed: int) -> Batch:
                return to(base(n, seed), device, dtype)

        return Dataset(to(self.train, device, dtype), to(self.test, device, dtype), fresh)


@dataclass
class Experiment:
    """A named benchmark problem.

    Attributes:
        name: registry key (``curves-ae``, ``addition``, ...).
        description: one line for ``hessfree list``.
        data: ``(settings, seed) -> Dataset``.
        model: ``(settings, generator) -> nn.Module`` with the papers' initialization.
        loss: ``settings -> loss`` (a matching loss of hessfree.losses).
        error: ``(model, batch, settings) -> float`` — the papers' error metric.
        error_name: what the error is (e.g. "squared reconstruction error").
        settings: per optimizer (and ``"data"``) the default settings, overridable.
        paper: published numbers to compare with (``hessfree report``), by optimizer label.
        model_spec: ``settings -> dict`` describing the model, saved with quadratics so
            :func:`build_model` can rebuild it.
    """

    name: str
    description: str
    data: Callable[[dict, int], Dataset]
    model: Callable[[dict, torch.Generator], nn.Module]
    loss: Callable[[dict], Any]
    error: Callable[[nn.Module, Batch, dict], float]
    error_name: str
    settings: dict[str, dict[str, Any]]
    paper: dict[str, float] = field(default_factory=dict)
    model_spec: Callable[[dict], dict] | None = None

    def settings_for(self, optimizer: str, overrides: dict[str, str] | None = None
                     ) -> dict[str, Any]:
        """Data settings merged with ``optimizer``'s, then ``overrides`` (strings) parsed."""
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        merged = {**self.settings.get("data", {}), **self.settings.get(optimizer, {})}
        return parse_overrides(merged, overrides or {}, f"{self.name} with {optimizer}")


_REGISTRY: dict[str, Callable[[], Experiment]] = {}


def register(factory: Callable[[], Experiment] | Experiment, name: str | None = None) -> Any:
    """Register an experiment (or a zero-argument factory of one; usable as a decorator)."""
    if isinstance(factory, Experiment):
        exp = factory
        _REGISTRY[name or exp.name] = lambda: exp
        return factory
    key = name or getattr(factory, "experiment_name", None) or factory.__name__.replace("_", "-")
    _REGISTRY[key] = factory
    return factory


def _load_presets() -> None:
    from hessfree.runs import presets  # noqa: F401  (registers on import)


def names() -> list[str]:
    """Registered experiment names."""
    _load_presets()
    return sorted(_REGISTRY)


def get(name: str) -> Experiment:
    """The experiment called ``name`` (error lists the valid names)."""
    _load_presets()
    if name not in _REGISTRY:
        raise ValueError(f"experiment: unknown {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    exp = _REGISTRY[name]()
    exp.name = name
    return exp


def build_model(experiment: str, model_spec: dict | str) -> nn.Module:
    """Rebuild an experiment's model from the spec saved with a run or a quadratic."""
    spec = json.loads(model_spec) if isinstance(model_spec, str) else dict(model_spec)
    exp = get(experiment)
    settings = {**exp.settings.get("data", {}), **spec}
    return exp.model(settings, torch.Generator().manual_seed(int(spec.get("seed", 0))))


def _parse(value: str, default: Any, key: str, where: str) -> Any:
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected true/false for {where}, got {value!r}")
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ValueError(f"--set {key}: expected {type(default).__name__} for {where}, "
                         f"got {value!r}") from None
    if default is None:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def parse_overrides(defaults: dict[str, Any], overrides: dict[str, str], where: str
                    ) -> dict[str, Any]:
    """Apply ``key=value`` strings to ``defaults``, typed like the defaults."""
    out = dict(defaults)
    unknown = sorted(k for k in overrides if k not in defaults)
    if unknown:
        raise ValueError(f"--set: unknown key(s) {unknown} for {where}; valid: "
                         f"{', '.join(sorted(defaults))}")
    for k, v in overrides.items():
        out[k] = _parse(v, defaults[k], k, where) if isinstance(v, str) else v
    return out
