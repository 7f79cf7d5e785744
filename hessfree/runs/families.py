"""The optimizer families of a run: one registration each, consulted everywhere in ``runs``.

A :class:`Family` is what ``--optimizer NAME`` names: its settings record (the typed settings of
:mod:`hessfree.runs.settings`), how to build its runner (:mod:`hessfree.runs.runners`), a label
for tables and figures, whether its steps build quadratics, and how it takes part in the papers'
table protocols (``hessfree reproduce``). Every part of ``runs`` that depends on the optimizer
asks this registry — the settings of an experiment, the trainer, the command line, the demo,
the reproduction — so adding an optimizer is one :func:`register` call::

    from hessfree import momentum
    from hessfree.runs import families
    from hessfree.runs.settings import MomentumSettings

    families.register(families.Family(
        "nag-constant", MomentumSettings, label="NAG, constant μ",
        runner=families.momentum_runner(lambda params, s, total: momentum.NAG(
            params, lr=s.lr, schedule=s.mu_max, skip_non_finite=True))))

after which ``hessfree train EXPERIMENT --optimizer nag-constant`` trains it, ``resume``
continues it, ``hessfree list`` shows it and experiments may give it default settings under its
name. The built-in families are ``hf`` and ``hf-momentum`` ([M10]; [S13 A.6]), ``nag``, ``cm``
and ``sgd`` ([S13 Eq. 1-5]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hessfree import _checks, momentum
from hessfree.curvature import Problem
from hessfree.errors import InputError, InputTypeError
from hessfree.runs.dataset import Dataset
from hessfree.runs.runners import HFRunner, MomentumOptimizer, MomentumRunner, Runner
from hessfree.runs.settings import HFSettings, MomentumHFSettings, MomentumSettings, Settings

__all__ = ["DEFAULT", "EqualCost", "Family", "Grid", "OwnSchedule", "RunnerFactory", "TableRole",
           "family_of_cell", "get", "hf_runner", "momentum_runner", "names", "register"]

#: ``(family name, problem, data, settings record, seed, total updates or None) -> Runner``
RunnerFactory = Callable[[str, Problem, Dataset, Any, int, "int | None"], Runner]


@dataclass(frozen=True)
class Grid:
    """A table role: one run per learning rate of the grid (per μ too with a ``mark``).

    Each run is as long as the protocol's updates ([S13 §3, §4]).

    Attributes:
        mark: the letter after μ in the table's columns (``"N"``: ``"0.99N"``); empty: no μ
            schedule and one column, ``cell``.
        cell: the column of a family without μ (SGD: ``"0"``).
    """

    mark: str = ""
    cell: str = ""

    def __post_init__(self) -> None:
        """Exactly one of ``mark`` and ``cell``."""
        if bool(self.mark) == bool(self.cell):
            raise InputError(f"Grid: give a μ mark or a cell, not both or neither (mark "
                             f"{self.mark!r}, cell {self.cell!r})")

    def cell_of(self, mu: float) -> str:
        """The column of a run at μ (``mu`` ignored without a mark)."""
        return f"{mu:g}{self.mark}" if self.mark else self.cell

    def owns(self, cell: str) -> bool:
        """Whether the table column ``cell`` is this role's."""
        if not self.mark:
            return cell == self.cell
        head = cell[:-len(self.mark)] if cell.endswith(self.mark) else ""
        return bool(head) and head.replace(".", "", 1).isdigit()


@dataclass(frozen=True)
class EqualCost:
    """A table role: one run at the gradient-equivalents of one run of the grid.

    Its column is the protocol's equal-cost one (Martens' HF: ``HF*`` in Table 1, ``HF`` in
    Table 5).
    """

    def owns(self, cell: str) -> bool:
        """The equal-cost columns of the papers' tables."""
        return cell in ("HF*", "HF")


@dataclass(frozen=True)
class OwnSchedule:
    """A table role: one run on the family's own phase schedule, scaled by the fraction.

    The schedule is scaled through the family's ``fraction`` setting; the run lasts as long as
    its phases (the momentum-like HF: ``HF†``).
    """

    cell: str

    def owns(self, cell: str) -> bool:
        """Its one column."""
        return cell == self.cell


#: how a family takes part in the papers' table protocols (``hessfree reproduce``)
TableRole = Grid | EqualCost | OwnSchedule


@dataclass(frozen=True)
class Family:
    """One optimizer family (module docstring).

    Attributes:
        name: what ``--optimizer`` and the results files call it.
        settings: its settings record (a frozen dataclass deriving from
            :class:`~hessfree.runs.settings.Settings`, valid with its defaults).
        runner: builds its :class:`~hessfree.runs.runners.Runner` (:data:`RunnerFactory`).
        label: how tables and figures name it.
        quadratics: whether its steps build quadratics (``--save-quadratics-every``).
        table: how it takes part in the papers' table protocols (:data:`TableRole`), or None.
    """

    name: str
    settings: type
    runner: RunnerFactory
    label: str = ""
    quadratics: bool = False
    table: TableRole | None = None

    def __post_init__(self) -> None:
        """Check the registration once."""
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip() \
                or any(c in self.name for c in "/, "):
            raise InputError(f"name: expected a family name without '/', ',' or spaces, got "
                             f"{self.name!r}")
        if not (isinstance(self.settings, type) and issubclass(self.settings, Settings)):
            raise InputTypeError(f"family {self.name!r}: settings: expected a Settings record "
                                 f"class, got {self.settings!r}")
        if not callable(self.runner):
            raise InputTypeError(f"family {self.name!r}: runner: expected a callable, got "
                                 f"{type(self.runner).__name__}")
        _checks.boolean(self.quadratics, "quadratics")
        if self.table is not None and not isinstance(self.table, (Grid, EqualCost, OwnSchedule)):
            raise InputTypeError(f"family {self.name!r}: table: expected a Grid, EqualCost or "
                                 f"OwnSchedule, got {type(self.table).__name__}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def make_runner(self, problem: Problem, data: Dataset, settings: Any, seed: int,
                    total_steps: int | None = None) -> Runner:
        """This family's runner for one run (``settings``: a record of :attr:`settings`)."""
        if not isinstance(settings, self.settings):
            raise InputTypeError(f"settings: the family {self.name!r} takes a "
                                 f"{self.settings.__name__}, got {type(settings).__name__}")
        return self.runner(self.name, problem, data, settings, seed, total_steps)


_REGISTRY: dict[str, Family] = {}
#: the family ``hessfree train`` uses when none is named
DEFAULT = "hf"


def register(family: Family, replace: bool = False) -> Family:
    """Add ``family`` (``replace``: over a registered one of that name); returns it."""
    if not isinstance(family, Family):
        raise InputTypeError(f"family: expected a Family, got {type(family).__name__}")
    if family.name in _REGISTRY and not replace:
        raise InputError(f"family {family.name!r} is registered already; pass replace=True "
                         "to replace it")
    _REGISTRY[family.name] = family
    return family


def get(name: str, what: str = "optimizer") -> Family:
    """The family called ``name`` (InputError under ``what`` listing the registered ones)."""
    return _REGISTRY[_checks.choice(name, what, _REGISTRY)]


def names() -> tuple[str, ...]:
    """The registered families, in registration order."""
    return tuple(_REGISTRY)


def family_of_cell(cell: str) -> Family | None:
    """The family whose table role owns the column ``cell`` of a paper's table, or None."""
    return next((f for f in _REGISTRY.values() if f.table is not None and f.table.owns(cell)),
                None)


def hf_runner(name: str, problem: Problem, data: Dataset,
              settings: HFSettings | MomentumHFSettings, seed: int,
              total_steps: int | None) -> HFRunner:
    """The runner of an HF family (its phases come from ``settings``)."""
    return HFRunner(name, problem, data, settings, seed)


def momentum_runner(build: MomentumOptimizer) -> RunnerFactory:
    """The runner factory of a momentum family whose optimizer ``build`` makes."""
    def make(name: str, problem: Problem, data: Dataset, settings: MomentumSettings, seed: int,
             total_steps: int | None) -> MomentumRunner:
        return MomentumRunner(name, problem, data, settings, seed, total_steps, build)

    return make


def _nag(params: list, s: MomentumSettings, total: int | None) -> momentum.CM:
    return momentum.NAG(params, lr=s.lr, schedule=s.mu_schedule(total), skip_non_finite=True)


def _cm(params: list, s: MomentumSettings, total: int | None) -> momentum.CM:
    return momentum.CM(params, lr=s.lr, schedule=s.mu_schedule(total), skip_non_finite=True)


def _sgd(params: list, s: MomentumSettings, total: int | None) -> momentum.CM:
    return momentum.SGD(params, lr=s.lr, skip_non_finite=True)


register(Family("hf", HFSettings, hf_runner, "HF (Martens 2010)", quadratics=True,
                table=EqualCost()))
register(Family("hf-momentum", MomentumHFSettings, hf_runner, "momentum-like HF (A.6)",
                quadratics=True, table=OwnSchedule("HF†")))
register(Family("nag", MomentumSettings, momentum_runner(_nag), "NAG (Eq. 3-5)",
                table=Grid(mark="N")))
register(Family("cm", MomentumSettings, momentum_runner(_cm), "CM (Eq. 1-2)",
                table=Grid(mark="M")))
register(Family("sgd", MomentumSettings, momentum_runner(_sgd), "SGD", table=Grid(cell="0")))
