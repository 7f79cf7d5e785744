"""Names changed so that each concept has one: the old ones still read, for one release.

"check" meant both validation and the held-out batch of an HF step; the held-out sense is now
``heldout`` (``heldout_batch``, ``Phase.heldout``, ``reject_on_heldout``, the ``heldout_*``
columns). The Armijo search moved from ``hf/linesearch.py`` into ``hf/stepsize.py`` (and the
``seconds_linesearch`` column is ``seconds_stepsize``: it times whichever step-size policy ran). Old
arguments warn (``DeprecationWarning``); old states, settings and results files load.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import hessfree
from hessfree.errors import InputError
from hessfree.hf import BatchSpec, HFConfig, Phase, PhaseSchedule, stepsize
from hessfree.integrations.optim import HessianFreeOptimizer
from hessfree.runs.results import RENAMED_COLUMNS, ResultsWriter, read_results
from hessfree.runs.settings import HFSettings, MomentumHFSettings, apply_overrides, from_flat

F64 = torch.float64


def _problem(seed: int = 0) -> tuple[nn.Module, hessfree.Problem]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    return model, hessfree.Problem(model, hessfree.losses.MSE())


def _batches(seed: int = 1) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(48, 5, generator=g, dtype=F64), torch.randn(48, 3, generator=g, dtype=F64)
    return (x[:32], y[:32]), (x[32:], y[32:])


def test_the_armijo_search_moved_to_stepsize_and_the_old_module_warns():
    from hessfree.hf import linesearch

    with pytest.warns(DeprecationWarning, match="hessfree.hf.stepsize.armijo"):
        old = linesearch.armijo
    assert old is stepsize.armijo is hessfree.hf.armijo
    with pytest.warns(DeprecationWarning):
        assert linesearch.LineSearchResult is stepsize.LineSearchResult
    with pytest.raises(AttributeError):
        linesearch.line_search  # noqa: B018 - never lived there
    res = stepsize.armijo(lambda a: (a - 0.3) ** 2, 0.09, -0.6)
    assert res.accepted and res.alpha == pytest.approx(0.8 ** 3) and res.evaluations == 4


def test_step_check_batch_is_heldout_batch_with_a_warning():
    cfg = HFConfig.momentum_like(initial_lambda=1.0, cg_max_iters=8)
    fit, held = _batches()
    runs = []
    for keyword in ("heldout_batch", "check_batch"):
        model, problem = _problem()
        opt = hessfree.HessianFree(problem, config=cfg)
        if keyword == "check_batch":
            with pytest.warns(DeprecationWarning, match="check_batch= is now called heldout"):
                stats = opt.step(fit, check_batch=held)
        else:
            stats = opt.step(fit, heldout_batch=held)
        assert np.isfinite(stats.heldout_loss_before) and np.isfinite(stats.heldout_loss_after)
        record = {k: None if v != v else v for k, v in stats.as_dict().items()
                  if not k.startswith("seconds")}  # NaN as None, so equal records compare equal
        runs.append((record, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    with pytest.raises(InputError, match="check_batch: the old name of heldout_batch"):
        opt.step(fit, heldout_batch=held, check_batch=held)


def test_the_torch_optim_facade_takes_the_old_keyword_with_a_warning():
    fit, held = _batches()
    losses = []
    for keyword in ("heldout_batch", "check_batch"):
        model, problem = _problem()
        opt = HessianFreeOptimizer(model.parameters(), problem,
                                   HFConfig.martens2010(initial_lambda=1.0, cg_max_iters=6))
        if keyword == "check_batch":
            with pytest.warns(DeprecationWarning, match="HessianFreeOptimizer.step"):
                losses.append(opt.step(batch=fit, check_batch=held))
        else:
            losses.append(opt.step(batch=fit, heldout_batch=held))
        losses.append(opt.last_stats.heldout_loss_after)
    assert losses[:2] == losses[2:] and np.isfinite(losses[1])


def test_configs_phases_and_settings_saved_with_the_old_names_load():
    old = {**HFConfig.momentum_like().to_dict(), "reject_on_check": False}
    del old["reject_on_heldout"]
    assert HFConfig.from_dict(old) == HFConfig.momentum_like(reject_on_heldout=False)
    with pytest.warns(DeprecationWarning, match="reject_on_check is now called reject_on_held"):
        assert not HFConfig().replace(reject_on_check=False).reject_on_heldout
    assert "reject_on_check" not in HFConfig().to_dict()
    with pytest.warns(DeprecationWarning, match="HFConfig: reject_on_check= is now called"):
        assert HFConfig(reject_on_check=False) == HFConfig(reject_on_heldout=False)
    with pytest.raises(InputError, match="reject_on_check: the old name of reject_on_heldout"):
        HFConfig(reject_on_check=False, reject_on_heldout=True)

    phase = Phase("m", gradient=BatchSpec("minibatch", size=4), curvature=BatchSpec("same"),
                  heldout=BatchSpec("minibatch", size=4))
    saved = phase.to_dict()
    saved["check"] = saved.pop("heldout")
    assert Phase.from_dict(saved) == phase
    assert PhaseSchedule.from_dict({"phases": [saved]}).phases == (phase,)
    assert "check" not in phase.to_dict()
    with pytest.warns(DeprecationWarning, match="Phase: check= is now called heldout="):
        assert Phase("m", gradient=BatchSpec("minibatch", size=4), curvature=BatchSpec("same"),
                     check=BatchSpec("minibatch", size=4)) == phase

    for cls in (HFSettings, MomentumHFSettings):
        rec = from_flat(cls, {"reject_on_check": False})
        assert rec["reject_on_heldout"] is False and "reject_on_check" not in rec.keys()
        (got,) = apply_overrides((cls(),), {"reject_on_check": "false"}, "hf")
        assert got["reject_on_heldout"] is False


def _old_hf_file(path, rows: int = 3) -> None:
    """A results file as hessfree wrote it before the rename (``check_*`` step columns)."""
    with ResultsWriter(path, {"experiment": "toy", "optimizer": "hf"}) as w:
        for i in range(rows):
            w.append_step({"step": i, "loss": 1.0 / (i + 1), "check_loss_before": 2.0 + i,
                           "check_loss_after": 1.5 + i, "check_model_change": -0.5,
                           "seconds_linesearch": 0.01})


def test_results_files_with_the_old_columns_read_and_resume(tmp_path):
    path = tmp_path / "results.h5"
    _old_hf_file(path)
    with h5py.File(path, "r") as f:
        assert "check_loss_before" in json.loads(f["steps"].attrs["fields"])
    res = read_results(path)
    assert set(RENAMED_COLUMNS.values()) <= set(res.steps)
    assert not set(RENAMED_COLUMNS) & set(res.steps)
    assert res.steps["heldout_loss_before"].tolist() == [2.0, 3.0, 4.0]

    # a resumed run writes today's names: the file's columns are renamed in place first
    with ResultsWriter(path, mode="append") as w:
        w.append_step({"step": 3, "loss": 0.2, "heldout_loss_before": 5.0,
                       "heldout_loss_after": 4.5, "heldout_model_change": -0.25,
                       "seconds_stepsize": 0.02})
    with h5py.File(path, "r") as f:
        fields = json.loads(f["steps"].attrs["fields"])
        assert fields == ["step", "loss", "heldout_loss_before", "heldout_loss_after",
                          "heldout_model_change", "seconds_stepsize"]
        assert not set(RENAMED_COLUMNS) & set(f["steps"])
    res = read_results(path)
    assert res.steps["heldout_loss_before"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert res.steps["heldout_model_change"].tolist() == [-0.5] * 3 + [-0.25]
    assert res.steps["seconds_stepsize"].tolist() == [0.01] * 3 + [0.02]


def _fields(path) -> list[str]:
    with h5py.File(path, "r") as f:
        return json.loads(f["steps"].attrs["fields"])


def _to_old_names(value):
    """A checkpoint's content as hessfree wrote it before the rename (old keys)."""
    old = {"reject_on_heldout": "reject_on_check", "heldout": "check"}
    if isinstance(value, dict):
        return {old.get(k, k): _to_old_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_old_names(v) for v in value]
    return value


def _make_old(results, checkpoint) -> None:
    """Rewrite a run folder as an earlier hessfree left it: step columns, settings, checkpoint."""
    with h5py.File(results, "r+") as f:
        steps = f["steps"]
        back = {new: old for old, new in RENAMED_COLUMNS.items()}
        names = json.loads(steps.attrs["fields"])
        for new in [k for k in names if k in back]:
            steps.move(new, back[new])
        steps.attrs["fields"] = json.dumps([back.get(k, k) for k in names])
        for key in ("config", "phases"):
            text = f.attrs[key]
            assert '"reject_on_heldout"' in text
            f.attrs[key] = text.replace('"reject_on_heldout"', '"reject_on_check"') \
                .replace('"heldout":', '"check":')
    state = torch.load(checkpoint, weights_only=False)
    assert "reject_on_heldout" in state["runner"]["opt"]["config"]
    torch.save(_to_old_names(state), checkpoint)


def test_a_run_written_before_the_rename_resumes_to_the_same_trajectory(tmp_path, capsys):
    from hessfree.runs.cli import main

    def train(out, *argv):
        code = main(["train", "toy-quartic", "--optimizer", "hf", "--checkpoint-every", "2",
                     "--quiet", *argv, *([] if "--resume" in argv else ["--out", str(out)])])
        out = capsys.readouterr()
        assert code == 0, out.err
        return Path(out.out.strip().splitlines()[-1])

    full = train(tmp_path / "a", "--steps", "4")
    part = train(tmp_path / "b", "--steps", "3")  # checkpoint at 2
    _make_old(part, part.with_name("checkpoint.pt"))
    assert "check_loss_before" in _fields(part)
    train(None, "--steps", "4", "--resume", str(part.parent))
    a, b = read_results(full), read_results(part)
    assert len(b.steps["step"]) == 4
    assert "heldout_loss_before" in _fields(part) and "check_loss_before" not in _fields(part)
    for k in ("loss", "lambda_after", "cg_iters", "rho", "heldout_loss_before"):
        np.testing.assert_array_equal(a.steps[k], b.steps[k], err_msg=k)
    for k, v in a.params("final").items():
        np.testing.assert_array_equal(v, b.params("final")[k])
