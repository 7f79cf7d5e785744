"""Influence of training points on a test loss, by damped Gauss-Newton solves.

The influence function of a training case ``z`` on the loss of a test case ([KL17 §2]) is

    score(z, test) = ∇l(test)ᵀ (G + λI)⁻¹ ∇l(z)

(``G`` the curvature of the mean training loss, λ a damping): positive scores mark training
cases whose removal would raise the test loss (helpful ones), negative scores harmful ones.
This script trains a small classifier, then computes ``s = (G + λI)⁻¹ ∇l(test)`` for a few test
cases at once with ``hessfree``'s exact GGN and CG (one solve with one right-hand side per
test case, certified residuals), and the scores of every training case from its per-case
gradient. It checks the solve against a dense ``torch.linalg.solve`` of the damped GGN, compares
kronfluence's EK-FAC scores ([Gro23 §2]) on the same model and damping with that exact
reference (rank correlation over the most influential training cases), and draws the most
helpful and most harmful training images of the first test case.

Data: real MNIST when it is found (``--data DIR`` or ``$HESSFREE_DATA``), else a generated
10-class set of noisy class prototypes; images are average-pooled to 14 × 14.

    python examples/influence.py --out influence.png    # about 9 s on 2 idle cores (real MNIST)
    python examples/influence.py --scale 0.1 --out influence.png    # a small run (CI)
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings

import torch
from torch import nn

import hessfree
from hessfree.curvature.jacobians import seed_grads

F64 = torch.float64


def load_data(root: str | None, n_train: int, n_test: int, seed: int) -> tuple:
    """Real MNIST if found, else generated images; 14 × 14 inputs (x_train, y_train, ...)."""
    try:
        xtr, ytr, xte, yte = hessfree.data.mnist(root)
        xtr, ytr, xte, yte = xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]
        name = "MNIST"
    except (ValueError, OSError):
        g = torch.Generator().manual_seed(seed)
        protos = torch.nn.functional.avg_pool2d(torch.rand(10, 1, 28, 28, generator=g), 5, 1, 2)
        protos = (protos - protos.mean()) / protos.std()

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(0, 10, (n,), generator=g)
            return torch.sigmoid(protos[y].view(n, 784) + 3 * torch.randn(n, 784, generator=g)), y

        (xtr, ytr), (xte, yte), name = draw(n_train), draw(n_test), "generated"

    def pool(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x.view(-1, 1, 28, 28), 2).view(len(x), -1)

    return pool(xtr).double(), ytr, pool(xte).double(), yte, name


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, wd: float) -> float:
    """Full-batch Adam on the mean cross-entropy (plus L2); the final training loss."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + 0.5 * wd * sum(
            p.square().sum() for p in model.parameters())
        loss.backward()
        opt.step()
    return loss.item()


def per_case_grads(problem: hessfree.Problem, x: torch.Tensor, y: torch.Tensor
                   ) -> torch.Tensor:
    """``∇l_i`` of every case's own loss, ``(N, P)`` (per-case vector-Jacobian products)."""
    params = problem.resolve_params(None)
    with torch.no_grad():
        out = problem.forward(params, x)
    state = problem.loss.prepare(out, y, 1.0)
    return seed_grads(problem, params, x, state.per_case_grad())


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def top_agreement(exact: torch.Tensor, other: torch.Tensor, top: int) -> tuple[float, float]:
    """Agreement with the exact scores on the most influential training cases.

    The mean over test cases of Spearman's ρ on the ``top`` training cases by exact |score|,
    and of the overlap of the two top-``top`` sets.
    """
    rhos, overlaps = [], []
    for q in range(exact.shape[1]):
        idx = exact[:, q].abs().argsort(descending=True)[:top]
        rhos.append(spearman(exact[idx, q], other[idx, q]))
        mine = set(other[:, q].abs().argsort(descending=True)[:top].tolist())
        overlaps.append(len(mine & set(idx.tolist())) / top)
    return sum(rhos) / len(rhos), sum(overlaps) / len(overlaps)


def kronfluence_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor,
                       yq: torch.Tensor, lam: float) -> torch.Tensor | None:
    """The EK-FAC scores of kronfluence ``(N, queries)`` at damping λ, or None if not installed."""
    try:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
    except ImportError:
        return None
    import copy

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):  # noqa: D102
            logits = model(batch[0])
            if sample:  # labels from the model: the true Fisher, as hessfree's GGN
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits, -1), 1).flatten()
                return nn.functional.cross_entropy(logits, labels, reduction="sum")
            return nn.functional.cross_entropy(logits, batch[1], reduction="sum")

        def compute_measurement(self, batch, model):  # noqa: D102
            return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="sum")

    task = Classification()
    kmodel = prepare_model(copy.deepcopy(model), task)
    with warnings.catch_warnings():  # kronfluence's own deprecation notices (torch.cuda.amp)
        warnings.simplefilter("ignore", FutureWarning)
        return _ekfac(kmodel, task, x, y, xq, yq, lam, Analyzer, FactorArguments,
                      ScoreArguments)


def _ekfac(kmodel: nn.Module, task: object, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor,
           yq: torch.Tensor, lam: float, Analyzer: type, FactorArguments: type,
           ScoreArguments: type) -> torch.Tensor:
    """Fit EK-FAC on the training set and score every (training case, query) pair."""
    train_set = torch.utils.data.TensorDataset(x, y)
    query_set = torch.utils.data.TensorDataset(xq, yq)
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer("influence", kmodel, task, cpu=True, disable_tqdm=True,
                            output_dir=tmp)
        analyzer.fit_all_factors("ekfac", train_set, per_device_batch_size=len(x),
                                 factor_args=FactorArguments(
                                     strategy="ekfac", activation_covariance_dtype=F64,
                                     gradient_covariance_dtype=F64, lambda_dtype=F64,
                                     per_sample_gradient_dtype=F64))
        analyzer.compute_pairwise_scores(
            "scores", "ekfac", query_set, train_set, per_device_query_batch_size=len(xq),
            per_device_train_batch_size=len(x),
            score_args=ScoreArguments(damping_factor=lam, per_sample_gradient_dtype=F64,
                                      precondition_dtype=F64, score_dtype=F64))
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    return scores.T.double()


def figure(out: str, xq: torch.Tensor, yq: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
           scores: torch.Tensor, k: int = 6) -> None:
    """The first test image, its ``k`` most helpful and ``k`` most harmful training images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hessfree._files import save_figure

    order = scores[:, 0].argsort(descending=True)
    rows = [("most helpful", order[:k]), ("most harmful", order.flip(0)[:k])]
    fig, axes = plt.subplots(2, k + 1, figsize=(1.6 * (k + 1), 4.6))
    for r, (title, idx) in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(xq[0].view(14, 14), cmap="gray")
        ax.set_title(f"test case\nlabel {int(yq[0])}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(title, fontsize=9)
        for c, i in enumerate(idx.tolist()):
            ax = axes[r, c + 1]
            ax.imshow(x[i].view(14, 14), cmap="gray")
            ax.set_title(f"label {int(y[i])}\nscore {float(scores[i, 0]):+.2g}", fontsize=8)
            ax.axis("off")
    fig.suptitle("training images by influence on the first test case's loss (exact GGN)")
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the example (``argv``: the command-line arguments)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="data root holding MNIST (else $HESSFREE_DATA)")
    p.add_argument("--train", type=int, default=2000, help="training cases")
    p.add_argument("--queries", type=int, default=8, help="test cases (right-hand sides)")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--steps", type=int, default=300, help="Adam steps of training")
    p.add_argument("--lam", type=float, default=1e-3, help="damping λ")
    p.add_argument("--top", type=int, default=100, help="training cases compared per query")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies --train, --steps and --top (0.1 for a quick run)")
    p.add_argument("--out", default="influence.png")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    n_train = max(50, int(a.train * a.scale))
    steps, top = max(20, int(a.steps * a.scale)), max(10, int(a.top * a.scale))
    torch.manual_seed(a.seed)
    x, y, xq, yq, name = load_data(a.data, n_train, a.queries, a.seed)
    model = nn.Sequential(nn.Linear(196, a.hidden), nn.Tanh(), nn.Linear(a.hidden, 10)).double()
    loss = train(model, x, y, steps, wd=1e-4)
    print(f"data: {name}, {n_train} training and {a.queries} test cases; MLP 196-{a.hidden}-10, "
          f"training loss {loss:.4f} after {steps} Adam steps")

    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    t0 = time.perf_counter()
    G = hessfree.GGN(problem, (x, y))
    g_test = per_case_grads(problem, xq, yq)  # (queries, P)
    res = G.solve(g_test.T.contiguous(), a.lam, rtol=1e-10)
    g_train = per_case_grads(problem, x, y)  # (N, P)
    scores = g_train @ res.x  # (N, queries)
    seconds = time.perf_counter() - t0
    print(f"GGN solve: {G.dim} parameters, {a.queries} right-hand sides, λ = {a.lam:g}: "
          f"{res.products} products ({int(res.iters.max())} CG iterations), "
          f"largest certified relative residual {float(res.relative_residuals.max()):.1e}, "
          f"{seconds:.1f} s with the per-case gradients")

    D = G.dense()
    exact = torch.linalg.solve(D + a.lam * torch.eye(G.dim, dtype=F64), g_test.T)
    diff = float(((res.x - exact).norm(dim=0) / exact.norm(dim=0)).max())
    print(f"solve vs dense torch.linalg.solve: max relative difference {diff:.1e}")
    ref = g_train @ exact
    rho, overlap = top_agreement(ref, scores, top)
    print(f"hessfree CG vs exact: Spearman {rho:.4f} on the top {top}, overlap {overlap:.2f}")

    ek = kronfluence_scores(model, x, y, xq, yq, a.lam)
    if ek is None:
        print("kronfluence: not installed (pip install kronfluence --no-deps, see the README)")
    else:
        rho_k, overlap_k = top_agreement(ref, ek, top)
        print(f"kronfluence EK-FAC vs exact: Spearman {rho_k:.4f} on the top {top}, "
              f"overlap {overlap_k:.2f}")
    figure(a.out, xq, yq, x, y, scores)
    helpful = int(scores[:, 0].argmax())
    print(f"most helpful training case for test 0 (label {int(yq[0])}): #{helpful} "
          f"(label {int(y[helpful])}); figure: {a.out}")
    return 0 if math.isfinite(diff) else 1


if __name__ == "__main__":
    raise SystemExit(main())
