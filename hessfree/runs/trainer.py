"""The training loop: any optimizer, budgets, evaluation, atomic checkpoints, exact resume.

``train(RunSpec(...))`` builds the experiment's data and model, runs optimizer steps until a
budget is spent — steps, wall-clock seconds of the whole run from the loop's start
(evaluations and checkpoints included: :mod:`hessfree.runs.clock`), or gradient-equivalents of
the training set (``grad_equiv``, counted by the optimizers) — or the optimizer reports that no
progress is possible, evaluates the experiment's error on the training and test sets every
``eval_every`` steps, writes every step to
``runs/<experiment>/<optimizer>-<timestamp>/results.h5`` and checkpoints atomically. The run's
tensor operations use the threads :func:`hessfree.runs.threads.choose` picks (``threads``),
restored when it returns; its progress line is :class:`hessfree.runs.progress.RunBar`.

``resume(path, ...)`` continues a run from its checkpoint into the same results file, with a
trajectory identical to not stopping. What a run guarantees (README, "What a run guarantees"):

* one writer per run (:mod:`hessfree.runs.lock`); readers may read at any time;
* every committed row survives a kill; resume keeps every ``/steps`` row its checkpoint covers
  and every ``/eval`` row written up to it, and cuts only rows written after the checkpoint
  (they are recomputed identically);
* a resume that names another experiment, optimizer, seed or dtype, or another value of a
  setting, is refused; budgets, ``eval_every``, ``checkpoint_every`` and the device may change
  (recorded in the ``resumes`` attribute);
* a fault while writing (a full disk) ends the run with :class:`hessfree.errors.RunError`: the
  committed rows and the previous checkpoint are intact, temporary files are removed, and the
  run's ``status`` says it did not finish.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hessfree import _checks, batches, distributed
from hessfree.curvature import Problem
from hessfree.errors import InputError
from hessfree.quadratic import Quadratic
from hessfree.runs import checkpoint, experiments, families
from hessfree.runs import threads as run_threads
from hessfree.runs.clock import (
    PROBE_CASES,
    OutOfTime,
    WallBudget,
    alarm,
    can_interrupt,
    eval_limit,
)
from hessfree.runs.definition import Experiment
from hessfree.runs.progress import RunBar
from hessfree.runs.runners import Runner
from hessfree.runs.session import CHECKPOINT_NAME, RESULTS_NAME, RunSession
from hessfree.runs.settings import GRAD_CHUNK, apply_overrides, flat, from_flat, today

__all__ = ["DTYPES", "RunSpec", "resolve_device", "resume", "train"]

log = logging.getLogger("hessfree.train")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: seeds must fit torch's generator and the batch-stream arithmetic
MAX_SEED = 2**63 - 1
STATUS_RUNNING, STATUS_FINISHED = "running", "finished"


@dataclass
class RunSpec:
    """Everything ``hessfree train`` takes (validated when built).

    Attributes:
        experiment: registered experiment name.
        optimizer: a registered optimizer family (:func:`hessfree.runs.families.names`).
        steps / seconds / budget: stop after this many steps, wall-clock seconds of the whole
            run (from the loop's start, evaluations and checkpoints included:
            :mod:`hessfree.runs.clock`) or gradient-equivalents of the training set
            (whichever comes first; at least one; each a finite positive number).
        seed: seeds data, initialization and minibatch streams (0 <= seed < 2**63).
        device / dtype: where and in what precision to run.
        out: the folder under which ``<experiment>/<optimizer>-<timestamp>/`` is made.
        overrides: ``--set key=value`` settings, checked against the experiment's records.
        eval_every: evaluate every this many steps (and at the end).
        checkpoint_every: checkpoint every this many steps (and at the end).
        checkpoint_minutes: also checkpoint after a step that ends this many minutes of
            wall-clock after the session's last checkpoint (or its start), so that a run of
            long steps (HF on a full autoencoder: minutes a step) can be resumed after a
            crash; a checkpoint is written when either is due.
        save_quadratics_every: HF only: save the step's quadratic every K steps.
        quiet: no progress bar.
        name: the run folder's name under ``<out>/<experiment>/`` (default
            ``<optimizer>-<timestamp>``); an existing folder of that name is refused.
        timeout: under ``torchrun``, seconds a rank waits in a collective for the others
            before the run stops with an error (a rank died or hangs).
        threads: intra-op threads of the run, a positive integer or ``"auto"``
            (:func:`hessfree.runs.threads.choose`); the previous number is restored after it.
    """

    experiment: str = ""
    optimizer: str = families.DEFAULT
    steps: int | None = None
    seconds: float | None = None
    budget: float | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    out: str = "runs"
    overrides: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 10
    checkpoint_every: int = 50
    checkpoint_minutes: float = 10.0
    save_quadratics_every: int | None = None
    quiet: bool = False
    name: str | None = None
    timeout: float = distributed.DEFAULT_TIMEOUT
    threads: int | str = run_threads.AUTO

    def __post_init__(self) -> None:
        """Check every field once (the CLI and the API alike)."""
        check_budgets(self.steps, self.seconds, self.budget)
        family = families.get(self.optimizer, "--optimizer")
        _checks.integer(self.seed, "--seed", 0, MAX_SEED)
        _checks.choice(self.dtype, "--dtype", tuple(DTYPES))
        _checks.integer(self.eval_every, "--eval-every", minimum=1)
        _checks.integer(self.checkpoint_every, "--checkpoint-every", minimum=1)
        _checks.number(self.checkpoint_minutes, "--checkpoint-minutes", 0.0, strict_min=True)
        if self.save_quadratics_every is not None:
            _checks.integer(self.save_quadratics_every, "--save-quadratics-every", minimum=1)
            if not family.quadratics:
                raise InputError(f"--save-quadratics-every: only HF builds quadratics; "
                                 f"--optimizer {self.optimizer} has none")
        if self.name is not None and (not isinstance(self.name, str) or not self.name
                                      or "/" in self.name or self.name in (".", "..")):
            raise InputError(f"--name: expected a folder name, got {self.name!r}")
        _checks.number(self.timeout, "--timeout", 0.0, strict_min=True)
        if self.threads != run_threads.AUTO:
            _checks.integer(self.threads, "--threads", minimum=1)
        if not isinstance(self.overrides, dict):
            raise InputError(f"overrides: expected a dict key -> value, got "
                             f"{type(self.overrides).__name__}")


def check_budgets(steps: Any, seconds: Any, budget: Any) -> None:
    """At least one budget; each a finite positive number (steps an integer)."""
    if steps is None and seconds is None and budget is None:
        raise InputError("budget: give --steps, --seconds or --budget")
    if steps is not None:
        _checks.integer(steps, "--steps", minimum=1)
    if seconds is not None:
        _checks.number(seconds, "--seconds", 0.0, strict_min=True)
    if budget is not None:
        _checks.number(budget, "--budget", 0.0, strict_min=True)


def resolve_device(name: str) -> torch.device:
    """``name`` as a device; a clear error when CUDA is asked for and absent."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"--device: unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine")
    return dev


class _Run:
    """The state of one training run (built fresh or from a checkpoint)."""

    def __init__(self, spec: RunSpec, exp: Experiment, data_settings: Any, opt_settings: Any,
                 world: tuple[int, int, str] = (0, 1, "")) -> None:
        self.spec, self.exp = spec, exp
        self.data_settings, self.opt_settings = data_settings, opt_settings
        self.rank, self.world_size, device = world
        self.device = resolve_device(device or spec.device)
        self.dtype = DTYPES[spec.dtype]
        self.data = exp.data(data_settings, spec.seed).to(self.device, self.dtype)
        gen = torch.Generator().manual_seed(spec.seed)
        self.model = exp.model(data_settings, gen).to(self.device, self.dtype)
        self.problem = Problem(self.model, exp.loss(data_settings),
                               weight_decay=opt_settings.weight_decay,
                               group="world" if self.world_size > 1 else None)
        self.runner: Runner = families.get(spec.optimizer).make_runner(
            self.problem, self.data, opt_settings, spec.seed, spec.steps)
        self.step = self.n_evals = 0
        self.seconds = self.grad_equiv = 0.0
        #: wall seconds of the run's loops (every session), and of this session's at its start
        self.wall = 0.0
        self.loop_start: float | None = None
        #: cases per set of this session's evaluations (None: all; set by a seconds budget)
        self.eval_limit: int | None = None
        self.last_eval: int | None = None  # the step of this session's last evaluation
        #: clock value of this session's last checkpoint (its loop's start before the first)
        self.last_checkpoint: float | None = None
        self.stopped: str | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """Data and optimizer settings as one flat dict (the results' ``config``)."""
        return {**flat(self.data_settings), **flat(self.opt_settings)}

    def done(self, budget: WallBudget | None = None, stops_on_time: bool = False) -> bool:
        """Whether the run ends now: stopped, a budget spent, or no room for another update."""
        s = self.spec
        return (self.stopped is not None
                or (s.steps is not None and self.step >= s.steps)
                or (s.seconds is not None and self.wall_now() >= s.seconds)
                or (budget is not None and not budget.room_for_update(stops_on_time))
                or (s.budget is not None and self.grad_equiv >= s.budget))

    def checkpoint_due(self) -> bool:
        """Whether ``checkpoint_minutes`` of wall-clock passed since the last checkpoint."""
        return (self.last_checkpoint is not None and time.perf_counter() - self.last_checkpoint
                >= 60.0 * self.spec.checkpoint_minutes)

    def wall_now(self) -> float:
        """Wall seconds of the run's loops so far."""
        return self.wall + (0.0 if self.loop_start is None
                            else time.perf_counter() - self.loop_start)

    def eval_sets(self, limit: int | None = None) -> tuple[Any, Any]:
        """The training (``eval_cases``) and test cases of an evaluation, cut to ``limit``."""
        n = self.data_settings.eval_cases or None
        if limit is not None:
            n = min(n or limit, limit)
        train = self.data.train if n is None else batches.split(self.data.train, n)[0]
        test = self.data.test if limit is None else batches.split(self.data.test, limit)[0]
        return train, test

    def evaluate(self, limit: int | None = None, count: bool = True) -> dict[str, Any]:
        """The ``/eval`` row at this step (``count``: a real evaluation, not a probe)."""
        train, test = self.eval_sets(self.eval_limit if limit is None else limit)
        with self.runner.evaluation_context(), torch.no_grad():
            objective = self.runner.objective.local()  # rank 0 evaluates alone
            row = {"step": self.step, "seconds": self.seconds, "grad_equiv": self.grad_equiv,
                   "train_error": self.exp.error(self.model, train, self.data_settings),
                   "test_error": self.exp.error(self.model, test, self.data_settings),
                   "train_loss": objective.value(objective.parameters(),
                                                 batches.split(train, GRAD_CHUNK))}
        self.n_evals += int(count)
        return row

    def checkpoint_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "runner": self.runner.state_dict(),
                "step": self.step, "n_evals": self.n_evals, "seconds": self.seconds,
                "grad_equiv": self.grad_equiv, "wall": self.wall_now(),
                "threads": torch.get_num_threads(),
                "spec": dataclasses.asdict(self.spec),
                "data_settings": flat(self.data_settings),
                "optimizer_settings": flat(self.opt_settings),
                "torch_rng": torch.get_rng_state()}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.runner.load_state_dict(state["runner"])
        self.step, self.n_evals = int(state["step"]), int(state["n_evals"])
        self.seconds, self.grad_equiv = float(state["seconds"]), float(state["grad_equiv"])
        # checkpoints before wall-clock budgets counted optimizer time only
        self.wall = float(state.get("wall", state["seconds"]))
        torch.set_rng_state(state["torch_rng"])


def _model_spec(run: _Run) -> dict[str, Any]:
    return run.exp.model_spec(run.data_settings) if run.exp.model_spec else {}


def _attrs(run: _Run) -> dict[str, Any]:
    spec = run.spec
    runner = run.runner
    return {"experiment": spec.experiment, "optimizer": spec.optimizer, "seed": spec.seed,
            "device": str(run.device), "dtype": spec.dtype, "config": run.settings,
            "phases": runner.phases.to_dict() if runner.phases is not None else None,
            "n_train": run.data.n_train, "error_name": run.exp.error_name,
            "model_spec": _model_spec(run), "status": STATUS_RUNNING, "steps_done": 0,
            "world_size": run.world_size,
            "backend": run.problem.reducer.backend if run.problem.reducer else "none",
            "spec": dataclasses.asdict(spec)}


def _new_run_dir(spec: RunSpec) -> Path:
    """A new folder ``<out>/<experiment>/<optimizer>-<time>[-k]``, created atomically."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = Path(spec.out) / spec.experiment
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"--out: {parent} exists and is not a folder") from None
    if spec.name is not None:
        try:
            (parent / spec.name).mkdir()
        except FileExistsError:
            raise InputError(f"--name: {parent / spec.name} exists; continue it with --resume "
                             "or choose another name") from None
        return parent / spec.name
    for k in range(10_000):
        path = parent / (f"{spec.optimizer}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise InputError(f"--out: no free run folder name under {parent}")


def _quadratic_hook(run: _Run, session: RunSession) -> Any:
    """A hook saving the quadratic of the coming HF step, or None when none is due."""
    every, k = run.spec.save_quadratics_every, run.step
    if not every or k % every:
        return None

    def save(q: Quadratic) -> None:
        session.save_quadratic(k, q, experiment=run.spec.experiment, model_spec=_model_spec(run))

    return save


def train(spec: RunSpec, on_progress: Callable[[float], None] | None = None) -> Path:
    """Run a new training run; returns the path of its results file.

    ``on_progress`` (rank 0) is called after each update with the fraction of the budget spent
    (the largest over the budgets given; 1 at the end), e.g. for a plan's progress line.
    """
    if not isinstance(spec, RunSpec):
        raise InputError(f"spec: expected a RunSpec, got {type(spec).__name__}")
    chosen = run_threads.choose(spec.threads)
    with run_threads.using(chosen.n):
        exp = experiments.get(spec.experiment)
        data, opt = exp.settings_for(spec.optimizer, spec.overrides)
        started = time.perf_counter()
        run = _Run(spec, exp, data, opt, _world(spec))
        built = time.perf_counter() - started
        with RunSession.create(lambda: _new_run_dir(spec), {**_attrs(run), **_threads(chosen)},
                               run.rank, run.world_size) as session:
            _built(run, built, chosen)
            return _loop(run, session, chosen, on_progress)


def _threads(chosen: run_threads.Threads) -> dict[str, Any]:
    return {"threads": chosen.n, "threads_chosen": chosen.why}


def _built(run: _Run, seconds: float, chosen: run_threads.Threads) -> None:
    """Log the set-up (not counted in ``--seconds``), the threads, and a busy machine.

    Not with ``quiet`` (the threads are in the results file's attributes).
    """
    if run.rank != 0 or run.spec.quiet:
        return
    log.info("%s: data and model built in %.1f s; %d thread%s (%s)", run.spec.experiment,
             seconds, chosen.n, "s" * (chosen.n != 1), chosen.why)
    note = run_threads.busy(chosen.n)
    if note:
        log.info("the machine is oversubscribed (%s): times will be slower than on an idle "
                 "machine", note.removeprefix("busy: "))


def _world(spec: RunSpec) -> tuple[int, int, str]:
    """(rank, world size, device) of this process: one, or torchrun's process group."""
    rank, size, device = distributed.init_from_env(spec.device, spec.timeout)
    if size > 1 and spec.save_quadratics_every:
        raise InputError("--save-quadratics-every: not with more than one process (the "
                         "curvature batch is split over the ranks); save quadratics from a "
                         "one-process run")
    return rank, size, device


def resume(path: str | os.PathLike, steps: int | None = None, seconds: float | None = None,
           budget: float | None = None, quiet: bool = False,
           on_progress: Callable[[float], None] | None = None, **expect: Any) -> Path:
    """Continue the run in ``path`` (its folder or its results.h5) from its checkpoint.

    Args:
        path: the run's folder or results file.
        steps: the new step budget (a total counted from the run's start).
        seconds: the new wall-clock budget (total over the run's sessions).
        budget: the new budget in gradient-equivalents (total).
        quiet: no progress bar.
        on_progress: as for :func:`train`.
        **expect: values the caller expects the run to have (``experiment``, ``optimizer``,
            ``seed``, ``dtype``; ``overrides`` as a dict of settings): a difference is refused
            naming both values. ``device``, ``eval_every``, ``checkpoint_every``,
            ``checkpoint_minutes``, ``save_quadratics_every``, ``timeout`` and ``threads``
            given here are applied (and recorded).
    """
    check_budgets(steps, seconds, budget)
    path, ckpt = _run_files(path)
    state = checkpoint.load(ckpt)
    saved = _saved_spec(state, ckpt)
    changes = _check_resume(saved, expect)
    spec = dataclasses.replace(saved, steps=steps, seconds=seconds, budget=budget, quiet=quiet,
                               **changes)
    exp = experiments.get(spec.experiment)
    data, opt = _saved_settings(exp, spec, state, ckpt)
    _check_overrides(exp, spec.optimizer, data, opt, expect.get("overrides") or {})
    chosen = _resumed_threads(spec.threads, state)
    with run_threads.using(chosen.n):
        started = time.perf_counter()
        run = _Run(spec, exp, data, opt, _world(spec))
        try:
            run.load(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise checkpoint.CheckpointError(f"{ckpt}: does not fit this run ({err})") from None
        built = time.perf_counter() - started

        def attrs(old: dict[str, Any]) -> dict[str, Any]:
            resumes = [*(old.get("resumes") or []), {
                "at_step": run.step, "device": spec.device, "changes": changes,
                "world_size": run.world_size, **_threads(chosen),
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds")}]
            return {"status": STATUS_RUNNING, "resumes": resumes,
                    "spec": dataclasses.asdict(spec), "device": str(run.device),
                    "world_size": run.world_size, **_threads(chosen)}

        session, run.n_evals = RunSession.reopen(path, run.step, run.n_evals, attrs, run.rank,
                                                 run.world_size)
        with session:
            _built(run, built, chosen)
            if run.done() and session.lead:
                log.info("%s is already at step %d: the budget asks for nothing more", path,
                         run.step)
            return _loop(run, session, chosen, on_progress)


def _saved_settings(exp: Experiment, spec: RunSpec, state: dict[str, Any], ckpt: Path
                    ) -> tuple[Any, Any]:
    """The data and optimizer settings records a checkpoint holds."""
    try:
        return (from_flat(type(exp.data_defaults()), state["data_settings"]),
                from_flat(families.get(spec.optimizer).settings, state["optimizer_settings"]))
    except (KeyError, TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{ckpt}: its settings do not fit experiment "
                                         f"{spec.experiment!r} ({err})") from None


def _run_files(given: str | os.PathLike) -> tuple[Path, Path]:
    """The results file and the checkpoint of the run folder (or results file) ``given``."""
    given = Path(given)
    if not given.exists():
        raise InputError(f"--resume: no such run folder {str(given)!r}")
    path = given / RESULTS_NAME if given.is_dir() else given
    ckpt = path.with_name(CHECKPOINT_NAME)
    if not path.exists() or not ckpt.exists():
        raise InputError(f"--resume: {str(given)!r} is not a run folder (expected results.h5 "
                         f"and checkpoint.pt in {str(path.parent)!r})")
    return path, ckpt


def _resumed_threads(threads: int | str, state: dict[str, Any]) -> run_threads.Threads:
    """A resume keeps the run's threads (its trajectory stays identical), unless given a number.

    Reductions split over threads round differently, so another number of threads gives a
    slightly different trajectory; checkpoints older than this rule choose afresh.
    """
    if threads == run_threads.AUTO and "threads" in state:
        return run_threads.Threads(int(state["threads"]), "the run's, kept on resume")
    return run_threads.choose(threads)


def _saved_spec(state: dict[str, Any], ckpt: Path) -> RunSpec:
    try:
        saved = {k: v for k, v in state["spec"].items() if k != "resume"}
        return RunSpec(**saved)
    except (KeyError, TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"{ckpt}: its run specification is unreadable "
                                         f"({err})") from None


#: what a resume may change (applied and recorded) and what it must match
_MAY_CHANGE = ("device", "eval_every", "checkpoint_every", "checkpoint_minutes",
               "save_quadratics_every", "timeout", "threads")
_MUST_MATCH = ("experiment", "optimizer", "seed", "dtype")


def _check_resume(saved: RunSpec, expect: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(expect) - set(_MAY_CHANGE) - set(_MUST_MATCH) - {"overrides", "out"})
    if unknown:
        raise InputError(f"resume: unknown arguments {unknown}")
    if expect.get("out") is not None:
        raise InputError(f"--out: a resumed run stays in its folder; drop --out (got "
                         f"{expect['out']!r})")
    for key in _MUST_MATCH:
        value = expect.get(key)
        if value is not None and value != getattr(saved, key):
            raise InputError(f"--resume: the run has {key} {getattr(saved, key)!r}, the "
                             f"command asks for {value!r}; start a new run to change it")
    return {k: expect[k] for k in _MAY_CHANGE if expect.get(k) is not None}


def _check_overrides(exp: Experiment, optimizer: str, data: Any, opt: Any,
                     overrides: dict[str, Any]) -> None:
    """``--set`` on resume: accepted when it equals the run's setting, else refused."""
    if not overrides:
        return
    overrides = today((data, opt), overrides)
    asked = apply_overrides((data, opt), overrides, f"{exp.name} with {optimizer}")
    have = {**flat(data), **flat(opt)}
    got = {**flat(asked[0]), **flat(asked[1])}
    diff = sorted(k for k in overrides if got[k] != have[k])
    if diff:
        raise InputError("--set on --resume: the run was made with " + ", ".join(
            f"{k}={have[k]!r} (asked {got[k]!r})" for k in diff)
            + "; settings are fixed for a run: start a new run to change them")


def _loop(run: _Run, session: RunSession, chosen: run_threads.Threads,
          on_progress: Callable[[float], None] | None = None) -> Path:
    """Steps until the budget is spent; rank 0 writes rows, evaluations and checkpoints.

    With ``--seconds`` the loop keeps to its wall-clock budget (:mod:`hessfree.runs.clock`).
    """
    spec, lead = run.spec, session.lead
    run.loop_start = run.last_checkpoint = time.perf_counter()
    budget = None if spec.seconds is None else WallBudget(spec.seconds, run.wall)
    # HF's CG may stop on time in one process; under torchrun every rank runs the same CG
    stops_on_time = bool(getattr(run.runner, "stops_on_time", False)) and run.world_size == 1
    bar = _bar(run, chosen, quiet=spec.quiet or not lead)
    try:
        if budget is not None and lead:
            run.eval_limit = _probe(run, budget)
        if run.step == 0 and run.n_evals == 0 and lead:
            _evaluate(run, session, budget, bar)
        bar.restart_clock()
        last = run.done(budget, stops_on_time)
        while not last:
            t0 = time.perf_counter()
            row = _update(run, session, budget, stops_on_time)
            if row is None:  # the budget's time was up during the update: undone
                if lead:
                    _final_work(run, session, budget, bar)
                break
            run.step += 1
            run.seconds += float(row["seconds"])
            run.grad_equiv += float(row["grad_equiv"])
            run.stopped = run.runner.stop_reason
            if budget is not None:
                budget.update_took(time.perf_counter() - t0)
            last = run.done(budget, stops_on_time)
            if budget is not None and run.world_size > 1:  # every rank stops at the same step
                last = _any_rank(run, last)
            if not lead:
                continue
            session.write_step(run.step, row)
            if last or (run.step % spec.eval_every == 0
                        and (budget is None or budget.room_for_eval())):
                _evaluate(run, session, budget, bar)
            if run.step % spec.checkpoint_every == 0 or last or run.checkpoint_due():
                _checkpoint(run, session, budget)
            bar.stepped(_units(run, bar.mode), run.runner.postfix(row))
            if on_progress is not None:
                on_progress(1.0 if last else _fraction(run))
        if lead:
            session.write_params(run.step, "final", {k: v.detach().cpu() for k, v in
                                                     run.model.state_dict().items()})
        session.finish(run.step, STATUS_FINISHED if run.stopped is None
                       else f"{STATUS_FINISHED}: {run.stopped}", wall_seconds=run.wall_now(),
                       eval_limit=run.eval_limit or 0)
    finally:
        bar.close()
    if run.stopped is not None and lead:
        log.info("stopped early at step %d: %s", run.step, run.stopped)
    if lead:
        log.info("results in %s (%.1f s of wall-clock in this session's loop)", session.path,
                 time.perf_counter() - run.loop_start)
    return session.path


def _final_work(run: _Run, session: RunSession, budget: WallBudget | None, bar: RunBar
                ) -> None:
    """The final evaluation (unless this step has one) and checkpoint of an ended run."""
    if run.last_eval != run.step:
        _evaluate(run, session, budget, bar)
    _checkpoint(run, session, budget)


def _update(run: _Run, session: RunSession, budget: WallBudget | None, stops_on_time: bool
            ) -> dict[str, Any] | None:
    """One update's row; None when the budget's time ran out during it and it was undone.

    Under ``--seconds`` an update that might overrun (:meth:`WallBudget.risky`) runs with an
    alarm, from a copy of the runner's state and the parameters taken before it
    (:mod:`hessfree.runs.clock`); never while it saves a quadratic, nor across ranks.
    """
    hook = _quadratic_hook(run, session)
    deadline = budget.end_by() if budget is not None and stops_on_time else None

    def step() -> dict[str, Any]:
        return run.runner.step(hook, deadline=deadline) if stops_on_time \
            else run.runner.step(hook)

    if (budget is None or hook is not None or run.world_size > 1 or not budget.risky()
            or not can_interrupt()):
        return step()
    before = (copy.deepcopy(run.runner.state_dict()),
              {k: v.detach().clone() for k, v in run.model.state_dict().items()},
              torch.get_rng_state())
    try:
        with alarm(budget.alarm_in()):
            return step()
    except OutOfTime:
        run.runner.load_state_dict(before[0])
        run.model.load_state_dict(before[1])
        torch.set_rng_state(before[2])
        run.stopped = (f"the --seconds {run.spec.seconds:g} budget ran out during update "
                       f"{run.step + 1}, which was undone")
        return None


def _evaluate(run: _Run, session: RunSession, budget: WallBudget | None, bar: RunBar) -> None:
    """One evaluation row (timed for the budget; the progress line says it is evaluating)."""
    t0 = time.perf_counter()
    with bar.evaluating(run.wall_now):
        row = run.evaluate()
    session.write_eval(run.step, row)
    run.last_eval = run.step
    if budget is not None:
        budget.eval_took(time.perf_counter() - t0)


def _checkpoint(run: _Run, session: RunSession, budget: WallBudget | None) -> None:
    """A checkpoint, timed for the budget."""
    t0 = time.perf_counter()
    session.write_checkpoint(run.step, run.checkpoint_state())
    run.last_checkpoint = time.perf_counter()
    if budget is not None:  # the final parameters cost about as much again
        budget.checkpoint_took(2 * (time.perf_counter() - t0))


def _probe(run: _Run, budget: WallBudget) -> int | None:
    """The evaluation size that keeps one evaluation within its share of ``--seconds``."""
    train, test = run.eval_sets()
    sizes = (batches.count(train[0]), batches.count(test[0]))
    if max(sizes) <= PROBE_CASES:
        return None
    probe = tuple(min(n, PROBE_CASES) for n in sizes)
    t0 = time.perf_counter()
    run.evaluate(PROBE_CASES, count=False)
    limit = eval_limit(time.perf_counter() - t0, probe, sizes, budget.limit)
    if limit is not None:
        log.info("%s: evaluations use the first %d training and test cases (of %d and %d) to "
                 "keep each within a tenth of --seconds %g", run.spec.experiment, limit,
                 sizes[0], sizes[1], budget.limit)
    return limit


def _any_rank(run: _Run, last: bool) -> bool:
    """Whether any rank says the run ends now (one small all-reduce)."""
    import torch.distributed as dist

    buf = torch.tensor([float(last)], dtype=torch.float64)
    try:
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    except (RuntimeError, ValueError) as err:
        raise distributed.DistributedError(f"rank {run.rank}: the other ranks do not answer "
                                           f"({err})") from err
    return bool(buf.item() > 0)


def _fraction(run: _Run) -> float:
    """The fraction of the run's budget spent (the largest over its budgets)."""
    s = run.spec
    parts = [run.step / s.steps if s.steps else 0.0,
             run.wall_now() / s.seconds if s.seconds else 0.0,
             run.grad_equiv / s.budget if s.budget else 0.0]
    return min(1.0, max(parts))


def _bar(run: _Run, chosen: run_threads.Threads, quiet: bool) -> RunBar:
    """The run's progress line over the budget that is shown: steps, seconds or budget."""
    s = run.spec
    mode = "steps" if s.steps is not None else "seconds" if s.seconds is not None else "budget"
    total = {"steps": s.steps, "seconds": s.seconds, "budget": s.budget}[mode]
    return RunBar(f"{s.experiment} {s.optimizer}", mode, float(total), _units(run, mode),
                  chosen, quiet)


def _units(run: _Run, mode: str) -> float:
    return {"steps": run.step, "seconds": run.wall_now(), "budget": run.grad_equiv}[mode]
