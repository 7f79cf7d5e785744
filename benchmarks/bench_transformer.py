"""GGN products on a GPT-style language model: time and peak memory against a gradient (issue 18).

The model is nanoGPT's character-level GPT (``hessfree.models.char_gpt``: 6 pre-LN blocks, 6
heads, width 384, context 256, output layer tied to the embedding; 10.7M parameters for 65
symbols), float32, on the CPU, B x T = 8 x 256 random tokens, next-token cross-entropy (the mean
over the B·(T-1) predicted tokens). nanoGPT's module rather than a Hugging Face model by default
because it is the model of the peers' published transformer figures, it needs no optional
package, and it calls ``scaled_dot_product_attention`` itself, the case that breaks curvature
products; ``--model hf-gpt2`` runs a ``transformers.GPT2LMHeadModel`` of the same sizes
(``attn_implementation="sdpa"``), given to ``hessfree.Problem`` as it is.

**Time.** Medians of ``--repeats`` interleaved repeats, every row a ratio to a gradient of the
same model in the same run. Products need PyTorch's math attention kernel (the fused kernels
have neither a second nor a forward-mode derivative: ``hessfree.curvature.attention``), so the
gradient is timed both ways: with the default kernel (what a training step uses: flash
attention on the CPU) and with the math kernel (the kernel the product runs); ratios are given
to both. ``--compile`` adds ``torch.compile``: a compiled gradient (``torch.func.grad`` of the
loss) against compiled products (``torch.func.jvp`` then ``torch.func.vjp`` of the model, the
closed-form softmax Hessian between them), both under the math kernel.

**Peers** on the same model, loss and vector, in the same run: curvlinops'
``GGNLinearOperator`` and BackPACK's ``ggn_vector_product``. Each is tried first with
PyTorch's default attention kernel (where it fails, its error is printed) and then inside
``sdpa_kernel(SDPBackend.MATH)``; their products are checked against hessfree's (relative
difference printed).

**Memory.** As ``bench_products.py`` and ``bench_vocab_memory.py`` measure it: each row runs in a
fresh child process with ``MALLOC_MMAP_THRESHOLD_=65536`` (every tensor of 64 KiB or more is
mapped on its own and returned to the system when freed, so the resident set follows the live
tensors; torch's CPU allocator keeps no peak statistic), and reports its peak RSS (VmHWM, reset
through ``/proc/self/clear_refs``) minus the RSS before the operation: what the operation needs
on top of the model and the data. ``GGN set-up + product`` is what CG holds (the cached operator
and one product in flight); ``GGN product`` alone is what each product adds to the cached
operator. ``backend='jvp', cache=False`` keeps nothing between products (the parameters'
snapshot and the gradient only): each product is a forward pass with tangents and no graph,
then one forward graph that its backward pass frees.

    python benchmarks/bench_transformer.py [--repeats 7] [--batch 8] [--tokens 256]
        [--layers 6 --heads 6 --width 384 --vocab 65] [--model gpt|hf-gpt2] [--compile]
        [--no-memory] [--no-peers] [--out F.txt]

``--out`` also writes the output, headed by its command line, as a committed artifact.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from bench_products import (  # the same RSS reading and timing loop (this folder is on sys.path)
    _rss_kb,
    time_all,
)
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import hessfree
from hessfree.curvature.attention import differentiable_attention


# -- the model, the batch, the losses --------------------------------------------------------
def build(args: argparse.Namespace) -> tuple[nn.Module, nn.Module, Tensor]:
    """``(model, logits_module, ids)``: the model hessfree gets, a module giving its logits."""
    torch.manual_seed(0)
    if args.model == "gpt":
        model = hessfree.models.GPT(args.vocab, args.tokens, args.layers, args.heads,
                                    args.width).eval()
        logits = model
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=args.vocab, n_positions=args.tokens, n_embd=args.width,
                            n_layer=args.layers, n_head=args.heads, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                            attn_implementation="sdpa")
        model = GPT2LMHeadModel(config).eval()
        logits = _HFLogits(model)
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens))
    return model, logits, ids


class _HFLogits(nn.Module):
    """A Hugging Face causal LM as ``ids -> logits`` (what the peers are given)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


class _Predicting(nn.Module):
    """``ids -> logits[:, :-1]`` flattened to ``(B·(T-1), V)``: the peers' model (no shift)."""

    def __init__(self, logits: nn.Module) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, ids: Tensor) -> Tensor:
        z = self.logits(ids)
        return z[:, :-1].reshape(-1, z.shape[-1])


def torch_loss(logits: nn.Module, ids: Tensor) -> Tensor:
    """Next-token cross-entropy with torch's ``F.cross_entropy`` (what a training step does)."""
    z = logits(ids)
    return F.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]), ids[:, 1:].reshape(-1))


def trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def problem_of(model: nn.Module, args: argparse.Namespace) -> hessfree.Problem:
    if args.model == "gpt":
        return hessfree.Problem(model, hessfree.TokenCrossEntropy(shift=True))
    return hessfree.Problem(model)  # a causal LM's own loss: shifted token cross-entropy


def batch_of(ids: Tensor, args: argparse.Namespace) -> Any:
    if args.model == "gpt":
        return (ids, ids)
    return {"input_ids": ids, "labels": ids}


def flat(ts: Any) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


# -- peers -----------------------------------------------------------------------------------
def _one_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text[:160]}"


def peer_products(logits: nn.Module, ids: Tensor, v: list[Tensor], math: bool
                  ) -> dict[str, Callable[[], Tensor] | str]:
    """Curvlinops and BackPACK GGN products (callables returning flat G v), or their errors."""
    out: dict[str, Callable[[], Tensor] | str] = {}
    kernel = "math kernel" if math else "default kernel"
    scope = (lambda: sdpa_kernel(SDPBackend.MATH)) if math else nullcontext
    pred = _Predicting(logits)
    targets = ids[:, 1:].reshape(-1)
    plist = trainable(logits)
    try:
        from curvlinops import GGNLinearOperator

        with scope():
            op = GGNLinearOperator(pred, nn.CrossEntropyLoss(), plist, [(ids, targets)],
                                   check_deterministic=False)
            flat_v = flat(v)
            op @ flat_v  # fails here when the kernel has no derivative

        def curvlinops_mv() -> Tensor:
            with scope():
                return op @ flat_v

        out[f"curvlinops GGNLinearOperator @ v, {kernel}"] = curvlinops_mv
    except ImportError:
        pass
    except Exception as err:  # noqa: BLE001 -- a peer's failure is a result to print
        out[f"curvlinops GGNLinearOperator @ v, {kernel}"] = _one_line(err)
    try:
        from backpack.hessianfree.ggnvp import ggn_vector_product_from_plist

        with scope():
            z = pred(ids)
            loss = nn.functional.cross_entropy(z, targets)
            ggn_vector_product_from_plist(loss, z, plist, v)

        def backpack_mv() -> Tensor:
            with scope():
                return flat(ggn_vector_product_from_plist(loss, z, plist, v))

        out[f"BackPACK ggn_vector_product, {kernel}"] = backpack_mv
    except ImportError:
        pass
    except Exception as err:  # noqa: BLE001
        out[f"BackPACK ggn_vector_product, {kernel}"] = _one_line(err)
    return out


# -- torch.compile -----------------------------------------------------------------------------
def compiled_cases(logits: nn.Module, ids: Tensor, v: list[Tensor]
                   ) -> dict[str, Callable[[], Any]]:
    """A compiled gradient and a compiled GGN product (jvp, closed-form H_L, vjp), math kernel."""
    names = [n for n, p in logits.named_parameters() if p.requires_grad]
    prim = {n: p.detach() for n, p in logits.named_parameters() if p.requires_grad}
    tang = dict(zip(names, v))
    b, t = ids.shape
    targets = ids[:, 1:].reshape(-1)

    def f(p: dict[str, Tensor]) -> Tensor:
        z = torch.func.functional_call(logits, p, (ids,))
        return z[:, :-1].reshape(-1, z.shape[-1])

    def grad(p: dict[str, Tensor]) -> dict[str, Tensor]:
        return torch.func.grad(lambda q: F.cross_entropy(f(q), targets))(p)

    def ggn(p: dict[str, Tensor], u: dict[str, Tensor]) -> dict[str, Tensor]:
        z, jz = torch.func.jvp(f, (p,), (u,))
        prob = torch.softmax(z, -1)
        hz = (prob * jz - prob * (prob * jz).sum(-1, keepdim=True)) / z.shape[0]
        _, back = torch.func.vjp(f, p)
        return back(hz)[0]

    cg, cp = torch.compile(grad), torch.compile(ggn)
    out: dict[str, Callable[[], Any]] = {}
    for name, fn in (("gradient, torch.compile, math kernel", lambda: cg(prim)),
                     ("GGN product, torch.compile (jvp + vjp), math kernel",
                      lambda: cp(prim, tang)),
                     ("GGN product, eager (jvp + vjp), math kernel",
                      lambda: ggn(prim, tang))):
        def timed(fn: Callable[[], Any] = fn) -> Any:
            with sdpa_kernel(SDPBackend.MATH):
                return fn()

        t0 = time.perf_counter()
        timed()  # compiles
        print(f"  {name}: first call (compilation) {time.perf_counter() - t0:.1f} s",
              flush=True)
        out[name] = timed
    return out


# -- timing ------------------------------------------------------------------------------------
GRAD_DEFAULT = "gradient, torch F.cross_entropy, default kernel"
GRAD_MATH = "gradient, torch F.cross_entropy, math kernel"


def cases(model: nn.Module, logits: nn.Module, ids: Tensor, args: argparse.Namespace,
          ) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    problem = problem_of(model, args)
    params = problem.parameters()
    batch = batch_of(ids, args)
    plist = list(params.values())
    G = hessfree.GGN(problem, batch, check=False)
    assert G.backend == "double-backward", G.backend
    Gj = hessfree.GGN(problem, batch, check=False, backend="jvp")
    Gf = hessfree.GGN(problem, batch, check=False, backend="forward")
    Gl = hessfree.GGN(problem, batch, check=False, backend="jvp", cache=False)
    v = torch.randn(G.dim)
    vl = list(G.layout.split(v).values())
    ours = G @ v
    for name, op in (("jvp", Gj), ("forward", Gf), ("jvp, cache=False", Gl)):
        print(f"  backend {name!r}: relative difference to double-backward's G v "
              f"{float((op @ v - ours).norm() / ours.norm()):.1e}")

    def grad_default() -> Any:
        return torch.autograd.grad(torch_loss(logits, ids), plist)

    def grad_math() -> Any:
        with differentiable_attention():
            return grad_default()

    c: dict[str, Callable[[], Any]] = {
        GRAD_DEFAULT: grad_default,
        GRAD_MATH: grad_math,
        "gradient, hessfree Problem.value_and_grad": lambda: problem.value_and_grad(params,
                                                                                     batch),
        "GGN product, cached (double-backward)": lambda: G @ v,
        "GGN set-up (forward, gradient, the cached graphs)": lambda: hessfree.GGN(
            problem, batch, check=False),
        "GGN product, backend='jvp'": lambda: Gj @ v,
        "GGN set-up, backend='jvp'": lambda: hessfree.GGN(problem, batch, check=False,
                                                          backend="jvp"),
        "GGN product, backend='forward' (linearize)": lambda: Gf @ v,
        "GGN product, backend='jvp', cache=False (nothing kept)": lambda: Gl @ v,
    }
    failed: dict[str, str] = {}
    if not args.no_peers:
        for math in (False, True):
            for name, fn in peer_products(logits, ids, vl, math).items():
                if isinstance(fn, str):
                    failed[name] = fn
                    continue
                rel = float((fn() - ours).norm() / ours.norm())
                print(f"  {name}: relative difference to hessfree's G v {rel:.1e}")
                c[name] = fn
    if args.compile:
        c.update(compiled_cases(logits, ids, vl))
    return c, failed


# -- memory: one child process per measurement -------------------------------------------------
MEMORY = {
    "gradient-default": "gradient, default kernel (torch CE)",
    "gradient-math": "gradient, math kernel (torch CE)",
    "gradient-hessfree": "gradient, hessfree Problem.value_and_grad",
    "ggn-setup": "GGN set-up (cached operator)",
    "ggn-product": "GGN product on the cached operator",
    "ggn-setup-product": "GGN set-up + product (what CG holds)",
    "ggn-uncached": "GGN product, cache=False",
    "ggn-jvp": "GGN set-up + product, backend='jvp'",
    "ggn-forward": "GGN set-up + product, backend='forward'",
    "ggn-lean": "GGN set-up + product, backend='jvp', cache=False",
    "ggn-lean-product": "GGN product on a backend='jvp', cache=False operator",
    "curvlinops": "curvlinops matvec, math kernel",
    "backpack": "BackPACK forward + product, math kernel",
}


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_kb("VmRSS")


def _memory_child(what: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model, logits, ids = build(args)
    problem = problem_of(model, args)
    params = problem.parameters()
    batch = batch_of(ids, args)
    plist = list(params.values())
    v = torch.randn(sum(p.numel() for p in plist))
    vl = [t.view_as(p) for t, p in zip(torch.split(v, [p.numel() for p in plist]), plist)]
    held: list[Any] = []

    def run() -> Any:
        if what == "gradient-default":
            return torch.autograd.grad(torch_loss(logits, ids), plist)
        if what == "gradient-math":
            with differentiable_attention():
                return torch.autograd.grad(torch_loss(logits, ids), plist)
        if what == "gradient-hessfree":
            return problem.value_and_grad(params, batch)
        if what == "ggn-setup":
            return hessfree.GGN(problem, batch, check=False)
        if what == "ggn-product":
            return held[0] @ v
        if what == "ggn-setup-product":
            G = hessfree.GGN(problem, batch, check=False)
            return G, G @ v
        if what == "ggn-uncached":
            return hessfree.GGN(problem, batch, check=False, cache=False) @ v
        if what in ("ggn-jvp", "ggn-forward"):
            G = hessfree.GGN(problem, batch, check=False, backend=what[4:])
            return G, G @ v
        if what == "ggn-lean":
            G = hessfree.GGN(problem, batch, check=False, backend="jvp", cache=False)
            return G, G @ v
        if what == "ggn-lean-product":
            return held[0] @ v
        return held[0]()  # a peer's product

    if what == "ggn-product":
        held.append(hessfree.GGN(problem, batch, check=False))
    elif what == "ggn-lean-product":
        held.append(hessfree.GGN(problem, batch, check=False, backend="jvp", cache=False))
    elif what in ("curvlinops", "backpack"):
        fns = peer_products(logits, ids, vl, math=True)
        fn = next((f for k, f in fns.items() if k.lower().startswith(what)), None)
        if fn is None or isinstance(fn, str):
            print(json.dumps({"what": what, "peak_mb": None}))
            return
        if what == "backpack":  # its product needs the forward graph: a fresh one each time
            def fn() -> Tensor:
                return peer_products(logits, ids, vl, math=True)[
                    "BackPACK ggn_vector_product, math kernel"]()
        held.append(fn)
    run()  # one-off allocations (thread pools, kernels' workspaces) are not the steady state
    base = _reset_peak()
    run()
    print(json.dumps({"what": what, "peak_mb": (_rss_kb("VmHWM") - base) / 1024}))


def memory(args: argparse.Namespace) -> dict[str, float | None]:
    res: dict[str, float | None] = {}
    flags = ["--batch", str(args.batch), "--tokens", str(args.tokens), "--layers",
             str(args.layers), "--heads", str(args.heads), "--width", str(args.width),
             "--vocab", str(args.vocab), "--model", args.model]
    for what in MEMORY:
        if args.no_peers and what in ("curvlinops", "backpack"):
            continue
        proc = subprocess.run([sys.executable, __file__, "--memory-child", what, *flags],
                              capture_output=True, text=True,
                              env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
        if proc.returncode:
            print(f"  memory of {what} failed: {proc.stderr.strip().splitlines()[-1:]}")
            res[what] = None
            continue
        res[what] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]
    return res


def _table(rows: list[tuple[str, str, str, str]], heads: tuple[str, str, str, str]) -> None:
    w = max(len(r[0]) for r in [heads, *rows])
    print(f"| {heads[0]:{w}s} | {heads[1]:>9s} | {heads[2]:>14s} | {heads[3]:>14s} |")
    print(f"|{'-' * (w + 2)}|{'-' * 11}|{'-' * 16}|{'-' * 16}|")
    for r in rows:
        print(f"| {r[0]:{w}s} | {r[1]:>9s} | {r[2]:>14s} | {r[3]:>14s} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--model", choices=("gpt", "hf-gpt2"), default="gpt")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--memory-child", default=None)
    ap.add_argument("--out", default=None, help="also write the output to this file")
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args)
        return
    if not args.out:
        report(args)
        return
    buf = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buf)):
        report(args)
    with open(args.out, "w") as f:
        f.write(f"Command: `python benchmarks/bench_transformer.py {' '.join(sys.argv[1:])}`"
                f"\n\n{buf.getvalue()}")


class _Tee(io.TextIOBase):
    """Writes to two streams (the terminal and the saved output)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def report(args: argparse.Namespace) -> None:
    """The header line, then the time and memory tables as asked."""
    model, logits, ids = build(args)
    n = sum(p.numel() for p in trainable(model))
    print(f"{args.model}: {args.layers} layers, {args.heads} heads, width {args.width}, "
          f"vocabulary {args.vocab}, {n:,} parameters; B x T = {args.batch} x {args.tokens}, "
          f"float32; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; median of "
          f"{args.repeats}")
    if not args.no_time:
        timing(model, logits, ids, args)
    if not args.no_memory:
        memory_table(args)


def timing(model: nn.Module, logits: nn.Module, ids: Tensor, args: argparse.Namespace) -> None:
    """The time table (and the peers' failures)."""
    fns, failed = cases(model, logits, ids, args)
    t = time_all(fns, args.repeats)
    d, m = t[GRAD_DEFAULT], t[GRAD_MATH]
    comp = t.get("gradient, torch.compile, math kernel")
    heads = ("operation", "ms", "x grad default", "x grad math")
    rows = [(k, f"{s * 1e3:.1f}", f"{s / d:.2f}", f"{s / m:.2f}") for k, s in t.items()]
    rows += [(k, "fails", "", "") for k in failed]
    _table(rows, heads)
    if comp is not None:
        for k, s in t.items():
            if "compile" in k and k != "gradient, torch.compile, math kernel":
                print(f"{k}: {s / comp:.2f} compiled gradients")
    for k, err in failed.items():
        print(f"{k} fails: {err}")


def memory_table(args: argparse.Namespace) -> None:
    """The memory table, one child process per row."""
    mem = memory(args)
    ref = {k: mem.get(k) for k in ("gradient-default", "gradient-math")}
    rows = []
    for k, mb in mem.items():
        ratio = ["" if mb is None or not r else f"{mb / r:.2f}" for r in ref.values()]
        rows.append((MEMORY[k], "fails" if mb is None else f"{mb:.1f}", *ratio))
    print()
    _table(rows, ("peak memory over model + data", "MiB", "x grad default",
                  "x grad math"))

if __name__ == "__main__":
    main()
