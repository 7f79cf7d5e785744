"""The training loop: any optimizer, budgets, evaluation, atomic checkpoints, exact resume.

``train(RunSpec(...))`` builds the experiment's data and model, runs optimizer steps until a
budget is spent — steps, optimizer wall-clock seconds (evaluation excluded), or
gradient-equivalents of the training set (``grad_equiv``, counted by the optimizers) — evaluates
the experiment's error on the training and test sets every ``eval_every`` steps, writes every step
to ``runs/<experiment>/<optimizer>-<timestamp>/results.h5`` and checkpoints atomically (temporary
file, then ``os.replace``). ``resume`` continues a run from its checkpoint into the same results
file (rows after the checkpoint are cut), with a trajectory identical to not stopping.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hessfree import batches
from hessfree.curvature import Problem
from hessfree.quadratic import Quadratic
from hessfree.runs import checkpoint, experiments
from hessfree.runs.experiment import Experiment
from hessfree.runs.results import ResultsWriter, read_results
from hessfree.runs.runners import HFRunner, Runner, make_runner
from hessfree.runs.settings import GRAD_CHUNK, flat, from_flat, record_for

__all__ = ["DTYPES", "RunSpec", "resolve_device", "train"]

log = logging.getLogger("hessfree.train")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
@dataclass
class RunSpec:
    """Everything ``hessfree train`` takes.

    Attributes:
        experiment: registered experiment name.
        optimizer: ``hf``, ``hf-momentum``, ``nag``, ``cm`` or ``sgd``.
        steps / seconds / budget: stop after this many steps, optimizer seconds or
            gradient-equivalents of the training set (whichever comes first; at least one).
        seed: seeds data, initialization and minibatch streams.
        device / dtype: where and in what precision to run.
        out: the folder under which ``<experiment>/<optimizer>-<timestamp>/`` is made.
        overrides: ``--set key=value`` strings, checked against the experiment's settings.
        eval_every: evaluate every this many steps (and at the end).
        checkpoint_every: checkpoint every this many steps (and at the end).
        save_quadratics_every: HF only: save the step's quadratic every K steps.
        quiet: no progress bar.
        resume: a run folder (or its results.h5) to continue.
    """

    experiment: str = ""
    optimizer: str = "hf"
    steps: int | None = None
    seconds: float | None = None
    budget: float | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    out: str = "runs"
    overrides: dict[str, str] = field(default_factory=dict)
    eval_every: int = 10
    checkpoint_every: int = 50
    save_quadratics_every: int | None = None
    quiet: bool = False
    resume: str | None = None


def resolve_device(name: str) -> torch.device:
    """``name`` as a device; a clear error when CUDA is asked for and absent."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available on this machine")
    return dev


class _Run:
    """The state of one training run (built fresh or from a checkpoint)."""

    def __init__(self, spec: RunSpec, exp: Experiment, data_settings: Any, opt_settings: Any
                 ) -> None:
        self.spec, self.exp = spec, exp
        self.data_settings, self.opt_settings = data_settings, opt_settings
        self.device = resolve_device(spec.device)
        if spec.dtype not in DTYPES:
            raise ValueError(f"--dtype: expected one of {sorted(DTYPES)}, got {spec.dtype!r}")
        self.dtype = DTYPES[spec.dtype]
        self.data = exp.data(data_settings, spec.seed).to(self.device, self.dtype)
        gen = torch.Generator().manual_seed(spec.seed)
        self.model = exp.model(data_settings, gen).to(self.device, self.dtype)
        self.problem = Problem(self.model, exp.loss(data_settings),
                               weight_decay=opt_settings.weight_decay)
        self.runner: Runner = make_runner(spec.optimizer, self.problem, self.data, opt_settings,
                                          spec.seed, spec.steps)
        self.step = self.n_evals = 0
        self.seconds = self.grad_equiv = 0.0

    @property
    def settings(self) -> dict[str, Any]:
        """Data and optimizer settings as one flat dict (the results' ``config``)."""
        return {**flat(self.data_settings), **flat(self.opt_settings)}

    def done(self) -> bool:
        s = self.spec
        return ((s.steps is not None and self.step >= s.steps)
                or (s.seconds is not None and self.seconds >= s.seconds)
                or (s.budget is not None and self.grad_equiv >= s.budget))

    def evaluate(self) -> dict[str, Any]:
        with self.runner.evaluation_context():
            n = self.data_settings.eval_cases or None
            train = self.data.train if n is None else batches.split(self.data.train, n)[0]
            objective = self.runner.objective
            row = {"step": self.step, "seconds": self.seconds, "grad_equiv": self.grad_equiv,
                   "train_error": self.exp.error(self.model, train, self.data_settings),
                   "test_error": self.exp.error(self.model, self.data.test, self.data_settings),
                   "train_loss": objective.value(objective.parameters(),
                                                 batches.split(train, GRAD_CHUNK))}
        self.n_evals += 1
        return row

    def checkpoint_state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "runner": self.runner.state_dict(),
                "step": self.step, "n_evals": self.n_evals, "seconds": self.seconds,
                "grad_equiv": self.grad_equiv, "spec": dataclasses.asdict(self.spec),
                "data_settings": flat(self.data_settings),
                "optimizer_settings": flat(self.opt_settings),
                "torch_rng": torch.get_rng_state()}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.runner.load_state_dict(state["runner"])
        self.step, self.n_evals = int(state["step"]), int(state["n_evals"])
        self.seconds, self.grad_equiv = float(state["seconds"]), float(state["grad_equiv"])
        torch.set_rng_state(state["torch_rng"])


def _run_dir(spec: RunSpec) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(spec.out) / spec.experiment / f"{spec.optimizer}-{stamp}"
    path, k = base, 1
    while path.exists():
        path, k = base.with_name(f"{base.name}-{k}"), k + 1
    return path


def _model_spec(run: _Run) -> dict[str, Any]:
    return run.exp.model_spec(run.data_settings) if run.exp.model_spec else {}


def _attrs(run: _Run) -> dict[str, Any]:
    spec = run.spec
    phases = getattr(run.runner, "schedule", None)
    return {"experiment": spec.experiment, "optimizer": spec.optimizer, "seed": spec.seed,
            "device": str(run.device), "dtype": spec.dtype, "config": run.settings,
            "phases": phases.to_dict() if isinstance(run.runner, HFRunner) else None,
            "n_train": run.data.n_train, "error_name": run.exp.error_name,
            "model_spec": _model_spec(run),
            "spec": {k: v for k, v in dataclasses.asdict(spec).items() if k != "resume"}}


def _quadratic_saver(run: _Run, writer: ResultsWriter) -> Any:
    """A hook saving the quadratic of the coming HF step (the one the step solves)."""
    def save(q: Quadratic) -> None:
        q.save(writer.quadratic_group(run.step), experiment=run.spec.experiment,
               model_spec=_model_spec(run))

    return save


def _open(spec: RunSpec) -> tuple[_Run, ResultsWriter, Path]:
    """A fresh run, or the run ``spec.resume`` names restored from its checkpoint."""
    if spec.resume:
        path = Path(spec.resume)
        path = path / "results.h5" if path.is_dir() else path
        ckpt = path.with_name("checkpoint.pt")
        if not path.exists() or not ckpt.exists():
            raise ValueError(f"--resume: no results.h5 and checkpoint.pt in {path.parent}")
        state = checkpoint.load(ckpt)
        saved = RunSpec(**{**state["spec"], "resume": None})
        spec = dataclasses.replace(saved, steps=spec.steps, seconds=spec.seconds,
                                   budget=spec.budget, quiet=spec.quiet, resume=spec.resume)
        exp = experiments.get(spec.experiment)
        data = from_flat(type(exp.data_defaults()), state["data_settings"])
        opt = from_flat(record_for(spec.optimizer), state["optimizer_settings"])
        run = _Run(spec, exp, data, opt)
        run.load(state)
        # keep the periodic evaluations up to the checkpoint; an evaluation made only because
        # the interrupted run ended is not part of the uninterrupted trajectory
        steps = read_results(path).eval.get("step", [])
        run.n_evals = sum(1 for k in steps if k <= run.step and k % spec.eval_every == 0)
        writer = ResultsWriter(path, {}, mode="append")
        writer.truncate(run.step, run.n_evals)
        return run, writer, path
    exp = experiments.get(spec.experiment)
    data, opt = exp.settings_for(spec.optimizer, spec.overrides)
    run = _Run(spec, exp, data, opt)
    folder = _run_dir(spec)
    folder.mkdir(parents=True)
    path = folder / "results.h5"
    return run, ResultsWriter(path, _attrs(run), mode="new"), path


def train(spec: RunSpec) -> Path:
    """Run (or resume) a training run; returns the path of its results file."""
    if spec.steps is None and spec.seconds is None and spec.budget is None:
        raise ValueError("budget: give --steps, --seconds or --budget")
    run, writer, path = _open(spec)
    spec = run.spec
    hook = _quadratic_saver(run, writer) if (spec.save_quadratics_every and
                                              isinstance(run.runner, HFRunner)) else None
    bar = None if spec.quiet else _progress(spec)
    ckpt = path.with_name("checkpoint.pt")
    try:
        if run.step == 0 and run.n_evals == 0:
            writer.append_eval(run.evaluate())
        while not run.done():
            save_q = hook if hook and run.step % spec.save_quadratics_every == 0 else None
            row = run.runner.step(save_q)
            run.step += 1
            run.seconds += float(row["seconds"])
            run.grad_equiv += float(row["grad_equiv"])
            writer.append_step(row)
            if run.step % spec.eval_every == 0 or run.done():
                writer.append_eval(run.evaluate())
            if run.step % spec.checkpoint_every == 0 or run.done():
                checkpoint.save(ckpt, run.checkpoint_state())
            if bar is not None:
                # never past the total: tqdm drops an overshot total, breaking our bar_format
                bar.update(min(_progress_units(spec, row), max(0.0, bar.total - bar.n)))
                bar.set_postfix(run.runner.postfix(row), refresh=False)
        writer.save_params("final", {k: v.detach().cpu() for k, v in
                                     run.model.state_dict().items()})
        writer.set_attrs(status="finished", steps_done=run.step)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    log.info("results in %s", path)
    return path


def _progress(spec: RunSpec) -> Any:
    from tqdm import tqdm

    if spec.steps is not None:
        return tqdm(total=spec.steps, desc=f"{spec.experiment} {spec.optimizer}", unit="step")
    if spec.seconds is not None:
        return tqdm(total=spec.seconds, desc=f"{spec.experiment} {spec.optimizer}", unit="s",
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}"
                               "{postfix}]")
    return tqdm(total=spec.budget, desc=f"{spec.experiment} {spec.optimizer}", unit="ge",
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} grad-equiv [{elapsed}<"
                           "{remaining}{postfix}]")


def _progress_units(spec: RunSpec, row: dict) -> float:
    if spec.steps is not None:
        return 1
    if spec.seconds is not None:
        return float(row["seconds"])
    return float(row["grad_equiv"])
