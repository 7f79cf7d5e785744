"""Where every number of README "Results" (and the RESULTS.md sections it quotes) comes from.

The registry of ``hessfree verify`` (``hessfree.runs.verify``; run by
``tests/test_published_numbers.py``): each claim recomputes a published number from a committed
artifact (``benchmarks/artifacts/<study>/``, written by ``hessfree artifact``, or a benchmark's
saved output in ``benchmarks/results/`` naming its command) and names the phrase that must carry
it; each block is a generated table or sentence; each given says why a number is not a result.
In the scanned sections a number that is none of these fails the check.

After a background run finishes (or moves on): rebuild its artifact with the command in
``benchmarks/RESULTS.md`` ("Evidence"), then ``hessfree verify --write`` regenerates the blocks and
figures and lists the sentences whose numbers moved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hessfree.runs.verify import Block, Claim, Figure, Given

ART = "benchmarks/artifacts/"
DEMO = ART + "demo"
STUDY = ART + "momentum-study"
FIG5 = ART + "fig5"
T1 = ART + "table1-curves-f0.02-seeds3"
T5 = ART + "table5-addition-f0.1"
T5F1 = ART + "table5-addition-hf-f1"
HF_EQ = ART + "curves-hf-equal-cost"
PRODUCTS = "benchmarks/results/products.md"
HF_STEP = "benchmarks/results/hf_step-2026-11-23.txt"
RNN = "benchmarks/results/rnn-2026-11-23.txt"
CG = "benchmarks/results/cg.md"
SPECTRAL = "benchmarks/results/spectral.md"
TRANSFORMER_MEMORY = "benchmarks/results/transformer_memory.txt"
README = ("README.md",)
BOTH = ("README.md", "benchmarks/RESULTS.md")
RESULTS = ("benchmarks/RESULTS.md",)


# -- helpers --------------------------------------------------------------------------------------
def run(ev: Any, suffix: str, prefix: str = "") -> Any:
    """The one run of ``ev`` whose key starts with ``prefix`` and ends with ``suffix``."""
    hits = [r for k, r in ev.runs.items() if k.startswith(prefix) and k.endswith(suffix)]
    if len(hits) != 1:
        raise KeyError(f"{len(hits)} runs match {prefix}*{suffix}")
    return hits[0]


def row(text: str, label: str) -> list[str]:
    """The cells after the first of the first table row whose first cell starts with ``label``.

    Pipe tables and whitespace-aligned tables alike; ``label`` is a prefix, so a row that a
    later output of the same benchmark names more fully still matches.
    """
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if "|" in line \
            else line.split()
        if cells and cells[0] and cells[0].startswith(label):
            return cells[1:]
    raise KeyError(f"no row {label!r}")


def value(text: str, label: str, index: int) -> float:
    """A number of that row (units ``ms``, ``%``, ``x`` and thousands separators stripped)."""
    return float(row(text, label)[index].rstrip("ms%x").replace(",", ""))


def pct(x: float) -> str:
    return f"{100 * x:.0f} %"


# -- the demo -------------------------------------------------------------------------------------
def demo_run(ev: Any, opt: str, which: str = "run1/") -> Any:
    return run(ev, f"curves-small/{opt}", which)


def demo_comparison(ev: Any, which: str = "run1/") -> dict[str, Any]:
    (key,) = [k for k in ev.comparisons if k.startswith(which)]
    return ev.comparisons[key]


def products_to(ev: Any, fraction: float) -> int:
    """Products CG needs to close ``fraction`` of the gap q(0) - q* (q(0) = 0)."""
    c = demo_comparison(ev)
    values = np.array(c["values"]["cg"], dtype=float)
    return int(np.nonzero(values <= fraction * c["q_star"])[0][0])


def best_first_order_share(ev: Any) -> str:
    """The largest share of the gap NAG, CM or GD close in the comparison's products."""
    c = demo_comparison(ev)
    return pct(max(c["values"][m][-1] / c["q_star"] for m in ("nag", "cm", "gd")))


def printed(ev: Any, which: str) -> list[str]:
    """What a run of the demo printed, its paths aside."""
    return [line for line in ev.texts[f"{which}stdout.txt"].splitlines()
            if not line.startswith(("figure:", "runs/", "results in"))]


def same_as(ev: Any, other: str, which: str = "run1/") -> str:
    """Whether two runs printed the same table (their paths aside) and the same q(x_k)."""
    same = printed(ev, which) == printed(ev, other) and \
        demo_comparison(ev, which)["values"] == demo_comparison(ev, other)["values"]
    return "the same" if same else "a different"


def later_code(ev: Any) -> tuple[str, str]:
    """The third run's commit (short) and whether it printed what the first did."""
    commit = demo_run(ev, "nag", "run3/").attrs["git_commit"][:7]
    return commit, same_as(ev, "run3/")


def no_rejection(ev: Any) -> str:
    counts = [demo_run(ev, o).attrs["not_accepted"] for o in ("hf", "hf-momentum")]
    return "no step rejected by either" if not any(counts) else f"{counts} steps rejected"


def draw_demo(path: Path, ev: Any) -> None:
    from hessfree.quadratic import Comparison
    from hessfree.runs.demo import RUNS, draw_figure

    c = demo_comparison(ev)
    draw_figure({r.optimizer: demo_run(ev, r.optimizer) for r in RUNS},
                Comparison.from_dict(c), c["step"], path)


def demo_table(ev: Any) -> str:
    """What the demo printed (the first run), its paths aside, as a code block."""
    return "```\n" + "\n".join(printed(ev, "run1/")).strip() + "\n```"


DEMO_CLAIMS = [
    Claim("demo.same", DEMO, lambda e: same_as(e, "run2/"), "two consecutive runs print {} "
          "table", str, BOTH),
    Claim("demo.later", DEMO, later_code, "the same command on the code of commit {} printed {} "
          "table", str, RESULTS),
    Claim("demo.budget", DEMO, lambda e: demo_run(e, "nag").attrs["budget"]["budget"],
          "at {} gradient-equivalents each", ".0f", BOTH),
    Claim("demo.nag.settings", DEMO, lambda e: tuple(demo_run(e, "nag").attrs["config"][k] for k
                                                     in ("mu_max", "lr", "batch_size")),
          "μ_max {}, ε = {}, minibatch {}", "g"),
    Claim("demo.train_error", DEMO, lambda e: tuple(demo_run(e, o).final("train_error") for o
                                                    in ("nag", "hf", "hf-momentum")),
          "reaches training error {}, Martens' HF {} and the momentum-like HF {}", ".3g"),
    Claim("demo.rejected", DEMO, no_rejection, "({})", str),
    Claim("demo.quadratic", DEMO, lambda e: (demo_comparison(e)["step"],
                                             f"{demo_comparison(e)['dim']:,}"),
          "the quadratic of HF's step {} ({} parameters)", str, BOTH),
    Claim("demo.cg", DEMO, lambda e: (products_to(e, 0.9), products_to(e, 0.99)),
          "CG closes 90 % of the gap to the minimum in {} products and 99 % in {}", "d", BOTH),
    Claim("demo.first_order", DEMO, lambda e: (best_first_order_share(e),
                                               demo_comparison(e)["iters"]),
          "close at most {} of it in {}", str, BOTH),
]


# -- the momentum-like HF's minibatch phase (the stability study) --------------------------------
#: the study's runs (their folders) and what each varies, in the order of the table
VARIANTS = {
    "fitted-reject": "ρ on the fitted minibatch; a step that raises it is rejected (the old "
                     "preset)",
    "fitted-never-reject": "as above, never rejecting",
    "check-reject": "ρ on a second, disjoint minibatch against its own gradient's model; a step "
                    "that raises the fitted minibatch is rejected",
    "preset": "as above, the step shortened by Armijo from ε instead (the preset)",
}


def variant(ev: Any, name: str) -> Any:
    return run(ev, f"curves-ae/{name}")


def burst(rejected: np.ndarray) -> int:
    """The longest run of consecutive rejected steps."""
    longest = current = 0
    for r in rejected:
        current = current + 1 if r else 0
        longest = max(longest, current)
    return longest


def wander(r: Any) -> tuple[float, int, float]:
    """(lowest training error, where, highest after it) of a run's evaluations."""
    err, ge = r.eval["train_error"], r.eval["grad_equiv"]
    i = int(np.argmin(err))
    return float(err[i]), round(float(ge[i])), float(np.max(err[i:]))


def study_table(ev: Any) -> str:
    """One row per variant: its settings, steps, rejections, λ and training error."""
    marks = (100, 200, 320)
    lines = ["| variant | `heldout_rho` / `line_search` / `reject_worse` | steps | rejected "
             "(longest burst) | smallest λ | training error at " + " / ".join(map(str, marks)) +
             " gradient-equivalents | at the end (where) |", "|---|---|---|---|---|---|---|"]
    for name, what in VARIANTS.items():
        r = variant(ev, name)
        c, st = r.attrs["config"], r.steps
        rej = ~st["accepted"]
        errs = " / ".join(g3(r.at("train_error", m)) for m in marks)
        end = f"{g3(r.final('train_error'))} ({r.eval['grad_equiv'][-1]:.0f}" + \
            (")" if r.finished else f", {r.status})")
        heldout = c.get("heldout_rho", c.get("check"))  # the runs' settings name it `check`
        lines.append(f"| {what} | {heldout} / {c['line_search']} / {c['reject_worse']} | "
                     f"{len(rej)} | {int(rej.sum())} ({burst(rej)}) | "
                     f"{np.min(st['lambda_after']):.2g} | {errs} | {end} |")
    return "\n".join(lines)


def draw_study(path: Path, ev: Any) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "plot_momentum_study", Path(__file__).with_name("plot_momentum_study.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.draw({name: variant(ev, name) for name in VARIANTS}, path)


def rejected(ev: Any, name: str) -> tuple[int, int]:
    rej = ~variant(ev, name).steps["accepted"]
    return int(rej.sum()), len(rej)


def smallest_lambda(ev: Any, name: str) -> str:
    return f"{np.min(variant(ev, name).steps['lambda_after']):.1e}"


def fitted(ev: Any) -> tuple[str, ...]:
    """The old preset: smallest λ, share rejected, lowest error (where) and the highest after."""
    low, where, high = wander(variant(ev, "fitted-reject"))
    n, total = rejected(ev, "fitted-reject")
    return smallest_lambda(ev, "fitted-reject"), pct(n / total), g3(low), str(where), g3(high)


def never(ev: Any) -> tuple[str, str]:
    low, _, high = wander(variant(ev, "fitted-never-reject"))
    return g3(low), g3(high)


def sooner(ev: Any) -> tuple[str, ...]:
    """Training error of the preset and of the rejecting variant at 320 and at the end."""
    p, r = variant(ev, "preset"), variant(ev, "check-reject")
    return (g3(p.at("train_error", 320)), g3(r.at("train_error", 320)),
            g3(p.final("train_error")), g3(r.final("train_error")),
            f"{p.eval['grad_equiv'][-1]:.0f}")


STUDY_CLAIMS = [
    Claim("study.budget", STUDY, lambda e: variant(e, "preset").attrs["budget"]["budget"],
          "for {} gradient-equivalents each", ".0f", BOTH),
    Claim("study.fitted", STUDY, fitted,
          "let λ fall to {} and the run wander ({} of steps rejected; training error {} at {} "
          "gradient-equivalents, then up to {})", str, BOTH),
    Claim("study.never", STUDY, never, "never rejecting such steps diverged ({} → {})", str,
          BOTH),
    Claim("study.check", STUDY, lambda e: smallest_lambda(e, "preset"),
          "it never falls below {}", str, BOTH),
    Claim("study.rejections", STUDY, lambda e: (
        *rejected(e, "preset"), *rejected(e, "check-reject"),
        burst(~variant(e, "check-reject").steps["accepted"])),
          "removed every rejection ({} of {} steps, was {} of {} in bursts of up to {})", "d",
          BOTH),
    Claim("study.sooner", STUDY, sooner,
          "left the mean-image plateau sooner (training error {} against {} at 320 "
          "gradient-equivalents) and ended lower ({} against {} at {})", str, BOTH),
]


# -- CG against NAG on a saved HF quadratic (Fig. 5) ---------------------------------------------
def fig5(ev: Any) -> tuple[dict[str, Any], Any, int]:
    """The comparison record, the HF run and the step of the quadratic compared."""
    c = ev.comparison()
    return c, run(ev, "curves-ae/hf"), int(c["source"].rsplit("/", 1)[1])


def fig5_quadratic(ev: Any) -> tuple[str, ...]:
    c, r, step = fig5(ev)
    lam = float(r.steps["lambda_before"][list(r.steps["step"]).index(step)])
    err = float(r.eval["train_error"][list(r.eval["step"]).index(step)])
    return f"{c['dim']:,}", g3(lam), str(step), g3(err), f"{c['L']:.4g}", str(c["L_products"]), \
        f"{c['L'] / lam:.2g}"


def products_within(c: dict[str, Any], method: str, rtol: float = 1e-5) -> str:
    """Products ``method`` needs to come within ``rtol`` (relative) of the best q reached."""
    best = min(min(v for v in vals if v is not None) for vals in c["values"].values())
    vals = np.array([np.nan if v is None else v for v in c["values"][method]])
    hit = np.nonzero(vals - best <= rtol * abs(best))[0]
    return str(int(hit[0])) if len(hit) else f"more than {c['iters']}"


def fig5_table(ev: Any) -> str:
    """The table ``hessfree compare`` printed (q(x_k) at k = 10 ... 250)."""
    (text,) = [t for k, t in ev.texts.items() if k.endswith("compare.txt")]
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method |"))
    table = [line for line in lines[start:] if "|" in line]
    return "```\n" + "\n".join(table) + "\n```"


FIG5_CLAIMS = [
    Claim("fig5.quadratic", FIG5, fig5_quadratic,
          "The quadratic ({} parameters, λ = {}) is from step {}, where the training error was "
          "{}: L = {} by Lanczos ({} products, not charged), so κ ≤ L/λ ≈ {}", str, RESULTS),
    Claim("fig5.products", FIG5, lambda e: (products_within(e.comparison(), "cg"),
                                            e.comparison()["mu"]["nag"],
                                            products_within(e.comparison(), "nag")),
          "CG is within 1e-5 (relative) of the best value any method reached after {} products, "
          "NAG (ε = 1/L, the grid's best μ = {}) after {}", str, RESULTS),
]


# -- curvature products and the other benchmark outputs ------------------------------------------
def product_ratio(art: Any, ours: str, peer: str) -> float:
    return value(art.text, peer, 0) / value(art.text, ours, 0)


SEQ = "GGN product, auto = sequential (cached)"
DB = "GGN product, double-backward (cached)"
UNCACHED = "GGN product, double-backward uncached (cache=False)"
LEAN = "GGN set-up + product, backend='jvp', cache=False"
LEAN_PRODUCT = "GGN product on a backend='jvp', cache=False operator"
CACHED_SETUP_PRODUCT = "GGN set-up + product (what CG holds)"
BENCH_CLAIMS = [
    Claim("products.cached", PRODUCTS, lambda a: (value(a.text, SEQ, 1), value(a.text, DB, 1)),
          "a cached GGN product costs **{}** gradients (auto = analytic `sequential` backend; "
          "{} with double-backward)", ".3g"),
    Claim("products.backpack", PRODUCTS,
          lambda a: product_ratio(a, SEQ, "backpack ggn_vector_product"),
          "**{}x** faster than BackPACK 1.7.1's product on a stored graph", ".3g"),
    Claim("products.curvlinops.uncached", PRODUCTS,
          lambda a: product_ratio(a, UNCACHED, "curvlinops GGNLinearOperator @ v"),
          "our uncached product (double-backward, `cache=False`) is **{}x** faster", ".2g"),
    Claim("products.curvlinops.mixed", PRODUCTS,
          lambda a: product_ratio(a, SEQ, "curvlinops GGNLinearOperator @ v"),
          "our cached product against its uncached one, {}x", ".2g"),
    Claim("products.memory", PRODUCTS, lambda a: value(a.text, "ggn-sequential", 1),
          "in **{}x** a gradient's peak memory", ".2f"),
    Claim("hf_step.outside", HF_STEP, lambda a: float(
        a.text.split("evaluations: ")[1].split("= ")[1].split("%")[0]),
          "spends {}% of its time outside products", ".1f"),
    Claim("cg.rest", CG, lambda a: value(a.text, "auto = sequential", 3),
          "a CG iteration spends {}% outside its product", ".1f"),
    Claim("rnn.product", RNN, lambda a: rnn_product(a.text),
          "with structural damping costs {} gradients", ".2g"),
    Claim("spectral.eigsh", SPECTRAL, lambda a: eigsh(a.text),
          "agree with scipy's `eigsh` to {} in {} products and {} s against scipy's {} products "
          "and {} s", str),
    Claim("spectral.blocks", SPECTRAL, lambda a: block_ratios(a.text), "({}-{}x)", ".2f"),
    Claim("transformer.memory.lean", TRANSFORMER_MEMORY,
          lambda a: (value(a.text, LEAN, 2), value(a.text, CACHED_SETUP_PRODUCT, 2)),
          "peak at **{}x** a gradient's memory, against {}x for the cached default", ".2f"),
    Claim("transformer.memory.lean.results", TRANSFORMER_MEMORY,
          lambda a: (value(a.text, LEAN, 2), value(a.text, LEAN_PRODUCT, 2)),
          "the set-up and one product peak at {}x the math-kernel gradient, and each product "
          "adds {}x to that operator", ".2f", RESULTS),
]


def rnn_product(text: str) -> float:
    """Product / gradient of the forward backend with structural damping (μ = 0.03)."""
    (cells,) = [line.split() for line in text.splitlines()
                if line.startswith("forward ") and line.split()[1] == "0.03"]
    return float(cells[-1])


def eigsh(text: str) -> tuple[str, ...]:
    """Ours against scipy at the same tolerance: agreement, products and seconds of each."""
    mine = row(text, "hessfree eigsh, block=1")
    theirs = row(text, "scipy eigsh via to_scipy(), tol=1.5e-8")
    return (f"{float(mine[3]):.0e}", mine[0], mine[1].split()[0], theirs[0],
            theirs[1].split()[0])


def block_ratios(text: str) -> tuple[float, float]:
    """The spread of block / singles over the rows the package uses (not the forced ones)."""
    ratios = [float(line.split("|")[4].strip().strip("*")) for line in text.splitlines()
              if line.startswith("| ") and "**" in line and "forced" not in line]
    return min(ratios), max(ratios)


# -- reproduced tables (Table 1, Table 5) --------------------------------------------------------
def jobs(ev: Any) -> list[Any]:
    """The jobs of an artifact's ``hessfree reproduce`` command."""
    from hessfree.runs.cli import reproduce_command

    return reproduce_command(ev.command)[1]


def run_key(job: Any) -> str:
    """A job's run key in the artifact: ``<experiment>/<run name>``."""
    return f"{job.experiment}/{job.name}"


def cells(ev: Any) -> list[tuple[str, str, list[str]]]:
    """(cell, optimizer, run keys) of the command's plan, in its order."""
    out: dict[str, tuple[str, list[str]]] = {}
    for j in jobs(ev):
        out.setdefault(j.cell, (j.optimizer, []))[1].append(run_key(j))
    return [(c, o, keys) for c, (o, keys) in out.items()]


def summary_cells(ev: Any) -> dict[str, dict[str, float]]:
    """The summary's numbers per cell (first experiment), or nothing before any evaluation."""
    if not (ev.path / "summary.h5").is_file():
        return {}
    s = ev.summary()
    names = ("mean", "std", "min", "max", "n_seeds", "best_lr", "best_lr_on_edge", "mu_reached",
             "paper")
    return {c: {n: float(s[n][0][i]) for n in names} for i, c in enumerate(s["cells"])
            if math.isfinite(float(s["mean"][0][i]))}


def state(ev: Any) -> tuple[int, int]:
    """(finished, planned) runs."""
    return ev.finished, len(ev.planned)


def all_finished(ev: Any, keys: list[str]) -> bool:
    """Whether every run of ``keys`` is in the artifact and had finished."""
    return all(k in ev.runs and ev.runs[k].finished for k in keys)


def progress(ev: Any, keys: list[str]) -> str:
    done = sum(1 for k in keys if k in ev.runs and ev.runs[k].finished)
    running = sum(1 for k in keys if k in ev.runs and not ev.runs[k].finished)
    return f"{done} of {len(keys)}" + (f" ({running} unfinished)" if running else "")


def g3(x: float) -> str:
    return f"{x:.3g}"


def table(ev: Any, metric: str) -> str:
    """The reproduced table, one row per cell.

    Per cell: the runs finished, mean ± sd over seeds (min-max) of the metric at the best
    learning rate by mean (edge: the grid's largest or smallest), the μ the cell reached and
    the paper's number at f = 1. The package's summary takes the runs present, finished or
    not (an unfinished run's last evaluation), so a cell whose planned runs have not all
    finished is marked partial.
    """
    summ = summary_cells(ev)
    lines = [f"| cell | optimizer | runs finished | {metric}: mean ± sd (min-max), seeds | "
             "best lr | μ reached | paper, f = 1 |", "|---|---|---|---|---|---|---|"]
    for c, opt, keys in cells(ev):
        s = summ.get(c)
        if s is None:
            lines.append(f"| {c} | {opt} | {progress(ev, keys)} | - | - | - | - |")
            continue
        n = int(s["n_seeds"])
        value = f"{g3(s['mean'])} ± {s['std']:.2g} ({g3(s['min'])}-{g3(s['max'])}), {n}" \
            if n > 1 else f"{g3(s['mean'])}, 1"
        lr = "-" if not math.isfinite(s["best_lr"]) else \
            f"{s['best_lr']:g}{' (grid edge)' if s['best_lr_on_edge'] else ''}"
        mu = "-" if not math.isfinite(s["mu_reached"]) else f"{s['mu_reached']:.4g}"
        paper = "-" if not math.isfinite(s["paper"]) else f"{s['paper']:g}"
        if not all_finished(ev, keys):
            value += " — partial: not a result yet"
        lines.append(f"| {c} | {opt} | {progress(ev, keys)} | {value} | {lr} | {mu} | {paper} |")
    return "\n".join(lines)


def hf_vs_nag(ev: Any) -> str:
    """The HF† against NAG sentence, following the spread over seeds."""
    summ, plan = summary_cells(ev), {c: keys for c, _, keys in cells(ev)}
    nag = {c: s for c, s in summ.items() if c.endswith("N")}
    ready = "HF†" in summ and nag and all_finished(ev, plan["HF†"]) and all_finished(
        ev, [k for c in plan if c.endswith("N") for k in plan[c]])
    if not ready:
        nag_keys = [k for c in plan if c.endswith("N") for k in plan[c]]
        return ("The sentence comparing HF† with NAG waits for their runs: HF† "
                f"{progress(ev, plan.get('HF†', []))}, NAG {progress(ev, nag_keys)} finished.")
    best = min(nag, key=lambda c: nag[c]["mean"])
    h, b = summ["HF†"], nag[best]
    gap, spread = b["mean"] - h["mean"], math.hypot(h["std"], b["std"])
    order = "below" if gap > 0 else "above"
    verdict = ("more than twice the seeds' combined spread: HF† ends ahead" if gap > 2 * spread
               else "more than twice the seeds' combined spread: NAG ends ahead"
               if -gap > 2 * spread else "within twice the seeds' combined spread: a tie")
    h_cost = run_cost(ev, plan["HF†"])
    b_cost = run_cost(ev, [run_key(j) for j in jobs(ev)
                           if j.cell == best and math.isclose(j.lr, b["best_lr"], rel_tol=1e-5)])
    return (f"HF† ends at {g3(h['mean'])} ± {h['std']:.2g}, {order} the best NAG cell ({best}, "
            f"lr {b['best_lr']:g}: {g3(b['mean'])} ± {b['std']:.2g}) by {abs(gap):.2g}, "
            f"{verdict} (combined spread {spread:.2g}). Not at equal cost: an HF† run used "
            f"{h_cost:,.0f} gradient-equivalents, {h_cost / b_cost:.0f}x a NAG run's "
            f"{b_cost:,.0f} (the paper, too, calls HF† not directly comparable).")


def nag_vs_cm(ev: Any) -> str:
    """NAG against CM at each μ_max (the paper's Table 1 claim), following the spread."""
    summ, plan = summary_cells(ev), {c: keys for c, _, keys in cells(ev)}
    pairs = [(c[:-1], c, c[:-1] + "M") for c in plan if c.endswith("N") and c[:-1] + "M" in plan]
    keys = [k for _, n, m in pairs for k in plan[n] + plan[m]]
    if not pairs or not all_finished(ev, keys):
        return ("The sentence comparing NAG with CM waits for their runs: "
                f"{progress(ev, keys)} finished.")
    parts = []
    for mu, n, m in pairs:
        a, b = summ[n], summ[m]
        gap, spread = b["mean"] - a["mean"], math.hypot(a["std"], b["std"])
        verdict = ("NAG ahead by more than twice" if gap > 2 * spread else
                   "CM ahead by more than twice" if -gap > 2 * spread else "a tie within twice")
        parts.append(f"At μ_max {mu}, NAG ends at {g3(a['mean'])} ± {a['std']:.2g} (lr "
                     f"{a['best_lr']:g}) and CM at {g3(b['mean'])} ± {b['std']:.2g} (lr "
                     f"{b['best_lr']:g}): {verdict} the seeds' combined spread of {spread:.2g} "
                     f"(the paper: {a['paper']:g} and {b['paper']:g}).")
    return " ".join(parts) + (" Both at equal cost: every momentum run makes the same updates, "
                              "each cell at its best learning rate.")


def run_cost(ev: Any, keys: list[str]) -> float:
    """Mean gradient-equivalents of the finished runs among ``keys``."""
    costs = [ev.runs[k].attrs["grad_equiv"] for k in keys if k in ev.runs and ev.runs[k].finished]
    if not costs:
        raise ValueError(f"no finished run among {keys}")
    return float(np.mean(costs))


def hf_equal_cost(t1: Any, eq: Any) -> str:
    """Martens' HF (HF*) given an HF† run's cost, against Table 1's HF† seeds.

    Finished: its last training error against HF†'s mean ± sd at their ends (a tie within
    twice the sd). Unfinished: not a result; where it stood, and HF† at the same cost.
    """
    (r,) = eq.runs.values()
    keys = next(ks for c, _, ks in cells(t1) if c == "HF†")
    dagger = [t1.runs[k] for k in keys if k in t1.runs and t1.runs[k].finished]
    budget = float(r.attrs["budget"]["budget"])
    head = (f"Martens' HF (HF*, seed {r.attrs['seed']}) given an HF† run's cost (`--budget "
            f"{budget:g}`; an HF† run used {run_cost(t1, keys):,.0f} gradient-equivalents)")
    if not len(r.eval.get("train_error", [])):
        return f"{head}: {r.status}, no evaluation yet when its artifact was built."
    err, steps = r.final("train_error"), int(r.attrs["rows"])
    if r.finished:
        ends = np.array([d.final("train_error") for d in dagger])
        m, s = float(ends.mean()), float(ends.std(ddof=1)) if len(ends) > 1 else 0.0
        verdict = ("more than twice HF†'s spread below it: HF* ends ahead" if err < m - 2 * s
                   else "more than twice HF†'s spread above it: HF† ends ahead"
                   if err > m + 2 * s else "within twice HF†'s spread: a tie")
        return (f"{head} ends at {g3(err)} after {steps} HF steps and "
                f"{r.attrs['grad_equiv']:,.0f} gradient-equivalents, against HF†'s "
                f"{g3(m)} ± {s:.2g} ({len(ends)} seeds): {verdict} (one seed of HF*).")
    cost, step = float(r.eval["grad_equiv"][-1]), int(r.eval["step"][-1])
    same = np.array([d.at("train_error", cost) for d in dagger])
    return (f"{head} is not finished ({r.status} when its artifact was built), so it is not "
            f"a result yet: at its last evaluation, {cost:,.0f} gradient-equivalents and "
            f"{step} HF steps in, its training error was {g3(err)}; at that cost HF†'s "
            f"{len(same)} seeds stood at {g3(same.mean())} ± {same.std(ddof=1):.2g}.")


def hf_runs(ev: Any) -> str:
    """Table 5's HF runs one by one: where each stood, and whether it solved the task."""
    lines = ["| run | status | HF steps | gradient-equivalents | test zero-one error: last "
             "(lowest) | solved (< 1 %) |", "|---|---|---|---|---|---|"]
    missing = "not started" if running(ev) or not ev.runs else "left out (barely started)"
    for key in ev.planned:
        if key not in ev.runs:
            lines.append(f"| {key.split('/')[-1]} | {missing} | - | - | - | - |")
            continue
        r = ev.runs[key]
        err = r.eval["test_error"]
        low = float(np.min(err)) if len(err) else math.nan
        lines.append(f"| {key.split('/')[-1]} | {r.status} | {r.attrs['rows']} | "
                     f"{r.attrs['grad_equiv']:.0f} | {r.final('test_error'):.3g} ({low:.3g}) | "
                     f"{'yes' if low < 0.01 else 'no'} |")
    return "\n".join(lines)


def protocol(ev: Any) -> tuple[str, int]:
    """(fraction of the budget, seeds per cell) of a reproduce command."""
    seeds = {j.seed for j in jobs(ev)}
    return f"{100 * reproduce_args(ev).fraction:g} %", len(seeds)


def reproduce_args(ev: Any) -> Any:
    from hessfree.runs.cli import reproduce_command

    return reproduce_command(ev.command)[0]


def hf_budget(ev: Any) -> str:
    (budget,) = {j.budget for j in jobs(ev) if j.optimizer == "hf"}
    return f"{budget:,.0f}"


def hf_phases(ev: Any) -> str:
    """The momentum-like HF's first seed by phase (its step table)."""
    keys = [k for c, _, ks in cells(ev) if c == "HF†" for k in ks]
    if not keys or keys[0] not in ev.runs or ev.runs[keys[0]].steps is None:
        return "No momentum-like HF run had started when the artifact was built."
    r = ev.runs[keys[0]]
    st = r.steps
    lines = [f"{keys[0].split('/')[-1]} ({r.status}):", "",
             "| phase | updates | gradient-equivalents | rejected | Armijo shortened | λ | "
             "median ρ |", "|---|---|---|---|---|---|---|"]
    for ph in sorted(set(int(p) for p in st["phase"])):
        m = st["phase"] == ph
        lam, rho = st["lambda_after"][m], st["rho"][m]
        rho = rho[np.isfinite(rho)]
        lines.append(f"| {ph + 1} | {int(m.sum())} | {float(np.sum(st['grad_equiv'][m])):.0f} | "
                     f"{int((~st['accepted'][m]).sum())} | "
                     f"{int(np.sum(st['step_size'][m] < 1.0))} | "
                     f"{np.min(lam):.2g} - {np.max(lam):.2g} | "
                     f"{(np.median(rho) if len(rho) else math.nan):.2g} |")
    return "\n".join(lines)


def best_runs(ev: Any) -> dict[str, list[Any]]:
    """Per cell, its runs at the best learning rate (the summary's), those that have evals."""
    summ = summary_cells(ev)
    out: dict[str, list[Any]] = {}
    for c, _, keys in cells(ev):
        lr = summ.get(c, {}).get("best_lr", math.nan)
        for j in jobs(ev):
            key = f"{j.experiment}/{j.name}"
            if j.cell == c and key in ev.runs and len(ev.runs[key].eval.get("step", [])) and (
                    j.lr is None or j.lr == lr):
                out.setdefault(c, []).append(ev.runs[key])
    return out


def draw_reproduced(path: Path, metric: str, title: str, *arts: Any,
                    extra: tuple[tuple[str, Any], ...] = ()) -> None:
    """Each cell's runs at its best learning rate: the metric against gradient-equivalents.

    ``extra``: (label, run) of other runs drawn beside them, dashed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hessfree._files import save_figure

    fig = Figure(figsize=(7.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    k = 0
    for art in arts:
        plan = {c: keys for c, _, keys in cells(art)}
        for c, runs in best_runs(art).items():
            f = f"{100 * reproduce_args(art).fraction:g} % budget" + (
                "" if all_finished(art, plan[c]) else ", in progress" if running(art)
                else ", stopped")
            for i, r in enumerate(runs):
                ax.plot(r.eval["grad_equiv"], r.eval[metric], color=f"C{k % 10}",
                        lw=1.2 if i == 0 else 0.6, label=f"{c} ({f})" if i == 0 else None)
            k += 1
    for label, r in extra:
        ax.plot(r.eval["grad_equiv"], r.eval[metric], color=f"C{k % 10}", lw=1.2, ls="--",
                label=label)
        k += 1
    ax.set(xlabel="gradient-equivalents", ylabel=metric.replace("_", " "), title=title)
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def baseline(ev: Any) -> float:
    """The biases-only model's test zero-one error on the artifact's task and length."""
    from hessfree.data.pathological_error import biases_baseline

    r = next(iter(ev.runs.values()))
    return biases_baseline(r.attrs["experiment"], int(r.attrs["config"]["T"]))


def lowest(ev: Any) -> float:
    """The lowest test zero-one error any run of the artifact reached at any evaluation."""
    return min(float(np.min(r.eval["test_error"])) for r in ev.runs.values()
               if len(r.eval.get("test_error", [])))


def running(ev: Any) -> bool:
    """Whether any run of the artifact was still running when it was built."""
    return any(r.status == "running" for r in ev.runs.values())


def whole_budget(whole: Any) -> str:
    """HF at f = 1: how far its runs got, the lowest test error, the verdict and our reading."""
    done, planned = state(whole)
    low, runs = lowest(whole), list(whole.runs.values())
    if done == planned:
        return (f"HF at the whole budget: all {planned} runs finished; the lowest test error any "
                f"run reached at an evaluation is {low:.3g}: " +
                ("below 1 %: solved." if low < 0.01 else "not below 1 %: not solved."))
    if running(whole):
        return (f"HF at the whole budget: {done} of {planned} runs finished; the lowest test "
                f"error any run reached at an evaluation is {low:.3g}, " +
                ("below 1 %: solved." if low < 0.01 else "not below 1 %: not solved (so far)."))
    ge = [r.attrs["grad_equiv"] for r in runs]
    steps = [int(r.attrs["rows"]) for r in runs]
    per_step = sum(ge) / sum(steps)
    base = baseline(whole)
    leaving = sum(1 for r in runs if float(np.min(r.eval["test_error"])) < base - 0.05)
    loss = ", ".join(f"{r.eval['train_loss'][0]:.3g} → {r.final('train_loss'):.3g}" for r in runs)
    return (f"HF at the whole budget was stopped, not finished (a partial artifact): its "
            f"{len(runs)} runs kept had made {min(steps)}-{max(steps)} HF steps, "
            f"{min(ge):,.0f}-{max(ge):,.0f} of their {hf_budget(whole)} gradient-equivalents, "
            f"and the lowest test error any reached at an evaluation is {low:.3g}, " +
            ("below 1 %: solved." if low < 0.01 else
             f"not below 1 %: not solved where they stopped. Their training loss was still "
             f"falling ({loss}), and {leaving} of them had begun to leave the biases-only "
             f"model's level of {base:.3g} (test error more than 0.05 below it). At "
             f"about {per_step:.0f} gradient-equivalents an HF step, the equal-cost budget buys "
             f"HF some {float(hf_budget(whole).replace(',', '')) / per_step:.0f} steps, where "
             "HF-RNN ran until the task was solved (the fidelity table's \"stop\" row): we "
             "think the budget, not the preset, is what it lacks here; only a finished (or "
             "longer) run can say."))


def table5_verdict(short: Any, whole: Any) -> str:
    """Whether addition was solved (test zero-one error below 1 %), from both artifacts."""
    base = baseline(short)
    ends = [s["mean"] for s in summary_cells(short).values()]
    f = f"{100 * reproduce_args(short).fraction:g} %"
    first = (f"At {f} of the budget no cell solves it: " if min(ends) >= 0.01 else
             f"At {f} of the budget a cell solves it: ") + \
        (f"the cells end between {min(ends):.3g} and {max(ends):.3g}, where the biases-only "
         f"model's error is {base:.3g}.")
    return first + " " + whole_budget(whole)


BACKGROUND_CLAIMS = [
    Claim("table1.state", T1, state, "{} of {} runs of the re-run had finished", "d", BOTH),
    Claim("table1.protocol", T1, protocol, "CURVES column, {} of the budget, {} seeds a cell",
          str, BOTH),
    Claim("table5.f1.state", T5F1, state, "{} of {} HF runs had finished", "d", BOTH),
    Claim("table5.f1.budget", T5F1, hf_budget, "{} gradient-equivalents a run", str, BOTH),
    Claim("table5.short", T5, lambda e: f"{100 * reproduce_args(e).fraction:g} %",
          "At {} of the budget, re-run with today's presets", str, BOTH),
    Claim("table5.T", T5F1, lambda e: next(iter(e.runs.values())).attrs["config"]["T"],
          "addition at T = {}", "d", BOTH),
]

CLAIMS = DEMO_CLAIMS + STUDY_CLAIMS + FIG5_CLAIMS + BENCH_CLAIMS + BACKGROUND_CLAIMS

GIVENS = [
    Given("2-core CPU", "the machine"),
    Given("Eq. 3-5", "the paper's equations"),
    Given("(ε = 1/L, the best μ of a grid)", "the comparison's settings"),
    Given("curvlinops 3.0.1", "a package version"),
    Given("BackPACK 1.7.1", "a package version"),
    Given("batch 1000", "the benchmark's setting"),
    Given("2-core machine, 2026-12-04", "the machine and the date of the products run"),
    Given("the top 5 eigenvalues", "the benchmark's setting"),
    Given("**Table 1", "the paper's table"),
    Given("**Table 5", "the paper's table"),
    Given("Eq. 5's stages", "the paper's equation"),
    Given('a "0.999" cell reaches 0.999', "the scaled stages (tests/test_runs_reproduce.py)"),
    Given("solved means below 1 %", "the papers' criterion"),
    Given("A.6's first phase", "the paper's appendix"),
]

def artifact_list(*arts: Any) -> str:
    """Every artifact: its path, its runs finished, when it was built, its command."""
    lines = ["| artifact | runs finished | built | command |", "|---|---|---|---|"]
    for a in arts:
        if hasattr(a, "meta"):
            lines.append(f"| `artifacts/{a.path.name}/` | {a.meta['finished']} | "
                         f"{a.meta['built'][:10]} | `{a.command}` |")
        else:
            lines.append(f"| `results/{a.path.name}` | - | - | `{a.command}` |")
    return "\n".join(lines)


ALL_ARTIFACTS = (DEMO, STUDY, FIG5, T1, HF_EQ, T5, T5F1, PRODUCTS, HF_STEP, RNN, CG, SPECTRAL)

BLOCKS = [
    Block("artifacts", ALL_ARTIFACTS, artifact_list, RESULTS),
    Block("table1-curves", T1, lambda e: table(e, "training error"), BOTH),
    Block("table1-hf-vs-nag", T1, hf_vs_nag, BOTH),
    Block("table1-nag-vs-cm", T1, nag_vs_cm, BOTH),
    Block("table1-hf-equal-cost", (T1, HF_EQ), hf_equal_cost, BOTH),
    Block("table5-hf-f1", T5F1, hf_runs, BOTH),
    Block("table5-f0.1", T5, lambda e: table(e, "test zero-one error"), BOTH),
    Block("table5-verdict", (T5, T5F1), table5_verdict, BOTH),
    Block("table1-hf-phases", T1, hf_phases, RESULTS),
    Block("demo-table", DEMO, demo_table, RESULTS),
    Block("study", STUDY, study_table, RESULTS),
    Block("fig5", FIG5, fig5_table, RESULTS),
]

FIGURES = [Figure("benchmarks/demo.png", DEMO, draw_demo),
           Figure("benchmarks/momentum_hf_study.png", STUDY, draw_study),
           Figure("benchmarks/table5_addition.png", (T5, T5F1), lambda p, *a: draw_reproduced(
               p, "test_error", "addition, T = 80: the best runs of each cell", *a))]

ROOT = Path(__file__).resolve().parents[1]
T1_FIGURE = "benchmarks/table1_curves.png"


def t1_figure_link(ev: Any) -> str:
    """The figure of Table 1's re-run, once any of its runs has an evaluation."""
    return f"![table 1, curves]({T1_FIGURE})" if summary_cells(ev) else \
        "(Its figure appears here once a run has an evaluation.)"


def equal_cost_label(r: Any) -> str:
    """The legend entry of the equal-cost HF* run."""
    state = "" if r.finished else ", in progress" if r.status == "running" else ", stopped"
    return f"HF* at HF†'s budget (seed {r.attrs['seed']}{state})"


BLOCKS.append(Block("table1-figure", T1, t1_figure_link, README))
if (ROOT / T1 / "summary.h5").is_file():
    FIGURES.append(Figure(T1_FIGURE, (T1, HF_EQ), lambda p, a, eq: draw_reproduced(
        p, "train_error", "Table 1, CURVES: the best runs of each cell", a,
        extra=tuple((equal_cost_label(r), r) for r in eq.runs.values()))))


SCANNED = [("README.md", "## Results")]
