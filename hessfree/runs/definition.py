"""The definition of an experiment: data, model, loss, error metric, default settings per family.

An :class:`Experiment` says how to build its data set (:class:`~hessfree.runs.dataset.Dataset`)
and its model (with the papers' initialization), which matching loss to train with, how to
measure error, and the default settings of each optimizer family on it (typed records of
:mod:`hessfree.runs.settings`; the families are :mod:`hessfree.runs.families`). The registry of
named experiments is :mod:`hessfree.runs.experiments` (this module is what one of them is); the
built-in ones are in :mod:`hessfree.runs.presets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from hessfree.batches import Batch
from hessfree.errors import InputError, InputTypeError
from hessfree.runs import families
from hessfree.runs.dataset import Dataset
from hessfree.runs.settings import DataSettings, apply_overrides, data_settings_from, from_flat

__all__ = ["Dataset", "Experiment"]


@dataclass
class Experiment:
    """A named benchmark problem.

    Attributes:
        name: registry key (``curves-ae``, ``addition``, ...).
        description: one line for ``hessfree list``.
        data: ``(data settings, seed) -> Dataset``.
        model: ``(data settings, generator) -> nn.Module`` with the papers' initialization.
        loss: ``data settings -> loss`` (a matching loss of hessfree.losses).
        error: ``(model, batch, data settings) -> float`` — the papers' error metric.
        error_name: what the error is (e.g. "squared reconstruction error").
        settings: ``"data"``: the data/model settings (a :class:`DataSettings` record, or a
            plain dict for user experiments); each optimizer family's name
            (:func:`hessfree.runs.families.names`): its default settings record (or a dict of
            its fields). Families not listed get their record's defaults.
        paper: the paper's published row: a table column (``"0.99N"``, ``"HF*"``: the
            columns of the families' table roles, :mod:`hessfree.runs.families`) -> its number
            (None: not published); ``hessfree report`` and ``reproduce`` read it (the one
            source of the tables). A label whose first word is a family (``"nag (mu 0.9)"``)
            works too.
        model_spec: ``data settings -> dict`` describing the model, saved with quadratics so
            :func:`hessfree.runs.experiments.build_model` can rebuild it.
    """

    name: str
    description: str
    data: Callable[[Any, int], Dataset]
    model: Callable[[Any, torch.Generator], nn.Module]
    loss: Callable[[Any], Any]
    error: Callable[[nn.Module, Batch, Any], float]
    error_name: str
    settings: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, float | None] = field(default_factory=dict)
    model_spec: Callable[[Any], dict] | None = None

    def data_defaults(self) -> DataSettings:
        """The data/model settings record."""
        return data_settings_from(self.settings.get("data", {}))

    def optimizer_defaults(self, optimizer: str) -> Any:
        """The default settings record of the family ``optimizer`` on this experiment."""
        cls = families.get(optimizer).settings
        given = self.settings.get(optimizer)
        if given is None:
            return cls()
        if isinstance(given, cls):
            return given
        if isinstance(given, Mapping):
            try:
                return from_flat(cls, dict(given))
            except (TypeError, ValueError) as err:
                raise InputError(f"experiment {self.name!r}: settings[{optimizer!r}]: {err}") \
                    from None
        raise InputTypeError(f"experiment {self.name!r}: settings[{optimizer!r}]: expected a "
                             f"{cls.__name__} or a dict, got {type(given).__name__}")

    def settings_for(self, optimizer: str, overrides: Mapping[str, Any] | None = None
                     ) -> tuple[DataSettings, Any]:
        """The data and optimizer records with ``overrides`` (``key=value``) applied."""
        records = (self.data_defaults(), self.optimizer_defaults(optimizer))
        data, opt = apply_overrides(records, overrides or {}, f"{self.name} with {optimizer}")
        return data, opt

    def model_from_spec(self, spec: Mapping[str, Any]) -> nn.Module:
        """Rebuild the model from a saved ``model_spec`` (its data-setting keys; ``seed``)."""
        data = self.data_defaults()
        known = {f.name for f in fields(data)}
        data = data.replace(**{k: v for k, v in spec.items() if k in known})
        return self.model(data, torch.Generator().manual_seed(int(spec.get("seed", 0))))
