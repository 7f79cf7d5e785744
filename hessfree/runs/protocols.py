"""The papers' table protocols, and the checked plan of runs that reproduces one at a fraction.

Table 1 ([S13 §3, Table 1]) on ``curves-ae``, ``mnist-ae``, ``faces-ae``:

* SGD, CM and NAG: minibatches of 200, the Eq. 5 μ schedule capped at each μ_max of
  {0.9, 0.99, 0.995, 0.999} (SGD: μ = 0), μ reduced to 0.9 for the last updates, and for each
  cell the best learning rate of {0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001} by final training
  error;
* HF* (Martens 2010, HFDemo settings) at the same gradient-equivalents as one NAG run;
* HF† (the momentum-like HF of [S13 A.6]) on its own phase schedule.

Table 5 ([S13 §4, Table 5]) on ``addition``, ``multiplication``, ``memorization-5bit`` and
``memorization-20bit``: NAG and CM with minibatches of 100 sequences, μ = 0.9 for 1000 updates
then μ0 of {0, 0.9, 0.98, 0.995}, the best learning rate of {1e-3, 1e-4, 1e-5, 1e-6}; and HF with
structural damping ([M&S11], [HF-RNN]) at the same gradient-equivalents as one NAG run.

How each optimizer takes part is its family's table role (:mod:`hessfree.runs.families`:
:class:`~hessfree.runs.families.Grid`, :class:`~hessfree.runs.families.EqualCost`,
:class:`~hessfree.runs.families.OwnSchedule`), so a new family joins a table by its registration.

**The fraction rule** (one rule for every schedule): at ``fraction = f``, everything that counts
updates over the whole run is multiplied by ``f`` — NAG's 750,000 (Table 5: 50,000) updates and
its final low-μ stretch of 1000 updates, HF*'s budget (which is NAG's in gradient-equivalents),
every length and time point of the A.6 phases (``MomentumHFSettings.fraction``), and (with
``mu_stages="scaled"``, the default) the μ schedules' warm-up: Eq. 5's 250-update stages become
``max(1, round(250 f))`` updates and the RNN schedule's 1000 warm updates ``round(1000 f)``, so
μ reaches μ_max (0.999 from update 124,750 of 750,000 at f = 1, i.e. after the same sixth of
the run) and a "0.999" cell means 0.999. ``mu_stages="unscaled"`` keeps them at 250 and 1000
updates, as a count per update; then a short run never reaches the higher μ_max (at f = 0.02,
k = ⌊t/250⌋ ≤ 59, so μ ≤ 1 − 1/120 ≈ 0.992). What happens *per update* is unchanged: minibatch
sizes, learning rates, CG steps per update, ζ and ε values, weight decay. So ``f = 1`` is the
papers' protocol and a small ``f`` is the same protocol on a shorter clock, never a different
one.

``seeds`` runs every cell once per seed (run folders ``<name>-seed<s>`` when there is more than
one). Beyond the table's own optimizers, ``--optimizers`` may name any registered family with a
:class:`~hessfree.runs.families.Grid` role (a new baseline runs on the table's grids).

**Refused before anything runs.** :func:`plan` checks the whole plan: the table, the fraction,
the subsets, the μ and learning-rate grids (given ones are not empty), the seeds, and every job's
settings — the ``--set`` values parsed and validated by the same typed records as
``hessfree train`` (:meth:`~hessfree.runs.definition.Experiment.settings_for`); a ``--set`` of a
setting the protocol itself gives each run (``lr``: ``--lrs``; ``mu_max``/``mu0``: ``--mu``;
``fraction``: ``--fraction``; the batch size and the μ schedule) is refused, as is one that no
run has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hessfree import _checks
from hessfree.errors import InputError
from hessfree.runs import experiments, families
from hessfree.runs.definition import Experiment
from hessfree.runs.families import EqualCost, Grid, OwnSchedule
from hessfree.runs.settings import flat

__all__ = ["EQ5_STAGE", "Job", "MU_STAGES", "Protocol", "RNN_WARM", "TABLES", "plan"]

#: how the μ schedules' warm-up follows the fraction (module docstring)
MU_STAGES = ("scaled", "unscaled")
#: Eq. 5's stage and the RNN schedule's warm phase at f = 1, in updates ([S13 §3, §4])
EQ5_STAGE, RNN_WARM = 250, 1000


@dataclass(frozen=True)
class Protocol:
    """One of the papers' tables: what runs, on what, with which grids.

    Attributes:
        name: ``table1`` or ``table5``.
        experiments: the table's rows.
        updates: the grid runs' updates at f = 1.
        batch_size: the grid runs' minibatch.
        mus: μ_max (Eq. 5) or μ0 (RNN schedule) values, 0 = SGD.
        lrs: the learning-rate grid.
        optimizers: the families that run (each by its table role).
        final_steps: Eq. 5's final low-μ stretch at f = 1 (0: none).
        schedule: the grid runs' μ schedule, ``"sutskever"`` or ``"rnn"``.
        equal_cost_cell: the column of an :class:`~hessfree.runs.families.EqualCost` family.
        metric: the ``/eval`` column a cell reports (and the learning rate is chosen by).
        metric_name: what it is, for the summary.
    """

    name: str
    experiments: tuple[str, ...]
    updates: int
    batch_size: int
    mus: tuple[float, ...]
    lrs: tuple[float, ...]
    optimizers: tuple[str, ...]
    final_steps: int
    schedule: str
    equal_cost_cell: str
    metric: str
    metric_name: str

    def mu_schedule(self, mu: float, f: float, mu_stages: str) -> dict[str, Any]:
        """The μ-schedule settings of a grid run at μ and fraction ``f`` (module docstring)."""
        scaled = mu_stages == "scaled"
        if self.schedule == "sutskever":
            return {"schedule": "sutskever", "mu_max": mu,
                    "final_steps": int(round(self.final_steps * f)),
                    "mu_stage": max(1, int(round(EQ5_STAGE * f))) if scaled else EQ5_STAGE}
        return {"schedule": "rnn", "mu0": mu,
                "warm_steps": int(round(RNN_WARM * f)) if scaled else RNN_WARM}


TABLES = {
    # [S13 §3, Table 1]
    "table1": Protocol("table1", ("curves-ae", "mnist-ae", "faces-ae"), 750_000, 200,
                       (0.0, 0.9, 0.99, 0.995, 0.999),
                       (0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001),
                       ("sgd", "cm", "nag", "hf", "hf-momentum"), 1000, "sutskever", "HF*",
                       "train_error", "training squared error"),
    # [S13 §4, Table 5]
    "table5": Protocol("table5", ("addition", "multiplication", "memorization-5bit",
                                  "memorization-20bit"), 50_000, 100,
                       (0.0, 0.9, 0.98, 0.995), (1e-3, 1e-4, 1e-5, 1e-6),
                       ("sgd", "cm", "nag", "hf"), 0, "rnn", "HF", "test_error",
                       "zero-one error (test)"),
}


@dataclass(frozen=True)
class Job:
    """One training run of a protocol (checked: its settings are valid).

    Attributes:
        experiment: the experiment.
        cell: the table's column (``"0.99N"``, ``"0.9M"``, ``"0"`` for SGD, ``"HF*"``,
            ``"HF†"`` / ``"HF"``).
        optimizer: the optimizer family.
        name: the run folder's name.
        overrides: its settings that differ from the experiment's defaults, as typed values.
        steps / budget: the run's budget (updates, or gradient-equivalents).
        lr: the learning rate (grid runs), else None.
        seed: the run's seed.
    """

    experiment: str
    cell: str
    optimizer: str
    name: str
    overrides: dict[str, Any]
    steps: int | None = None
    budget: float | None = None
    lr: float | None = None
    seed: int = 0


#: settings a protocol gives its runs, and the option that chooses them instead of ``--set``
_PROTOCOL_KEYS = {"lr": "--lrs", "mu_max": "--mu", "mu0": "--mu", "fraction": "--fraction",
                  "final_steps": "--fraction", "mu_stage": "--mu-stages",
                  "warm_steps": "--mu-stages"}


@dataclass(frozen=True)
class _Context:
    """What every job of a plan shares."""

    protocol: Protocol
    fraction: float
    mus: tuple[float, ...]
    lrs: tuple[float, ...]
    mu_stages: str
    given: dict[str, Any]

    @property
    def steps(self) -> int:
        """A grid run's updates."""
        return max(1, int(round(self.protocol.updates * self.fraction)))


def _chosen(given: Sequence[Any] | None, default: tuple[Any, ...], flag: str,
            validate: Any) -> tuple[Any, ...]:
    """The default, or the given values: at least one, each passing ``validate(x, flag)``."""
    if given is None:
        return default
    out = tuple(given)
    if not out:
        raise InputError(f"{flag}: expected at least one value, got none")
    for x in out:
        validate(x, flag)
    return out


def _baselines(p: Protocol) -> tuple[str, ...]:
    """Registered families beyond the table's that run on its grid (a Grid role).

    So a new baseline joins ``--optimizers`` by its registration alone.
    """
    return tuple(n for n in families.names()
                 if n not in p.optimizers and isinstance(families.get(n).table, Grid))


def _member_of(table: str, allowed: tuple[str, ...]) -> Any:
    """Validation that a value is one of ``allowed`` (a table's experiments or families)."""
    def validate(x: Any, flag: str) -> None:
        if x not in allowed:
            raise InputError(f"{flag}: {x!r} is not in {table}; choose from "
                             f"{', '.join(allowed)}")
    return validate


def _seeds(seeds: Sequence[int] | int | None, seed: int) -> tuple[int, ...]:
    """``None``: ``(seed,)``; an integer N: N seeds from ``seed``; a list: those seeds."""
    from hessfree.runs.trainer import MAX_SEED

    _checks.integer(seed, "--seed", 0, MAX_SEED)
    if seeds is None:
        return (seed,)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        _checks.integer(seeds, "--seeds", minimum=1)
        seeds = range(seed, seed + seeds)
    out = tuple(_checks.integer(s, "--seeds", 0, MAX_SEED) for s in seeds)
    if not out or len(set(out)) != len(out):
        raise InputError(f"--seeds: expected a count or distinct seeds, got {list(out)}")
    return out


def _given(extra: dict[str, Any], protocol: dict[str, Any], table: str) -> dict[str, Any]:
    """``--set`` values and the protocol's own for one run; a ``--set`` of the latter refused."""
    for key in sorted(set(extra) & set(protocol)):
        raise InputError(f"--set {key}: {table} gives its runs their {key} (choose it with "
                         f"{_PROTOCOL_KEYS.get(key, 'the protocol')}), so it cannot be set")
    return {**extra, **protocol}


def _family_jobs(exp: str, name: str, ctx: _Context, extra: dict[str, Any],
                 n_train: int) -> list[Job]:
    """The jobs of family ``name`` on ``exp``, by its table role."""
    p, role = ctx.protocol, families.get(name).table
    if isinstance(role, Grid):
        jobs = []
        for mu in (ctx.mus if role.mark else (0.0,)):
            cell = role.cell_of(mu)
            for lr in ctx.lrs:
                own = {"lr": lr, "batch_size": p.batch_size,
                       **(p.mu_schedule(mu, ctx.fraction, ctx.mu_stages) if role.mark else {})}
                jobs.append(Job(exp, cell, name, f"{name}-{cell}-lr{lr:g}",
                                _given(extra, own, p.name), steps=ctx.steps, lr=lr))
        return jobs
    if isinstance(role, EqualCost):
        return [Job(exp, p.equal_cost_cell, name, name, extra,
                    budget=ctx.steps * p.batch_size / n_train)]
    if isinstance(role, OwnSchedule):
        over = _given(extra, {"fraction": ctx.fraction}, p.name)
        _, settings = experiments.get(exp).settings_for(name, over)
        updates = settings.total_updates(n_train)
        if updates is None:
            raise InputError(f"{exp}: its {name} settings have no bounded phases")
        return [Job(exp, role.cell, name, name, over, steps=updates)]
    raise InputError(f"--optimizers: the family {name!r} has no table role")


def _checked(job: Job, exp: Experiment) -> Job:
    """``job`` with its settings built by the typed records, kept as typed values.

    Raises:
        InputError: a setting is invalid (naming the run and the setting).
    """
    try:
        data, opt = exp.settings_for(job.optimizer, job.overrides)
    except InputError as err:
        raise InputError(f"{job.experiment} {job.name}: {err}") from None
    values = {**flat(data), **flat(opt)}
    return dataclasses.replace(job, overrides={k: values[k] for k in job.overrides})


def plan(table: str, fraction: float, experiments_: Sequence[str] | None = None,
         optimizers: Sequence[str] | None = None, mus: Sequence[float] | None = None,
         lrs: Sequence[float] | None = None, overrides: dict[str, Any] | None = None,
         seeds: Sequence[int] | int | None = None, seed: int = 0,
         mu_stages: str = "scaled") -> list[Job]:
    """The jobs of ``table`` at ``fraction`` of its budget, every one checked (module docstring).

    ``experiments_``, ``optimizers``, ``mus``, ``lrs``: subsets or grids (None: the table's;
    an empty one is refused). ``seeds``: a count (that many seeds from ``seed``) or a list;
    None: ``seed`` alone.
    """
    p = TABLES[_checks.choice(table, "table", tuple(TABLES))]
    ctx = _Context(p, _checks.number(fraction, "--fraction", 0.0, 1.0, strict_min=True),
                   _chosen(mus, tuple(m for m in p.mus if m > 0), "--mu", _checks.probability),
                   _chosen(lrs, p.lrs, "--lrs",
                           lambda x, n: _checks.number(x, n, 0.0, strict_min=True)),
                   _checks.choice(mu_stages, "--mu-stages", MU_STAGES), dict(overrides or {}))
    exps = _chosen(experiments_, p.experiments, "--experiments",
                   _member_of(table, p.experiments))
    opts = _chosen(optimizers, p.optimizers, "--optimizers",
                   _member_of(table, p.optimizers + _baselines(p)))
    seed_list = _seeds(seeds, seed)
    jobs, used = [], set()
    defined = {e: experiments.get(e) for e in exps}
    for exp, definition in defined.items():
        data_keys = set(definition.data_defaults().keys())
        data, _ = definition.settings_for(
            opts[0], {k: v for k, v in ctx.given.items() if k in data_keys})
        for name in opts:
            keys = data_keys | set(definition.optimizer_defaults(name).keys())
            extra = {k: v for k, v in ctx.given.items() if k in keys}
            used |= set(extra)
            jobs += _family_jobs(exp, name, ctx, extra, int(data.n_train))
    unused = sorted(set(ctx.given) - used)
    if unused:
        raise InputError(f"--set: no run of {table} has the setting(s) {unused}")
    many = len(seed_list) > 1
    checked = [_checked(j, defined[j.experiment]) for j in jobs]
    return [dataclasses.replace(j, seed=s, name=f"{j.name}-seed{s}" if many else j.name)
            for j in checked for s in seed_list]
