"""The PyTorch Lightning recipe (``examples/hf_with_lightning.py``) with the real package: manual
optimization on CPU, a checkpoint per epoch, and a run resumed from a mid-run checkpoint that
ends with the uninterrupted run's parameters bit for bit (float64)."""

from __future__ import annotations

import pytest
import torch
from examples_import import example
from extras import require


@pytest.fixture(scope="module")
def recipe():
    require("lightning")
    return example("hf_with_lightning")


def test_lightning_checkpoint_resumes_exactly(recipe, tmp_path):
    full, trainer = recipe.fit(3, tmp_path / "full")
    assert trainer.global_step == 12  # 256 cases in batches of 64: 4 HF steps an epoch
    hf = trainer.optimizers[0]
    assert [s.step for s in hf.hf.history] == list(range(12))
    losses = [s.loss_before for s in hf.hf.history]
    assert losses[-1] < 0.5 * losses[0] and sum(s.accepted for s in hf.hf.history) >= 10
    assert all(s.product_cases == 16 * s.products for s in hf.hf.history)  # a quarter of 64
    ckpts = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert ckpts == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    saved = torch.load(tmp_path / "full" / "checkpoints" / ckpts[0], weights_only=True)
    assert saved["optimizer_states"][0]["hessfree"]["optimizer"]["step"] == 4
    resumed, trainer = recipe.fit(3, tmp_path / "resumed",
                                  resume=tmp_path / "full" / "checkpoints" / ckpts[0])
    again = trainer.optimizers[0]
    assert again.hf.t == 12 and len(again.hf.history) == 8  # 8 steps after the checkpoint
    assert again.hf.lam == hf.hf.lam
    assert all(torch.equal(a, b) for a, b in zip(full.net.parameters(),
                                                 resumed.net.parameters()))
