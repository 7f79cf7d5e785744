"""Hessian-free in PyTorch Lightning: manual optimization, a checkpoint, an exact resume.

The recipe (``HFClassifier`` below):

* ``automatic_optimization = False``: Lightning's automatic loop calls ``backward`` and then
  ``optimizer.step()``, while HF computes its own gradient, curvature products and line search
  through a :class:`hessfree.Problem`; in manual optimization the training step hands the batch
  to ``self.optimizers().step(batch=batch)`` and HF does the rest.
* ``configure_optimizers`` builds the Problem (the network and its matching loss) and a
  :class:`~hessfree.integrations.optim.HessianFreeOptimizer` over the network's parameters. It
  builds the Problem there, not in ``__init__``, because under a multi-device strategy the
  process group exists only by then: ``group="world"`` makes HF's sums span the ranks, each
  holding the shard Lightning's sampler gives it (not tested here: this script runs on one CPU).
* **The curvature batch is a sub-batch of each training batch** (``curvature=0.25``: its first
  quarter). Each step sees one minibatch, its gradient batch, as in the minibatch phase of the
  momentum-like HF ([S13 A.6]); CG runs tens of curvature products per step, each costing about
  a gradient over the curvature batch, so a quarter of the minibatch keeps a step at a few
  gradients of it (HFDemo takes the curvature on a fraction of the gradient's cases too,
  [HFDemo]). Drawn from a shuffled loader, the sub-batch is a fresh random sample at every step;
  it needs no second loader and, under data parallelism, is taken from each rank's own shard.
  A fixed loader (``curvature=loader``) would give the same operator at every step, at the cost
  of a pass over it per product, and one more loader to shard.
* **The checkpoint** is Lightning's: ``ModelCheckpoint`` saves the network and
  ``optimizer.state_dict()`` (HF's λ, CG hot start, counters; versioned), and
  ``trainer.fit(..., ckpt_path=...)`` restores both. The training loader shuffles with an
  epoch-seeded sampler (torch's ``DistributedSampler`` with one replica: the order depends only on
  the seed and the epoch, which Lightning sets), so a resumed run sees the batches the
  uninterrupted run saw and its parameters equal that run's bit for bit (checked below, float64).

    python examples/hf_with_lightning.py --epochs 4 --resume-from 2 --out runs/lightning
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lightning as L
import torch
from _loop_data import make_data
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import hessfree
from hessfree.integrations.optim import HessianFreeOptimizer


class HFClassifier(L.LightningModule):
    """A small tanh MLP classifier trained by HF in manual optimization."""

    def __init__(self, inputs: int = 10, hidden: int = 32, classes: int = 3,
                 curvature: float = 0.25, initial_lambda: float = 1.0, cg_iters: int = 20
                 ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(),
                                 nn.Linear(hidden, classes)).double()

    def configure_optimizers(self) -> HessianFreeOptimizer:
        """HF over the network's parameters, on the network and its matching loss."""
        group = "world" if torch.distributed.is_initialized() else None
        problem = hessfree.Problem(self.net, hessfree.losses.CrossEntropy(), weight_decay=1e-5,
                                   group=group)
        config = hessfree.HFConfig.martens2010(initial_lambda=self.hparams.initial_lambda,
                                               cg_max_iters=self.hparams.cg_iters)
        return HessianFreeOptimizer(self.net.parameters(), problem, config,
                                    curvature=self.hparams.curvature)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        """One HF step on the batch (gradient) and its first quarter (curvature)."""
        opt = self.optimizers()
        loss = opt.step(batch=batch)
        stats = opt.optimizer.last_stats
        self.log_dict({"train_loss": loss, "lambda": stats.lambda_after,
                       "cg_iters": float(stats.cg_iters)}, on_step=False, on_epoch=True)
        if opt.optimizer.stop_reason:  # converged, or λ at its bound: nothing more to gain
            self.trainer.should_stop = True


def loader(data: TensorDataset, batch_size: int = 64) -> DataLoader:
    """Shuffled minibatches whose order depends only on the seed and the epoch."""
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


def fit(epochs: int, root: Path, resume: Path | None = None, **hparams: float
        ) -> tuple[HFClassifier, L.Trainer]:
    """Train for ``epochs`` epochs (from a checkpoint if given), saving one per epoch."""
    L.seed_everything(0, verbose=False)
    module = HFClassifier(**hparams)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, default_root_dir=root,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_top_k=-1,
                                                   every_n_epochs=1)])
    trainer.fit(module, loader(make_data()), ckpt_path=resume)
    return module, trainer


def main() -> None:
    """Train uninterrupted, then resume from a mid-run checkpoint and compare."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--resume-from", type=int, default=2, help="epochs before the checkpoint")
    ap.add_argument("--out", type=Path, default=None, help="folder for the checkpoints")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="hf-lightning-"))
    full, trainer = fit(args.epochs, out / "uninterrupted")
    m = trainer.callback_metrics
    print(f"uninterrupted: {args.epochs} epochs, {trainer.global_step} HF steps, train loss "
          f"{float(m['train_loss']):.4f}, λ {float(m['lambda']):.3g}")
    (ckpt,) = (out / "uninterrupted" / "checkpoints").glob(f"epoch={args.resume_from - 1}-*.ckpt")
    resumed, trainer = fit(args.epochs, out / "resumed", resume=ckpt)
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(full.net.parameters(),
                                                              resumed.net.parameters()))
    print(f"resumed from {ckpt.name}: {trainer.global_step} HF steps; parameters equal the "
          f"uninterrupted run's: {diff == 0.0} (max |difference| {diff:.3g})")


if __name__ == "__main__":
    main()
