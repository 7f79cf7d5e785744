"""The optimizer-family registry: one registration makes a family usable everywhere in ``runs``."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import hessfree
from hessfree import momentum
from hessfree.errors import InputError, InputTypeError
from hessfree.runs import experiments, families
from hessfree.runs.cli import main
from hessfree.runs.results import read_results
from hessfree.runs.runners import HFRunner, MomentumRunner
from hessfree.runs.settings import HFSettings, MomentumSettings, Settings
from hessfree.runs.trainer import RunSpec

RUNS = Path(hessfree.__file__).resolve().parent / "runs"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def constant_nag():
    """A family registered once, for the test: NAG with a constant μ (``mu_max``)."""
    fam = families.register(families.Family(
        "nag-constant", MomentumSettings, label="NAG, constant μ",
        runner=families.momentum_runner(lambda params, s, total: momentum.NAG(
            params, lr=s.lr, schedule=s.mu_max, skip_non_finite=True))))
    yield fam
    families._REGISTRY.pop(fam.name)


def test_the_builtin_families():
    assert families.names() == ("hf", "hf-momentum", "nag", "cm", "sgd")
    assert families.get("hf").settings is HFSettings and families.get("hf").quadratics
    assert families.get("nag").settings is MomentumSettings
    assert not families.get("sgd").quadratics
    assert families.get(families.DEFAULT).name == "hf"
    assert families.get("nag").label == "NAG (Eq. 3-5)"


def test_unknown_and_bad_registrations_are_refused():
    with pytest.raises(InputError, match=r"--optimizer: expected one of 'hf', .*got 'adam'"):
        families.get("adam", "--optimizer")
    with pytest.raises(InputError, match="registered already"):
        families.register(families.get("nag"))
    with pytest.raises(InputError, match="name: expected a family name"):
        families.Family("a b", MomentumSettings, families.hf_runner)
    with pytest.raises(InputTypeError, match="settings: expected a Settings record class"):
        families.Family("x", dict, families.hf_runner)
    with pytest.raises(InputTypeError, match="runner: expected a callable"):
        families.Family("x", MomentumSettings, None)
    with pytest.raises(InputTypeError, match="expected a Family"):
        families.register("nag")
    assert families.Family("x", MomentumSettings, families.hf_runner).label == "x"


def test_a_family_builds_its_runner_from_its_own_settings():
    exp = experiments.get("toy-quartic")
    data = exp.data(exp.data_defaults(), 0)
    problem = hessfree.Problem(exp.model(exp.data_defaults(), None), exp.loss(None))
    runner = families.get("hf").make_runner(problem, data, exp.optimizer_defaults("hf"), 0)
    assert isinstance(runner, HFRunner) and runner.phases is not None
    runner = families.get("sgd").make_runner(problem, data, exp.optimizer_defaults("sgd"), 0)
    assert isinstance(runner, MomentumRunner) and runner.phases is None
    assert isinstance(runner.opt, momentum.SGD) and runner.opt.skip_non_finite
    with pytest.raises(InputTypeError, match="the family 'nag' takes a MomentumSettings, got "
                                             "HFSettings"):
        families.get("nag").make_runner(problem, data, HFSettings(), 0)
    unsafe = families.Family("unsafe", MomentumSettings, families.momentum_runner(
        lambda params, s, total: momentum.NAG(params, lr=s.lr)))
    with pytest.raises(InputTypeError, match="must be a hessfree.momentum optimizer that "
                                             "rejects non-finite updates"):
        unsafe.make_runner(problem, data, MomentumSettings(), 0)


def test_one_registration_makes_a_family_usable_everywhere(capsys, tmp_path, constant_nag):
    code, out, _ = run(capsys, "list")
    assert "nag-constant" in out
    # an experiment's defaults: the family's record defaults, or what the experiment gives it
    assert experiments.get("toy-quartic").optimizer_defaults("nag-constant") == MomentumSettings()
    args = ["toy-quartic", "--optimizer", "nag-constant", "--set", "mu_max=0.5", "--set",
            "lr=0.01", "--set", "batch_size=1", "--eval-every", "2", "--checkpoint-every", "3",
            "--quiet", "--out", tmp_path]
    code, out, err = run(capsys, "train", *args, "--steps", 6)
    assert code == 0, err
    full = read_results(out.strip().splitlines()[-1])
    assert full.attrs["optimizer"] == "nag-constant" and full.attrs["phases"] is None
    assert np.all(full.steps["mu"] == 0.5) and full.attrs["status"] == "finished"
    code, out, err = run(capsys, "train", *args, "--steps", 4)  # checkpoint at 3, end at 4
    assert code == 0, err
    part = Path(out.strip().splitlines()[-1])
    code, _, err = run(capsys, "train", "--resume", part.parent, "--steps", 6, "--quiet")
    assert code == 0, err
    np.testing.assert_array_equal(read_results(part).steps["loss"], full.steps["loss"])
    code, _, err = run(capsys, "train", *args, "--steps", 2, "--save-quadratics-every", "1")
    assert code == 2 and "--optimizer nag-constant has none" in err


def test_a_family_with_its_own_settings_record(capsys, tmp_path):
    """A baseline whose settings are a record of its own: its keys are the ``--set`` keys."""

    @dataclass(frozen=True)
    class PlainSettings(Settings):
        weight_decay: float = 0.0
        batch_size: int = 1
        lr: float = 0.05

    fam = families.register(families.Family("plain-gd", PlainSettings, families.momentum_runner(
        lambda params, s, total: momentum.SGD(params, lr=s.lr, skip_non_finite=True))))
    try:
        spec = RunSpec(experiment="toy-quartic", optimizer="plain-gd", steps=3, quiet=True,
                       out=str(tmp_path), overrides={"lr": "0.02"})
        path = hessfree.runs.trainer.train(spec)
        res = read_results(path)
        assert res.attrs["config"]["lr"] == 0.02 and np.all(res.steps["lr"] == 0.02)
        code, _, err = run(capsys, "train", "toy-quartic", "--optimizer", "plain-gd", "--set",
                           "mu_max=0.9", "--steps", 1, "--out", tmp_path)
        assert code == 2 and "unknown key(s) ['mu_max']" in err
    finally:
        families._REGISTRY.pop(fam.name)


def _literal_dispatches(path: Path) -> list[str]:
    """Comparisons of a value with a family name written as a string (``x == "nag"``,
    ``x in ("hf", ...)``) and dicts keyed by family names: dispatch outside the registry."""
    names = set(families.names())
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        consts: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                consts += side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) \
                    else [side]
        elif isinstance(node, ast.Dict):
            consts += [k for k in node.keys if k is not None]
        hits = [c.value for c in consts if isinstance(c, ast.Constant) and c.value in names]
        if hits:
            found.append(f"{path.name}:{node.lineno}: {hits}")
    return found


def test_no_string_literal_dispatch_on_a_family_outside_the_registry():
    """Only ``families.py`` says what a family does; presets give per-family default settings
    (data keyed by name, not dispatch)."""
    files = [p for p in RUNS.rglob("*.py") if p.name != "families.py" and "presets" not in p.parts]
    assert files
    assert [hit for p in files for hit in _literal_dispatches(p)] == []


def test_the_literal_dispatch_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(o):\n    return 1 if o == "nag" else {"hf": 2}.get(o)\n'
                   'x = o in ("cm", "sgd")\n')
    assert len(_literal_dispatches(bad)) == 3


def test_table_roles_name_the_papers_columns():
    cells = {"0": "sgd", "0.9N": "nag", "0.999N": "nag", "0.995M": "cm", "HF*": "hf",
             "HF": "hf", "HF†": "hf-momentum", "SGD_C": None, "biases": None, "N": None}
    assert {c: getattr(families.family_of_cell(c), "name", None) for c in cells} == cells
    assert families.Grid(mark="N").cell_of(0.99) == "0.99N"
    assert families.Grid(cell="0").cell_of(0.99) == "0"
    with pytest.raises(InputError, match="not both or neither"):
        families.Grid(mark="N", cell="0")
    with pytest.raises(InputTypeError, match="table: expected a Grid"):
        families.Family("x", MomentumSettings, families.hf_runner, table="grid")


# -- a new baseline, Adam, by one registration (its runner and settings written here) ------------
@dataclass(frozen=True)
class AdamSettings(Settings):
    """Adam in a run: the keys a table protocol gives a grid run (lr, batch_size) and more."""

    weight_decay: float = 0.0
    batch_size: int = 1
    lr: float = 1e-3
    beta2: float = 0.999


class AdamRunner:
    """torch.optim.Adam on minibatches, rejecting non-finite updates (the Runner protocol)."""

    def __init__(self, name, problem, data, settings, seed, total_steps):
        import contextlib

        import torch

        from hessfree.runs.batching import BatchDrawer
        from hessfree.vectors import ParamLayout

        self.optimizer, self.problem, self.settings = name, problem, settings
        self.params = problem.resolve_params()
        self.layout = ParamLayout.from_params(self.params)
        self.opt = torch.optim.Adam(list(self.params.values()), lr=settings.lr,
                                    betas=(0.9, settings.beta2))
        self.drawer = BatchDrawer(data, seed, 5000)
        self.n_train, self.t, self._null = data.n_train, 0, contextlib.nullcontext
        self.objective, self.stop_reason, self.phases = problem, None, None

    def step(self, on_quadratic=None):
        import math
        import time

        t0, n = time.perf_counter(), self.settings.batch_size
        value, grad = self.problem.value_and_grad(self.params, self.drawer.minibatch(self.t, n))
        ok = math.isfinite(value) and bool(grad.isfinite().all())
        if ok:
            for p, g in zip(self.params.values(), self.layout.split(grad).values()):
                p.grad = g
            self.opt.step()
        self.t += 1
        return {"step": self.t - 1, "accepted": ok, "reason": "accepted" if ok else "non-finite",
                "loss": value, "grad_equiv": n / self.n_train,
                "seconds": time.perf_counter() - t0, "lr": float(self.settings.lr)}

    def evaluation_context(self):
        return self._null()

    def postfix(self, row):
        return {"loss": f"{row['loss']:.4g}"}

    def state_dict(self):
        return {"opt": self.opt.state_dict(), "t": self.t, "batches": self.drawer.state_dict()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state["opt"])
        self.t = int(state["t"])
        self.drawer.load_state_dict(state["batches"])


@pytest.fixture
def adam():
    fam = families.register(families.Family("adam", AdamSettings, AdamRunner, "Adam",
                                            table=families.Grid(cell="Adam")))
    yield fam
    families._REGISTRY.pop(fam.name)


def test_adam_by_one_registration_trains_resumes_and_joins_a_table(capsys, tmp_path, adam):
    args = ["toy-quartic", "--optimizer", "adam", "--set", "lr=0.05", "--eval-every", 2,
            "--checkpoint-every", 2, "--quiet"]
    code, out, err = run(capsys, "train", *args, "--steps", 6, "--out", tmp_path / "a")
    assert code == 0, err
    full = read_results(out.strip())
    assert full.steps["loss"][-1] < full.steps["loss"][0] and full.attrs["config"]["lr"] == 0.05
    code, out, err = run(capsys, "train", *args, "--steps", 3, "--out", tmp_path / "b")
    part = Path(out.strip())
    code, _, err = run(capsys, "train", "--resume", part.parent, "--steps", 6, "--quiet")
    assert code == 0, err
    np.testing.assert_array_equal(read_results(part).steps["loss"], full.steps["loss"])
    # a table protocol runs it on its learning-rate grid, in its own column
    out = tmp_path / "t1"
    code, _, err = run(capsys, "reproduce", "table1", "--fraction", "1e-5", "--experiments",
                       "curves-ae", "--optimizers", "adam,sgd", "--lrs", "0.01,0.005", "--out",
                       out, "--set", "n_train=200", "--set", "n_test=20", "--set", "beta2=0.99")
    assert code == 0, err
    md = (out / "summary.md").read_text()
    assert "| experiment | 0 | Adam |" in md
    runs = sorted(p.parent.name for p in (out / "curves-ae").glob("*/results.h5"))
    assert runs == ["adam-Adam-lr0.005", "adam-Adam-lr0.01", "sgd-0-lr0.005", "sgd-0-lr0.01"]
    assert "failed" not in md
    adam_run = read_results(out / "curves-ae" / "adam-Adam-lr0.01" / "results.h5")
    assert adam_run.attrs["status"] == "finished" and len(adam_run.steps["step"]) == 8
    assert adam_run.attrs["config"]["beta2"] == 0.99
    assert adam_run.attrs["config"]["batch_size"] == 200  # the protocol's minibatch


def test_the_registration_example_of_the_module_docstring_runs():
    import textwrap

    doc = families.__doc__
    code = textwrap.dedent(doc.split("::\n", 1)[1].split("\n\nafter which", 1)[0])
    try:
        exec(compile(code, "families docstring", "exec"), {})
        fam = families.get("nag-constant")
        assert fam.settings is MomentumSettings and fam.label == "NAG, constant μ"
    finally:
        families._REGISTRY.pop("nag-constant", None)
