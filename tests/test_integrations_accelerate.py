"""The Accelerate recipe (``examples/hf_with_accelerate.py``) with the real package: prepare,
save_state / load_state mid-epoch and an exact resume (float64, bit for bit); two gloo processes
under Accelerate against one process on the joined batch; mixed precision refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from examples_import import EXAMPLES, example
from extras import require
from test_distributed import free_port

from hessfree.errors import InputError


@pytest.fixture(scope="module")
def recipe():
    require("accelerate")
    return example("hf_with_accelerate")


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_save_state_load_state_resumes_exactly_mid_epoch(recipe, tmp_path):
    full, hf = recipe.train(10)
    losses = [s.loss_before for s in hf.hf.history]
    assert hf.hf.t == 10 and losses[-1] < 0.5 * losses[0]
    recipe.train(6, save_at=6, state_dir=tmp_path / "state")  # 4 batches an epoch: mid-epoch
    saved = torch.load(tmp_path / "state" / "optimizer.bin", weights_only=True)
    assert saved["hessfree"]["optimizer"]["step"] == 6
    resumed, again = recipe.train(10, resume=tmp_path / "state")
    assert len(again.hf.history) == 4 and again.hf.lam == hf.hf.lam
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))


def test_two_gloo_processes_equal_one_process_on_the_joined_batch(recipe, tmp_path):
    """Each rank holds half of every batch (split_batches) and its sub-batch is the first
    quarter of its half: the one-process reference steps on the joined batch with the joined
    sub-batches as its curvature batches."""
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, str(EXAMPLES / "hf_with_accelerate.py"), "--steps", "6", "--save-at",
         "4", "--out", str(tmp_path / "out"), "--params-out", str(tmp_path / "params")],
        env=dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                 LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                 OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    done = [(p.communicate(timeout=300), p.returncode) for p in procs]
    assert all(rc == 0 for _, rc in done), [err[-3000:] for (_, err), _ in done]
    out = done[0][0][0]
    assert "on 2 process(es)" in out and "parameters equal the uninterrupted run's: True" in out
    ranks = [torch.load(tmp_path / "params" / f"rank{r}.pt") for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # every rank alike

    model, _, hf, data = recipe.build(recipe.make_accelerator(), curvature=1.0)
    epoch = 0
    while hf.hf.t < 6:  # the global batches the two ranks saw (seed and epoch), as train does
        data.set_epoch(epoch)
        for x, y in data:
            halves = [slice(0, 8), slice(32, 40)]  # the first quarter of each rank's half
            curv = (torch.cat([x[h] for h in halves]), torch.cat([y[h] for h in halves]))
            hf.step(batch=(x, y), curvature_batch=curv)
            if hf.hf.t == 6:
                break
        epoch += 1
    assert hf.hf.t == 6
    for name, p in params(model).items():
        rel = float((p - ranks[0][name]).norm() / p.norm())
        assert rel < 1e-12, (name, rel)


def test_mixed_precision_is_refused_in_one_line(recipe):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        _, opt, hf, data = recipe.build(accelerator)
        batch = next(iter(data))
        with pytest.raises(InputError) as err:
            opt.step(lambda: batch)
        assert "precision: the model runs under autocast" in str(err.value)
        assert "\n" not in str(err.value) and hf.hf.t == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
