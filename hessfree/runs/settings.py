"""Typed settings of a training run: one record per optimizer family and one for the data.

A run's settings are two frozen dataclasses, each validated once when built (here, for the CLI
and the Python API alike):

* the data/model record of its experiment (a subclass of :class:`DataSettings`: sizes, the
  sequence length, hidden units, the data root, ...), and
* the optimizer record of its family (:mod:`hessfree.runs.families` says which):
  :class:`HFSettings` (Martens' HF: an :class:`~hessfree.HFConfig` plus the batch settings of
  HFDemo), :class:`MomentumHFSettings` (the momentum-like HF of [S13 A.6] as phases) or
  :class:`MomentumSettings` (NAG, CM, SGD).

Both are seen by the command line as one flat namespace of ``key=value`` settings: the fields of
each record, with an ``HFConfig`` flattened into its own fields (``--set cg_max_iters=50``).
:func:`apply_overrides` parses strings to each field's type, refuses unknown keys with the list of
valid ones, and rebuilds the records (so every value is validated the same way).
:func:`flat` and :func:`from_flat` give the JSON form stored in results files and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, ClassVar

from hessfree import _checks
from hessfree.errors import InputError, InputTypeError
from hessfree.hf import HFConfig
from hessfree.hf.phases import BatchSpec, Phase, PhaseSchedule
from hessfree.schedules import Constant, InverseDecay, Ramp, RNNSchedule, SutskeverSchedule

__all__ = [
    "DataSettings",
    "HFSettings",
    "MOMENTUM_SCHEDULES",
    "MomentumHFSettings",
    "MomentumSettings",
    "Settings",
    "apply_overrides",
    "today",
    "data_settings_from",
    "flat",
    "from_flat",
]

#: the μ schedules of the momentum family: Eq. 5 of [S13 §3], the RNN schedule of [S13 §4],
#: or a constant
MOMENTUM_SCHEDULES = ("sutskever", "rnn", "constant")
#: memory chunk of a whole-training-set pass, in cases (HFDemo passes the whole set at once;
#: chunks only bound memory and do not change any value)
GRAD_CHUNK = 5000


class Settings:
    """Base of the settings records: item access (``s["n_train"]``) and the flat form.

    ``RENAMED`` maps a key an earlier hessfree wrote to its name today: results files,
    checkpoints and ``--set`` with the old name still read.
    """

    RENAMED: ClassVar[dict[str, str]] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return flat(self)[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]`` or ``default``."""
        return flat(self).get(key, default)

    def keys(self) -> list[str]:
        """The flat setting names."""
        return list(flat(self))

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (flat keys), validated."""
        return from_flat(type(self), {**flat(self), **changes})


def _nested(cls: type) -> dict[str, type]:
    """Fields of ``cls`` that hold a flattened record (an ``HFConfig``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if hints[f.name] is HFConfig}


def flat(record: Any) -> dict[str, Any]:
    """The record as one flat JSON-friendly dict (an ``HFConfig`` field spread into its keys)."""
    out: dict[str, Any] = {}
    nested = _nested(type(record))
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in nested:
            out.update(value.to_dict())
        else:
            out[f.name] = value
    return out


def renames(cls: type) -> dict[str, str]:
    """Old flat keys of ``cls`` by today's name: its ``RENAMED`` and its nested records'."""
    out = dict(getattr(cls, "RENAMED", {}))
    for t in _nested(cls).values():
        out.update(t.RENAMED)
    return out


def _renamed(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with old keys (:func:`renames`) under today's names (today's name wins)."""
    renamed = renames(cls)
    out = {k: v for k, v in values.items() if k not in renamed}
    for old, new in renamed.items():
        if old in values:
            out.setdefault(new, values[old])
    return out


def from_flat(cls: type, values: Mapping[str, Any]) -> Any:
    """Build ``cls`` from a flat dict (inverse of :func:`flat`); unknown keys raise."""
    values = _renamed(cls, values)
    nested = _nested(cls)
    own = [f.name for f in fields(cls) if f.name not in nested]
    known = set(own)
    sub_keys = {name: {f.name for f in fields(t)} for name, t in nested.items()}
    for keys in sub_keys.values():
        known |= keys
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"settings: unknown key(s) {unknown}; valid: {', '.join(sorted(known))}")
    kw: dict[str, Any] = {k: values[k] for k in own if k in values}
    for name, t in nested.items():
        base = _default_of(cls, name)
        sub = {k: values[k] for k in sub_keys[name] if k in values}
        kw[name] = t.from_dict({**base.to_dict(), **sub})
    return cls(**kw)


def _default_of(cls: type, name: str) -> Any:
    for f in fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
            return f.default
    raise KeyError(name)


# -- parsing ------------------------------------------------------------------------------------
def _types(cls: type) -> dict[str, Any]:
    """Flat key -> annotated type (``Any`` for schedulable HFConfig fields)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        if hints[f.name] is HFConfig:
            out.update(typing.get_type_hints(HFConfig))
        else:
            out[f.name] = hints[f.name]
    return out


def _parse_one(text: str, kind: Any, key: str) -> Any:
    """``text`` as a value of type ``kind`` (bool, int, float, str, optional ones, or JSON)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        rest = [a for a in args if a is not type(None)]
        kind = rest[0] if len(rest) == 1 else Any
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"--set {key}: expected true/false, got {text!r}")
    if kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            if kind is int:
                try:  # "5e3" for an integer setting
                    as_float = float(text)
                except ValueError:
                    as_float = math.nan
                if math.isfinite(as_float) and as_float == int(as_float):
                    return int(as_float)
            raise InputError(f"--set {key}: expected {kind.__name__}, got {text!r}") from None
        return value
    if kind is str:
        return text
    try:  # Any (numbers or schedules of HFConfig): JSON, else a number, else the string
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def today(records: tuple[Any, ...], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with keys renamed since (the records' ``RENAMED``) under today's names."""
    renamed = {old: new for rec in records for old, new in renames(type(rec)).items()}
    return {renamed.get(k, k): v for k, v in overrides.items()}


def apply_overrides(records: tuple[Any, ...], overrides: Mapping[str, Any], where: str
                    ) -> tuple[Any, ...]:
    """Apply ``key=value`` overrides (strings are parsed) to the records that own each key.

    Raises:
        ValueError: an unknown key (listing the valid ones), a value of the wrong type or out
            of range (naming the key).
    """
    owners: dict[str, int] = {}
    for i, rec in enumerate(records):
        for key in flat(rec):
            owners.setdefault(key, i)
    overrides = today(records, overrides)
    unknown = sorted(k for k in overrides if k not in owners)
    if unknown:
        raise InputError(f"--set: unknown key(s) {unknown} for {where}; valid: "
                         f"{', '.join(sorted(owners))}")
    changes: list[dict[str, Any]] = [{} for _ in records]
    for key, value in overrides.items():
        i = owners[key]
        if isinstance(value, str):
            value = _parse_one(value, _types(type(records[i]))[key], key)
        changes[i][key] = value
    out = []
    for rec, change in zip(records, changes):
        try:
            out.append(from_flat(type(rec), {**flat(rec), **change}) if change else rec)
        except (TypeError, ValueError) as err:
            raise InputError(f"--set: {err}") from None
    return tuple(out)


# -- data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSettings(Settings):
    """Data and model settings every experiment has (subclasses add their own).

    Attributes:
        n_train: training cases (or sequences per training batch for generated data).
        n_test: test cases (0: the experiment's default).
        eval_cases: training cases used for the training error (0: all).
    """

    n_train: int = 0
    n_test: int = 0
    eval_cases: int = 0

    def __post_init__(self) -> None:
        """Validate the shared fields."""
        _checks.integer(self.n_train, "n_train", minimum=0)
        _checks.integer(self.n_test, "n_test", minimum=0)
        _checks.integer(self.eval_cases, "eval_cases", minimum=0)


def data_settings_from(values: Mapping[str, Any] | DataSettings) -> DataSettings:
    """A user's plain dict of data settings as a record (field types from the values)."""
    if isinstance(values, DataSettings):
        return values
    if not isinstance(values, Mapping):
        raise InputTypeError(f"settings['data']: expected a dict or DataSettings, got "
                             f"{type(values).__name__}")
    own = [(k, type(v) if v is not None else Any, field(default=v))
           for k, v in values.items() if k not in ("n_train", "n_test", "eval_cases")]
    cls = make_dataclass("UserDataSettings", own, bases=(DataSettings,), frozen=True)
    return cls(**values)


# -- optimizers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HFSettings(Settings):
    """Martens' HF in a run: the optimizer config and the batches of HFDemo ([M10]; HFDemo).

    The gradient and the line search use the whole training set, the curvature one of
    ``numchunks`` fixed chunks, cycled. For generated data (the RNN tasks) each step draws
    ``grad_cases`` fresh sequences for the gradient and ``curv_cases`` for the curvature; with
    ``pieces`` the curvature batch and the held-out batches are instead cut from the gradient
    batch, as Sutskever's HF-RNN code takes its training batches 0 (curvature), 1
    (backtracking) and 2 (line search) of the 10 its gradient sums over ([HF-RNN]). A config
    that backtracks or searches on a held-out batch (``backtrack_batch`` / ``ls_batch =
    "heldout"``) gets one: piece 1 / 2 with ``pieces``, else a draw of ``curv_cases`` fresh
    sequences, or for stored data a minibatch of ``n_train / numchunks`` cases outside the
    gradient's.

    Attributes:
        config: every :class:`~hessfree.HFConfig` field (flattened on the command line).
        weight_decay: L2 coefficient of the objective.
        numchunks: curvature chunks per pass over the data (CURVES 4, MNIST 8, FACES 20).
        grad_chunk: cases per memory chunk of whole-set passes (values do not depend on it).
        grad_cases / curv_cases: generated data: fresh cases per step (None: ``n_train``).
        pieces: generated data: 0, or the number of equal pieces the gradient batch is cut
            into (curvature piece 0, held-out pieces 1 and 2; [HF-RNN]: 10).
    """

    config: HFConfig = field(default_factory=HFConfig)
    weight_decay: float = 0.0
    numchunks: int = 4
    grad_chunk: int = GRAD_CHUNK
    grad_cases: int | None = None
    curv_cases: int | None = None
    pieces: int = 0

    def __post_init__(self) -> None:
        """Validate."""
        _checks.number(self.weight_decay, "weight_decay", 0.0)
        _checks.integer(self.numchunks, "numchunks", minimum=1)
        _checks.integer(self.grad_chunk, "grad_chunk", minimum=1)
        for name in ("grad_cases", "curv_cases"):
            if getattr(self, name) is not None:
                _checks.integer(getattr(self, name), name, minimum=1)
        _checks.integer(self.pieces, "pieces", minimum=0)
        if 0 < self.pieces < 3:
            raise InputError(f"pieces: expected 0 or at least 3 (curvature, backtracking and "
                             f"search pieces), got {self.pieces}")

    def phases(self, n_train: int, fresh: bool) -> PhaseSchedule:
        """One phase: the whole set for the gradient, one chunk of ``numchunks`` for curvature."""
        cfg = self.config
        held = {}
        if fresh and self.pieces:
            grad = BatchSpec("minibatch", size=self.grad_cases or n_train)
            curv, bt, search = (BatchSpec("piece", parts=self.pieces, index=i) for i in range(3))
        else:
            if fresh:
                grad = BatchSpec("minibatch", size=self.grad_cases or n_train)
                curv = BatchSpec("minibatch", size=self.curv_cases or n_train)
            else:
                if self.numchunks > n_train:
                    raise InputError(f"numchunks: expected at most n_train = {n_train} chunks, "
                                     f"got {self.numchunks}")
                grad, curv = BatchSpec("all"), BatchSpec("chunk", parts=self.numchunks)
            bt = search = BatchSpec("minibatch", size=curv.size if fresh
                                    else max(1, n_train // self.numchunks))
        if cfg.backtracking and cfg.backtrack_batch == "heldout":
            held["backtrack"] = bt
        if cfg.line_search and cfg.ls_batch == "heldout":
            held["search"] = search
        return PhaseSchedule((Phase("main", gradient=grad, curvature=curv, config=cfg,
                                    **held),))


def _scaled(value: int, fraction: float, minimum: int = 0) -> int:
    """``value · fraction`` rounded, at least ``minimum`` (0 stays 0)."""
    return 0 if value == 0 else max(minimum, int(round(value * fraction)))


@dataclass(frozen=True)
class MomentumHFSettings(Settings):
    """The momentum-like HF of [S13 A.6] in a run: three phases, every number from A.6.

    1. *minibatch*: gradient and curvature on the same minibatch of 1/``batch_divisor`` of the
       data (A.6: 1/16 CURVES, 1/20 MNIST), the config of :meth:`HFConfig.momentum_like` (50 CG
       steps, ε = 1, ζ = 0.95, and Armijo backtracking from ε where A.6 has no line search:
       hessfree's choice, README "Fidelity table"), for ``minibatch_cg_steps`` CG iterations (A.6:
       250k for both: CURVES "250k CG steps", MNIST 25k + 225k). ζ is raised "gradually" to
       ``decay_final`` (0.999 CURVES, 0.995 MNIST) from update ``decay_switch`` (CURVES 4000,
       MNIST 500) over ``decay_ramp`` updates (A.6 gives no length: 500, our choice, on the
       log(1 − ζ) scale as μ rises in Eq. 5); ε = min(1, ``lr_scale``/(t − ``lr_origin``)) from
       update ``lr_begin`` on (CURVES 500/(t − 4000) from 4000; MNIST 250/t from 500).
    2. *full*: "a more traditional version of HF": gradient on the whole training set,
       ``full_cg_iters`` CG steps per update (CURVES 200; MNIST: not given, 50 kept),
       ζ = ``full_decay`` (0.995), ε = 1, curvature on HFDemo's ``numchunks`` chunks
       (``full_curvature="chunk"``, CURVES: "full-batch mode", our choice of HFDemo's 1/4
       chunks) or still on minibatches (``"minibatch"``: MNIST, "curvature still on 1/20th"),
       for ``full_cg_steps`` CG iterations (CURVES 100k, MNIST 125k).
    3. *final* (CURVES only): as *full* with weight decay ``final_weight_decay`` ("near zero":
       0, our choice) for ``final_cg_steps`` (500k); 0 drops the phase.

    ``fraction`` scales every length and every time point (phase lengths, ``decay_switch``,
    ``decay_ramp``, ``lr_origin``, ``lr_begin`` and ``lr_scale``, so ε keeps its shape over the
    shortened run): the rule of ``hessfree reproduce``; per-update settings (CG steps per
    update, minibatch size, ζ and ε values, weight decay) are unchanged.
    ``minibatch_cg_steps = 0`` keeps the first phase forever (generated data, small tasks).
    ``heldout_rho`` (default on: hessfree's fix of the minibatch phase,
    :meth:`HFConfig.momentum_like`; called ``check`` before, which still reads) measures ρ of
    the first phase on a second minibatch of the same size, drawn from the cases outside the
    fitted one (disjoint from it; ``HessianFree.step``'s ``heldout_batch``), so λ adapts to how
    well steps generalise.

    Attributes:
        config: the first phase's :class:`~hessfree.HFConfig` fields (flattened).
        weight_decay: L2 coefficient of the objective (phases 1-2).
    """

    config: HFConfig = field(default_factory=HFConfig.momentum_like)
    weight_decay: float = 0.0
    fraction: float = 1.0
    batch_divisor: int = 16
    batch_size: int | None = None
    minibatch_cg_steps: int = 250_000
    decay_final: float = 0.999
    decay_switch: int = 4000
    decay_ramp: int = 500
    lr_scale: float = 500.0
    lr_origin: int = 4000
    lr_begin: int = 4000
    full_cg_steps: int = 100_000
    full_cg_iters: int = 200
    full_decay: float = 0.995
    full_curvature: str = "chunk"
    numchunks: int = 4
    final_cg_steps: int = 500_000
    final_weight_decay: float = 0.0
    heldout_rho: bool = True
    RENAMED: ClassVar[dict[str, str]] = {"check": "heldout_rho"}
    grad_chunk: int = GRAD_CHUNK

    def __post_init__(self) -> None:
        """Validate."""
        _checks.number(self.weight_decay, "weight_decay", 0.0)
        _checks.number(self.fraction, "fraction", 0.0, 1.0, strict_min=True)
        _checks.integer(self.batch_divisor, "batch_divisor", minimum=1)
        if self.batch_size is not None:
            _checks.integer(self.batch_size, "batch_size", minimum=1)
        for name in ("minibatch_cg_steps", "decay_switch", "decay_ramp", "lr_origin",
                     "full_cg_steps", "final_cg_steps"):
            _checks.integer(getattr(self, name), name, minimum=0)
        _checks.integer(self.lr_begin, "lr_begin", minimum=self.lr_origin)
        _checks.number(self.decay_final, "decay_final", 0.0, 1.0, strict_max=True)
        _checks.number(self.lr_scale, "lr_scale", 0.0, strict_min=True)
        _checks.integer(self.full_cg_iters, "full_cg_iters", minimum=1)
        _checks.probability(self.full_decay, "full_decay")
        _checks.choice(self.full_curvature, "full_curvature", ("chunk", "minibatch"))
        _checks.integer(self.numchunks, "numchunks", minimum=1)
        _checks.number(self.final_weight_decay, "final_weight_decay", 0.0)
        _checks.boolean(self.heldout_rho, "heldout_rho")
        _checks.integer(self.grad_chunk, "grad_chunk", minimum=1)
        if not self.config.cg_fixed_iters:
            raise InputError("cg_fixed_iters: the momentum-like HF runs a fixed number of CG "
                             "steps per update (A.6); got False")
        if callable(self.config.cg_decay) or self.config.cg_decay >= 1:
            raise InputError("cg_decay: the momentum-like HF ramps ζ itself from this start "
                             f"value; expected a number < 1, got {self.config.cg_decay!r}")

    def phases(self, n_train: int, fresh: bool) -> PhaseSchedule:
        """The A.6 phases, lengths and time points scaled by ``fraction``."""
        f = self.fraction
        size = self.batch_size or max(1, n_train // self.batch_divisor)
        minibatch = BatchSpec("minibatch", size=size)
        heldout = BatchSpec("minibatch", size=size) if self.heldout_rho else None
        switch = _scaled(self.decay_switch, f)
        zeta0 = float(self.config.cg_decay)
        first = self.config.replace(
            cg_decay=Ramp(zeta0, self.decay_final, switch,
                          switch + _scaled(self.decay_ramp, f), "momentum"),
            learning_rate=InverseDecay(self.lr_scale * f, _scaled(self.lr_origin, f),
                                       float(self.config.learning_rate),
                                       _scaled(self.lr_begin, f)))
        iters = int(self.config.cg_max_iters)
        length = _scaled(self.minibatch_cg_steps, f, iters)
        phase1 = Phase("minibatch", cg_steps=length or None, gradient=minibatch,
                       curvature=BatchSpec("same"), config=first, heldout=heldout)
        if fresh or not length or not (self.full_cg_steps or self.final_cg_steps):
            return PhaseSchedule((phase1,))
        full = self.config.replace(cg_max_iters=self.full_cg_iters, cg_decay=self.full_decay,
                                   learning_rate=1.0)
        if self.numchunks > n_train:
            raise InputError(f"numchunks: expected at most n_train = {n_train} chunks, "
                             f"got {self.numchunks}")
        curvature = BatchSpec("chunk", parts=self.numchunks) \
            if self.full_curvature == "chunk" else minibatch
        phases = [phase1]
        if self.full_cg_steps:
            phases.append(Phase("full", cg_steps=_scaled(self.full_cg_steps, f,
                                                         self.full_cg_iters),
                                gradient=BatchSpec("all"), curvature=curvature, config=full))
        if self.final_cg_steps:
            phases.append(Phase("final", cg_steps=_scaled(self.final_cg_steps, f,
                                                          self.full_cg_iters),
                                gradient=BatchSpec("all"), curvature=curvature, config=full,
                                weight_decay=self.final_weight_decay))
        return PhaseSchedule(tuple(phases))

    def total_updates(self, n_train: int) -> int | None:
        """Updates until the last phase ends (None when the first phase is unbounded)."""
        schedule = self.phases(n_train, False)
        if not all(p.bounded for p in schedule.phases):
            return None
        total = 0
        for p in schedule.phases:
            per = int((p.config or self.config).cg_max_iters)
            total += -(-int(p.cg_steps) // per)
        return total


@dataclass(frozen=True)
class MomentumSettings(Settings):
    """NAG, CM and SGD in a run ([S13 Eq. 1-5], §3 for the autoencoders, §4 for the RNNs).

    Each field's meaning is the docstring below it.
    """

    weight_decay: float = 0.0
    """L2 coefficient of the objective (the papers use none)."""
    batch_size: int = 200
    """Cases per update (200 for the autoencoders, 100 for the RNNs)."""
    lr: float = 0.01
    """The learning rate ε."""
    schedule: str = "sutskever"
    """``"sutskever"`` (Eq. 5 capped at ``mu_max``, μ = ``final_mu`` for the last
    ``final_steps`` updates), ``"rnn"`` (0.9 for ``warm_steps`` updates, then ``mu0``) or
    ``"constant"`` (``mu_max``). SGD ignores it (μ = 0)."""
    mu_max: float = 0.99
    """The cap of Eq. 5, and the constant schedule's μ."""
    final_mu: float = 0.9
    """μ of Eq. 5's last ``final_steps`` updates."""
    final_steps: int = 1000
    """Updates at ``final_mu`` at the end of a ``"sutskever"`` run."""
    mu0: float = 0.995
    """μ of the ``"rnn"`` schedule after its warm start."""
    warm_steps: int = 1000
    """Updates at μ = 0.9 before the ``"rnn"`` schedule's ``mu0``."""
    mu_stage: int = 250
    """Updates per stage of Eq. 5 (250, [S13 Eq. 5]; ``hessfree reproduce`` scales it with the
    fraction of the budget unless told not to)."""

    def __post_init__(self) -> None:
        """Validate."""
        _checks.number(self.weight_decay, "weight_decay", 0.0)
        _checks.integer(self.batch_size, "batch_size", minimum=1)
        _checks.number(self.lr, "lr", 0.0, strict_min=True)
        _checks.choice(self.schedule, "schedule", MOMENTUM_SCHEDULES)
        for name in ("mu_max", "final_mu", "mu0"):
            _checks.probability(getattr(self, name), name)
        _checks.integer(self.final_steps, "final_steps", minimum=0)
        _checks.integer(self.warm_steps, "warm_steps", minimum=0)
        _checks.integer(self.mu_stage, "mu_stage", minimum=1)

    def mu_schedule(self, total_steps: int | None) -> Any:
        """The μ schedule (``total_steps`` places Eq. 5's final low-momentum phase)."""
        if self.schedule == "rnn":
            return RNNSchedule(self.mu0, warm_steps=self.warm_steps)
        if self.schedule == "constant":
            return Constant(self.mu_max)
        return SutskeverSchedule(self.mu_max, warm=self.mu_stage, final_mu=self.final_mu,
                                 final_steps=self.final_steps, total_steps=total_steps)
