"""Hessian-free with Hugging Face Accelerate: prepare, save_state / load_state, an exact resume.

The recipe (``build`` and ``train`` below):

* Build the :class:`hessfree.Problem` from the raw model and its matching loss, and a
  :class:`~hessfree.integrations.optim.HessianFreeOptimizer` over the model's parameters, then
  ``accelerator.prepare(model, optimizer, loader)`` as with any optimizer.
* Accelerate's optimizer wrapper passes only a closure to ``step``, so the loop uses the closure
  contract: ``optimizer.step(lambda: batch)`` hands HF the step's batch, and HF computes the loss,
  gradient, curvature products and line search itself. The curvature batch is the first quarter
  of each batch (``curvature=0.25``; why, in ``examples/hf_with_lightning.py``).
* ``accelerator.save_state(dir)`` writes the model, ``optimizer.state_dict()`` (HF's λ, CG hot
  start and step counter; plain tensors and numbers, loadable with ``weights_only=True``) and the
  random states; ``accelerator.load_state(dir)`` restores them. The number of steps done is HF's
  own counter, so a resumed run knows where it is in the data: it sets the loader's epoch and
  skips the batches already used (``accelerator.skip_first_batches``). The loader shuffles with
  Accelerate's seedable sampler (``use_seedable_sampler=True``: the order depends only on the
  seed and the epoch), so the resumed run sees the uninterrupted run's batches and its parameters
  equal that run's bit for bit (checked below, float64).

**Several processes** (``accelerate launch --cpu --num_processes 2
examples/hf_with_accelerate.py``, or ``torchrun``): Accelerate starts the process group and
wraps the model in ``DistributedDataParallel``; HF calls the model functionally, so DDP's
gradient all-reduce is never used and DDP only broadcasts rank 0's initial parameters. What makes
the ranks agree is hessfree's own process-group support, which composes with it:
``Problem(..., group="world")`` sums every loss, gradient and curvature product over the ranks
(one all-reduce of one flat buffer each), each rank holding the shard of every batch the
prepared loader gives it, so CG and every decision of the step are the same on every rank and the
run equals one process on the joined batch. With ``split_batches=True`` each global batch is
split between the ranks (the curvature sub-batch is then the first quarter of each rank's share);
Accelerate's ``even_batches`` pads a last batch that does not split evenly with repeated cases, so
use a data set whose size is a multiple of the batch or ``drop_last=True`` for exact joined-batch
semantics. Mixed precision (``mixed_precision="fp16"``/``"bf16"``) is refused in one line.

    python examples/hf_with_accelerate.py --steps 10 --save-at 6
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _loop_data import make_data
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn
from torch.utils.data import DataLoader

import hessfree
from hessfree.integrations.optim import HessianFreeOptimizer


def make_accelerator() -> Accelerator:
    """CPU, the global batch split between processes, a seedable (epoch-seeded) sampler."""
    return Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(
        split_batches=True, use_seedable_sampler=True))


def build(accelerator: Accelerator, curvature: float = 0.25, batch_size: int = 64
          ) -> tuple[nn.Module, object, HessianFreeOptimizer, DataLoader]:
    """The model, the prepared optimizer, the facade itself and the prepared loader."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    group = "world" if accelerator.num_processes > 1 else None
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy(), weight_decay=1e-5,
                               group=group)
    config = hessfree.HFConfig.martens2010(initial_lambda=1.0, cg_max_iters=20)
    hf = HessianFreeOptimizer(model.parameters(), problem, config,
                              curvature=None if curvature >= 1 else curvature)
    data = DataLoader(make_data(), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(0))
    model, opt, data = accelerator.prepare(model, hf, data)
    return model, opt, hf, data


def train(steps: int, curvature: float = 0.25, save_at: int | None = None,
          state_dir: Path | None = None, resume: Path | None = None
          ) -> tuple[nn.Module, HessianFreeOptimizer]:
    """Run HF steps until ``steps`` are done (from ``resume`` if given).

    The state is saved at ``save_at`` steps into ``state_dir``. One Accelerator per run (it
    keeps what it prepared).
    """
    accelerator = make_accelerator()
    model, opt, hf, data = build(accelerator, curvature)
    if resume is not None:
        accelerator.load_state(resume)
    epoch, skip = divmod(hf.hf.t, len(data))  # HF's step counter says where the run is
    while hf.hf.t < steps:
        data.set_epoch(epoch)
        batches = accelerator.skip_first_batches(data, skip) if skip else data
        for batch in batches:
            opt.step(lambda: batch)
            if hf.hf.t == save_at:
                accelerator.save_state(state_dir)
            if hf.hf.t == steps:
                break
        epoch, skip = epoch + 1, 0
    return accelerator.unwrap_model(model), hf


def main() -> None:
    """Train uninterrupted, then stop at ``--save-at``, resume, and compare."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--save-at", type=int, default=6)
    ap.add_argument("--curvature", type=float, default=0.25,
                    help="fraction of each batch for the curvature (1: the whole batch)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the saved states")
    ap.add_argument("--params-out", type=Path, default=None,
                    help="save each rank's final parameters here (rank<i>.pt)")
    args = ap.parse_args()
    accelerator = make_accelerator()
    out = args.out or Path(tempfile.mkdtemp(prefix="hf-accelerate-"))
    full, hf = train(args.steps, args.curvature)
    s = hf.last_stats
    accelerator.print(f"uninterrupted: {args.steps} HF steps on {accelerator.num_processes} "
                      f"process(es), train loss {s.loss_after:.4f}, λ {s.lambda_after:.3g}")
    train(args.save_at, args.curvature, args.save_at, out / "state")
    resumed, _ = train(args.steps, args.curvature, resume=out / "state")
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(full.parameters(),
                                                              resumed.parameters()))
    accelerator.print(f"resumed at step {args.save_at}: parameters equal the uninterrupted "
                      f"run's: {diff == 0.0} (max |difference| {diff:.3g})")
    if args.params_out is not None:
        args.params_out.mkdir(parents=True, exist_ok=True)
        torch.save({n: p.detach().clone() for n, p in full.named_parameters()},
                   args.params_out / f"rank{accelerator.process_index}.pt")
    accelerator.end_training()  # destroys the process group: no gloo thread outlives the script


if __name__ == "__main__":
    main()
