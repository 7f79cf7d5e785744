r"""HF against AdamW on a character-level language model of Python's own documentation.

What it shows: Hessian-free optimization ([M10]; exact GGN-vector products through causal
self-attention, CG, damping, backtracking and a line search: ``hessfree.HessianFree``) and
AdamW, with a small learning-rate sweep, training the same GPT-style model from the same
initial weights on the same text, at **equal gradient-equivalents** (the primary axis: one
gradient-equivalent is the gradient of one sequence; a GGN product counts as one and a forward
pass as a third, ``hessfree.StepStats.grad_equivalents``) and at **equal time** (CPU seconds of
the training work, one thread: evaluation is not counted). It prints a table of validation
losses, draws validation loss against both axes, and writes the curves as a small JSON summary.

Data (no download): the text of Python's ``help()`` topics, ``pydoc_data.topics`` in the
standard library (the language reference's chapters: prose with code; about 465,000
characters and 103 distinct ones in Python 3.11 — other Python versions ship other text, so
the summary records the version). Characters are the tokens. The text is cut into blocks of
1,000 characters; every tenth block is validation text, the rest training text.

Model: ``hessfree.models.GPT`` (nanoGPT's layout: 3 pre-LN blocks, 4 heads, width 96,
context 64 characters, output layer tied to the embedding; 348k parameters for 103
symbols), float32, initialised as GPT-2. Loss: next-character cross-entropy
(``hessfree.TokenCrossEntropy(shift=True)``, the mean over the 63 predicted characters of
each sequence). Validation: the mean over 512 fixed windows of the validation text.

AdamW: nanoGPT's character-level recipe — betas (0.9, 0.99), weight decay 0.1, linear warm-up
over the first 2% of the steps (nanoGPT: 100 of 5,000) then cosine decay to a tenth of the peak
rate over the budget — on minibatches of 64
random training windows, peak rates 1e-3, 3e-3 and 1e-2 (the sweep; the best by final
validation loss is the comparison's AdamW).

HF: Martens' settings (``HFConfig.martens2010``: the (diag EF + λ)^0.75 preconditioner,
CG from 0.95 × the last solution with his progress stop, CG-backtracking and the Armijo line
search on the gradient batch, Levenberg-Marquardt damping), adapted in three ways, each for a
reason: λ₀ = 1 instead of 45 (45 suits autoencoder losses summed over 784 outputs; a mean
token cross-entropy has curvature of order one); a fresh random gradient batch of 512
windows each step instead of the whole training set (the whole set, 6,700 windows, would leave
a handful of steps in the budget), taken in chunks of 128 as HFDemo takes its gradient in
chunks (the same sums; a quarter of the activations alive at once), with the curvature on its
first quarter (HFDemo's ratio);
at most 50 CG iterations per step instead of 250 (as [S13 A.6]; 250 would spend the budget in
a few steps). No weight decay.

The accounting is the library's: a GGN product counts as one gradient of its cases and the
per-sequence-gradient preconditioner as one gradient; on a transformer they cost more
(``benchmarks/bench_transformer.py`` measures by how much), so the gradient-equivalent axis
flatters HF a little, and the time axis does not.

    OMP_NUM_THREADS=1 python examples/hf_on_a_language_model.py \\
        --out benchmarks/lm_char_gpt.png --summary benchmarks/results/lm_char_gpt.json

runs a budget of 32,000 gradient-equivalents per run (500 AdamW steps of 64 sequences): about
6 minutes on an idle core (6 min 17 s wall clock; about 0.12 CPU s per AdamW step and 3 ms per
HF gradient-equivalent; it uses one thread, and the summary records the run's CPU time as
``cpu_seconds``). ``--scale 0.02`` runs the same code with a fiftieth
of the budget and 64 validation windows (the test suite's smoke test).
Losses and gradient-equivalents are deterministic for a given torch version and thread count;
seconds are not, and are only worth publishing from a quiet machine.
``benchmarks/RESULTS.md``'s section is :func:`results_section` of the committed summary (a
test re-reads it); ``--section SUMMARY`` prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import hessfree

#: sizes of the comparison (the docstring's)
CONTEXT, LAYERS, HEADS, WIDTH = 64, 3, 4, 96
ADAM_BATCH, HF_GRADIENT, HF_CURVATURE, HF_CG = 64, 512, 128, 50
ADAM_STEPS, WARMUP, VALIDATION = 500, 0.02, 512
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
BLOCK, EVERY = 1000, 10


# -- data ----------------------------------------------------------------------------------------
def corpus() -> str:
    """The text of Python's ``help()`` topics, in the order of their names."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


@dataclass
class Text:
    """The character vocabulary, the training and validation text as token ids."""

    vocab: list[str]
    train: torch.Tensor
    val: torch.Tensor

    @classmethod
    def split(cls, text: str) -> Text:
        """Blocks of :data:`BLOCK` characters; every :data:`EVERY`-th one is validation."""
        vocab = sorted(set(text))
        lookup = {c: i for i, c in enumerate(vocab)}
        codes = torch.tensor([lookup[c] for c in text], dtype=torch.long)
        blocks = list(torch.split(codes, BLOCK))
        val = torch.cat(blocks[EVERY - 1::EVERY])
        train = torch.cat([b for i, b in enumerate(blocks) if i % EVERY != EVERY - 1])
        return cls(vocab, train, val)

    def windows(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` random training windows of :data:`CONTEXT` characters, ``(n, CONTEXT)``."""
        start = torch.randint(0, self.train.numel() - CONTEXT, (n,), generator=gen)
        return self.train[start[:, None] + torch.arange(CONTEXT)]

    def validation(self, n: int) -> torch.Tensor:
        """The first ``n`` non-overlapping validation windows (fixed)."""
        m = min(n, self.val.numel() // CONTEXT)
        return self.val[: m * CONTEXT].view(m, CONTEXT)


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy (torch's ``F.cross_entropy``)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


# -- runs ----------------------------------------------------------------------------------------
@dataclass
class Curve:
    """One run: validation loss against gradient-equivalents and seconds."""

    name: str
    settings: dict[str, Any]
    grad_equiv: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    wall_seconds: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    steps: int = 0


class Clock:
    """CPU and wall seconds of the training work only (paused while evaluating)."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> Clock:
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w


def record(curve: Curve, model: torch.nn.Module, val: torch.Tensor, ge: float, clock: Clock
           ) -> None:
    """Append the validation loss now, at ``ge`` gradient-equivalents and the clock's seconds."""
    with torch.no_grad():
        loss = float(next_token_loss(model(val), val))
    curve.grad_equiv.append(ge)
    curve.cpu_seconds.append(clock.cpu)
    curve.wall_seconds.append(clock.wall)
    curve.val_loss.append(loss)


def run_adamw(model: torch.nn.Module, text: Text, val: torch.Tensor, lr: float, budget: float,
              seed: int) -> Curve:
    """AdamW with warm-up and cosine decay until ``budget`` gradient-equivalents."""
    steps = max(1, int(budget // ADAM_BATCH))
    curve = Curve(f"AdamW lr {lr:g}", {"lr": lr, "betas": (0.9, 0.99), "weight_decay": 0.1,
                                       "batch": ADAM_BATCH, "warmup": WARMUP, "steps": steps})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1)

    warmup = max(1, round(WARMUP * steps))

    def rate(i: int) -> float:  # nanoGPT: linear warm-up, cosine to lr/10
        if i < warmup:
            return (i + 1) / warmup
        frac = (i - warmup) / max(1, steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    gen, clock, every = torch.Generator().manual_seed(seed), Clock(), max(1, steps // 50)
    record(curve, model, val, 0.0, clock)
    for i in range(steps):
        ids = text.windows(ADAM_BATCH, gen)
        with clock:
            opt.zero_grad(set_to_none=True)
            next_token_loss(model(ids), ids).backward()
            opt.step()
            sched.step()
        if (i + 1) % every == 0 or i + 1 == steps:
            record(curve, model, val, (i + 1) * ADAM_BATCH, clock)
    curve.steps = steps
    return curve


def run_hf(model: torch.nn.Module, text: Text, val: torch.Tensor, budget: float, seed: int
           ) -> Curve:
    """HF (Martens' settings, adapted: module docstring) until ``budget`` gradient-equivalents."""
    config = hessfree.HFConfig.martens2010(initial_lambda=1.0, cg_max_iters=HF_CG)
    problem = hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    opt = hessfree.HessianFree(problem, config=config)
    curve = Curve("HF", {"config": json.loads(config.to_json()), "gradient_batch": HF_GRADIENT,
                         "curvature_batch": HF_CURVATURE})
    gen, clock, ge = torch.Generator().manual_seed(seed), Clock(), 0.0
    record(curve, model, val, 0.0, clock)
    while ge < budget:
        ids = text.windows(HF_GRADIENT, gen)
        with clock:
            # the gradient batch in chunks of the curvature batch's size: the same sums,
            # a quarter of the activations alive at once
            stats = opt.step(hessfree.batches.split((ids, ids), HF_CURVATURE),
                             (ids[:HF_CURVATURE], ids[:HF_CURVATURE]))
        ge += stats.grad_equivalents
        curve.steps += 1
        record(curve, model, val, ge, clock)
        print(f"  HF step {curve.steps}: loss {stats.loss_before:.4f} -> {stats.loss_after:.4f}, "
              f"λ {stats.lambda_after:.3g}, CG {stats.cg_iters} ({stats.cg_reason}), "
              f"{ge:.0f} gradient-equivalents", flush=True)
        if opt.stop_reason is not None:
            break
    return curve


# -- comparison ----------------------------------------------------------------------------------
def at(curve: Curve, axis: str, x: float) -> float:
    """The validation loss of the last evaluation with ``axis <= x``."""
    xs = getattr(curve, axis)
    return [v for t, v in zip(xs, curve.val_loss) if t <= x + 1e-9][-1]


def compare(hf: Curve, adamw: list[Curve]) -> dict[str, Any]:
    """Final losses, the best AdamW, and both at equal gradient-equivalents and equal time."""
    best = min(adamw, key=lambda c: c.val_loss[-1])
    ge = min(hf.grad_equiv[-1], best.grad_equiv[-1])
    cpu = min(hf.cpu_seconds[-1], best.cpu_seconds[-1])
    return {"best_adamw": best.name,
            "equal_grad_equiv": {"grad_equiv": ge, "HF": at(hf, "grad_equiv", ge),
                                 "AdamW": at(best, "grad_equiv", ge)},
            "equal_cpu_seconds": {"cpu_seconds": cpu, "HF": at(hf, "cpu_seconds", cpu),
                                  "AdamW": at(best, "cpu_seconds", cpu)}}


def table(summary: dict[str, Any]) -> str:
    """The Markdown table of the runs (what ``benchmarks/RESULTS.md`` shows)."""
    lines = ["| run | steps | gradient-equivalents | CPU s | validation loss (nats/char) |",
             "|---|---|---|---|---|"]
    for c in summary["runs"]:
        lines.append(f"| {c['name']} | {c['steps']} | {c['grad_equiv'][-1]:,.0f} | "
                     f"{c['cpu_seconds'][-1]:.0f} | {c['val_loss'][-1]:.4f} |")
    return "\n".join(lines)


def results_section(summary: dict[str, Any]) -> str:
    """The Markdown ``benchmarks/RESULTS.md`` shows: the table and both comparisons."""
    cmp = summary["comparison"]
    lines = [table(summary), ""]
    for key, unit, what in (("equal_grad_equiv", "grad_equiv", "gradient-equivalents"),
                            ("equal_cpu_seconds", "cpu_seconds", "CPU seconds")):
        lines.append(f"- at equal {what} ({cmp[key][unit]:,.0f}): HF {cmp[key]['HF']:.4f}, "
                     f"{cmp['best_adamw']} {cmp[key]['AdamW']:.4f} nats/char")
    return "\n".join(lines)


def plot(runs: list[Curve], out: str) -> None:
    """Validation loss against gradient-equivalents and against CPU seconds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hessfree._files import save_figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for c in runs:
        style = {"linewidth": 2.2, "color": "black"} if c.name == "HF" else {"alpha": 0.8}
        axes[0].plot(c.grad_equiv, c.val_loss, label=c.name, **style)
        axes[1].plot(c.cpu_seconds, c.val_loss, label=c.name, **style)
    axes[0].set_xlabel("gradient-equivalents (sequence gradients)")
    axes[1].set_xlabel("CPU seconds of training (one thread)")
    axes[0].set_ylabel("validation loss (nats per character)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[1].legend()
    fig.suptitle("GPT (348k parameters) on Python's help() text: HF vs AdamW")
    fig.tight_layout()
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (``argv``: the command-line arguments)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the budget to run")
    p.add_argument("--out", default="hf_on_a_language_model.png")
    p.add_argument("--summary", default=None, help="write the curves here (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--section", default=None, metavar="SUMMARY",
                   help="print the RESULTS.md section of a summary file and exit")
    a = p.parse_args(argv)
    if a.section:
        with open(a.section, encoding="utf-8") as f:
            print(results_section(json.load(f)))
        return 0
    torch.set_num_threads(a.threads)
    text = Text.split(corpus())
    # a scaled-down run evaluates on fewer windows (at least 64): the same code, cheaper
    val = text.validation(max(64, round(VALIDATION * min(1.0, 5 * a.scale))))
    budget = a.scale * ADAM_STEPS * ADAM_BATCH
    torch.manual_seed(a.seed)
    init = hessfree.models.GPT(len(text.vocab), CONTEXT, LAYERS, HEADS, WIDTH).state_dict()

    def fresh() -> torch.nn.Module:
        model = hessfree.models.GPT(len(text.vocab), CONTEXT, LAYERS, HEADS, WIDTH).eval()
        model.load_state_dict(init)
        return model

    n = sum(t.numel() for t in init.values())
    print(f"text: Python {platform.python_version()}'s help() topics, {text.train.numel():,} "
          f"training and {text.val.numel():,} validation characters, {len(text.vocab)} symbols; "
          f"GPT, {n:,} parameters; budget {budget:,.0f} gradient-equivalents", flush=True)
    runs = [run_adamw(fresh(), text, val, lr, budget, a.seed + 1) for lr in LEARNING_RATES]
    for c in runs:
        print(f"{c.name}: validation loss {c.val_loss[-1]:.4f} after {c.steps} steps, "
              f"{c.cpu_seconds[-1]:.0f} CPU s", flush=True)
    hf = run_hf(fresh(), text, val, budget, a.seed + 2)
    runs.append(hf)
    summary = {"python": platform.python_version(), "torch": torch.__version__,
               "command": " ".join(["python", "examples/hf_on_a_language_model.py",
                                    *(sys.argv[1:] if argv is None else argv)]),
               "threads": a.threads, "parameters": n, "symbols": len(text.vocab),
               "train_chars": text.train.numel(), "val_chars": text.val.numel(),
               "validation_windows": val.shape[0], "budget": budget,
               "runs": [asdict(c) for c in runs], "comparison": compare(hf, runs[:-1])}
    summary["cpu_seconds"] = time.process_time()
    print(results_section(summary))
    plot(runs, a.out)
    print(f"figure: {a.out}")
    if a.summary:
        from hessfree._files import write_text

        write_text(a.summary, json.dumps(summary, indent=1) + "\n")
        print(f"summary: {a.summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
