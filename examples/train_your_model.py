"""Hessian-free on your own model and DataLoader, next to Adam at equal time and equal cost.

What it shows: a user-defined CNN for MNIST, trained by ``hessfree.HessianFree`` straight from
a shuffled ``torch.utils.data.DataLoader`` (each step: the gradient on the next minibatch of
1000 cases, the curvature on 200 of them), and by Adam on shuffled minibatches of 100, each for
the same wall-clock time. It prints both runs' final errors, the errors at equal time and at equal
gradient-equivalents (one gradient over every training case; a curvature product counts as a
gradient), and saves a plot of both curves.

HF's settings, adapted to this model (Martens' defaults are for deep autoencoders):

* ``initial_lambda=0.05``: λ0 = 45 suits the autoencoders' summed squared error; a 10-class
  cross-entropy averaged over cases has a far smaller curvature, and a large λ0 spends the
  first steps shrinking λ at chance error (λ0 = 1: still 0.64 training error after four steps
  here; λ0 = 0.05: 0.07 after six);
* ``preconditioner=False``: the diagonal preconditioner needs every case's own gradient, which
  for convolutions ``torch.func.vmap`` computes at the cost of about a gradient per step again;
  here it did not repay that time;
* minibatch HF with ``cg_max_iters=20``: Martens' full-batch gradient and 50-250 CG
  iterations made each step cost several gradients over the training set, so the run took a
  handful of steps in its minute; a fresh 1000-case minibatch per step and short CG runs on
  200 of its cases (a small batch: longer runs fit its noise) give HF tens of steps in the
  same time.

Equal time, measured alike for both: each method's clock runs over everything its iterations
do (HF: loading the minibatch and whole steps; Adam: loading the minibatch, forward, backward,
update); evaluations for the curves (training error on the first 2000 cases, test error) are
outside both clocks. HF starts a step only while half a step's time is left, and that last
step's CG stops on time (``HessianFree.deadline``) instead of running past the budget.

Data: real MNIST when it is found (``--data DIR`` or ``$HESSFREE_DATA``), else a small
generated 10-class set of 28x28 images (noisy class prototypes), so it runs anywhere.
``--scale f`` multiplies the time and the data sizes (CI runs the command below at 0.15).

    python examples/train_your_model.py --seconds 60 --out cnn.png    # about 2.6 min, 2 idle cores
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hessfree
from hessfree.runs.threads import choose


class SmallCNN(nn.Module):
    """conv 5x5 (8) -> ReLU -> max-pool 2 -> conv 5x5 (16) -> ReLU -> max-pool 2 -> linear 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the 10 classes."""
        return self.head(self.features(x.view(-1, 1, 28, 28)).flatten(1))


def load_data(root: str | None, n_train: int, n_test: int, seed: int) -> tuple:
    """Real MNIST if found, else a generated set; (x_train, y_train, x_test, y_test, name)."""
    try:
        xtr, ytr, xte, yte = hessfree.data.mnist(root)
        return xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test], "MNIST"
    except (ValueError, OSError):
        g = torch.Generator().manual_seed(seed)
        protos = torch.nn.functional.avg_pool2d(torch.rand(10, 1, 28, 28, generator=g), 5, 1, 2)
        protos = (protos - protos.mean()) / protos.std()

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(0, 10, (n,), generator=g)
            x = protos[y].view(n, 784) + 3.0 * torch.randn(n, 784, generator=g)
            return torch.sigmoid(x), y

        (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
        return xtr, ytr, xte, yte, "generated"


def error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification error (fraction)."""
    with torch.no_grad():
        return float((model(x).argmax(1) != y).float().mean())


#: training cases the curves' training error is measured on (the first ones)
EVAL_TRAIN = 2000


def errors(model: nn.Module, x, y, xte, yte) -> tuple[float, float]:
    """Training error (the first ``EVAL_TRAIN`` cases) and test error."""
    return error(model, x[:EVAL_TRAIN], y[:EVAL_TRAIN]), error(model, xte, yte)


def train_hf(model, x, y, xte, yte, seconds, n_train, seed, batch=1000, curv=200):
    """HF steps for ``seconds`` of wall-clock (the last step ends on time); the curve.

    Each step: the gradient on the next ``batch`` cases of a shuffled DataLoader, the curvature
    on the first ``curv`` of them.
    """
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed + 1))
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    opt = hessfree.HessianFree(problem, config=hessfree.HFConfig(
        initial_lambda=0.05, preconditioner=False, cg_max_iters=20))
    curve, spent, ge = [(0.0, 0.0, *errors(model, x, y, xte, yte))], 0.0, 0.0
    batches, last = iter(()), 0.0
    while spent + 0.5 * last < seconds:  # a step starts only with half a step's time left
        t0 = time.perf_counter()
        opt.deadline = t0 + (seconds - spent)  # CG stops in time for the step to end by then
        xb_yb = next(batches, None)
        if xb_yb is None:  # a new pass over the training cases
            batches = iter(loader)
            xb_yb = next(batches)
        xb, yb = xb_yb
        stats = opt.step((xb, yb), (xb[:curv], yb[:curv]))
        last = time.perf_counter() - t0
        spent += last
        ge += stats.grad_equivalents / n_train
        curve.append((ge, spent, *errors(model, x, y, xte, yte)))
    return curve, opt.t


def train_adam(model, x, y, xte, yte, seconds, batch, lr, n_train, seed, points=40):
    """Adam on shuffled minibatches for ``seconds`` of wall-clock; the curve.

    ``points`` evaluations, outside the clock.
    """
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    curve, spent, ge, steps = [(0.0, 0.0, *errors(model, x, y, xte, yte))], 0.0, 0, 0
    while spent < seconds:
        batches = iter(loader)
        while spent < seconds:
            t0 = time.perf_counter()
            try:
                xb, yb = next(batches)  # loading the minibatch is on Adam's clock too
            except StopIteration:
                break
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
            spent += time.perf_counter() - t0
            ge += xb.shape[0] / n_train
            steps += 1
            if spent >= len(curve) * seconds / points or spent >= seconds:
                curve.append((ge, spent, *errors(model, x, y, xte, yte)))
    return curve, steps


def at(curve, key: int, value: float) -> float:
    """The training error of the last point of ``curve`` with ``curve[key] <= value``."""
    return [p for p in curve if p[key] <= value][-1][2]


def main(argv: list[str] | None = None) -> int:
    """Run the example (``argv``: the command-line arguments)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("HESSFREE_DATA"), help="MNIST folder")
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=60.0, help="wall-clock per method")
    p.add_argument("--adam-lr", type=float, default=1e-3)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies --seconds and the data sizes (a small run: 0.05)")
    p.add_argument("--threads", default="auto", help="threads (hessfree.runs.threads)")
    p.add_argument("--out", default="train_your_model.png")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(choose(a.threads).n)  # this script's process: chosen, not inherited
    seconds = a.seconds * a.scale
    x, y, xte, yte, name = load_data(a.data, max(100, int(a.train_size * a.scale)),
                                     max(50, int(a.test_size * a.scale)), a.seed)
    n = x.shape[0]
    init = SmallCNN().state_dict()
    hf_model, adam_model = SmallCNN(), SmallCNN()
    hf_model.load_state_dict(init)
    adam_model.load_state_dict(init)
    hf_curve, hf_steps = train_hf(hf_model, x, y, xte, yte, seconds, n, a.seed,
                                  batch=min(1000, n), curv=min(200, n))
    adam_curve, adam_steps = train_adam(adam_model, x, y, xte, yte, seconds, 100, a.adam_lr,
                                        n, a.seed)
    ge_hf, t_hf = hf_curve[-1][0], hf_curve[-1][1]
    print(f"data: {name}, {n} training and {xte.shape[0]} test images; SmallCNN, "
          f"{sum(p.numel() for p in hf_model.parameters())} parameters")
    print(f"HF   : {hf_steps} steps, {ge_hf:.1f} gradient-equivalents, {t_hf:.1f} s: "
          f"train error {hf_curve[-1][2]:.4f}, test error {hf_curve[-1][3]:.4f}")
    print(f"Adam : {adam_steps} steps, {adam_curve[-1][0]:.1f} gradient-equivalents, "
          f"{adam_curve[-1][1]:.1f} s: train error {adam_curve[-1][2]:.4f}, test error "
          f"{adam_curve[-1][3]:.4f}")
    ge = min(ge_hf, adam_curve[-1][0])
    print(f"equal gradient-equivalents ({ge:.1f}): HF train error {at(hf_curve, 0, ge):.4f}, "
          f"Adam {at(adam_curve, 0, ge):.4f}")
    t = min(t_hf, adam_curve[-1][1])
    print(f"equal time ({t:.1f} s of {seconds:g}): HF train error {at(hf_curve, 1, t):.4f}, "
          f"Adam {at(adam_curve, 1, t):.4f}")
    plot(hf_curve, adam_curve, a.out, name)
    print(f"plot: {a.out}")
    return 0


def plot(hf_curve, adam_curve, out: str, name: str) -> None:
    """Training error against gradient-equivalents and against seconds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for label, curve in (("HF", hf_curve), ("Adam", adam_curve)):
        for ax, k in zip(axes, (0, 1)):
            ax.plot([c[k] for c in curve], [max(c[2], 1e-4) for c in curve], label=label)
    for ax, xl in zip(axes, ("gradient-equivalents", "seconds")):
        ax.set_xlabel(xl)
        ax.set_ylabel("training error")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"SmallCNN on {name}: HF vs Adam")
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    raise SystemExit(main())
