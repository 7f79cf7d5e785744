"""The experiment registry: built-in presets and the user's own experiments, by name.

``get(name)`` returns a fresh :class:`~hessfree.runs.definition.Experiment`; ``names()`` lists
them; users add their own with :func:`register` (a call, or a decorator on a zero-argument
factory). The built-in experiments (:mod:`hessfree.runs.presets`) are known from the start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from torch import nn

from hessfree.errors import InputError, InputTypeError
from hessfree.runs.dataset import Dataset
from hessfree.runs.definition import Experiment
from hessfree.runs.presets import BUILTIN

__all__ = ["Dataset", "Experiment", "build_model", "get", "names", "register"]

_REGISTRY: dict[str, Callable[[], Experiment]] = dict(BUILTIN)


def register(factory: Callable[[], Experiment] | Experiment, name: str | None = None) -> Any:
    """Register an experiment (or a zero-argument factory of one; usable as a decorator)."""
    if isinstance(factory, Experiment):
        exp = factory
        _REGISTRY[name or exp.name] = lambda: exp
        return factory
    if not callable(factory):
        raise InputTypeError(f"factory: expected an Experiment or a function returning one, got "
                             f"{type(factory).__name__}")
    key = name or getattr(factory, "experiment_name", None) or factory.__name__.replace("_", "-")
    _REGISTRY[key] = factory
    return factory


def names() -> list[str]:
    """Registered experiment names."""
    return sorted(_REGISTRY)


def get(name: str) -> Experiment:
    """The experiment called ``name`` (error lists the valid names)."""
    if name not in _REGISTRY:
        raise InputError(f"experiment: unknown {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    exp = _REGISTRY[name]()
    if not isinstance(exp, Experiment):
        raise InputTypeError(f"experiment {name!r}: its factory returned {type(exp).__name__}, "
                             "not an Experiment")
    exp.name = name
    return exp


def build_model(experiment: str, model_spec: dict | str | None) -> nn.Module:
    """Rebuild an experiment's model from the spec saved with a run or a quadratic.

    This is the ``build_model`` that :func:`hessfree.quadratic.load` takes for files that name a
    registered experiment.
    """
    spec = json.loads(model_spec) if isinstance(model_spec, str) else dict(model_spec or {})
    return get(experiment).model_from_spec(spec)
