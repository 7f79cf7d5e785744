"""The ``hessfree`` command line (also ``python -m hessfree``).

``list``, ``train``, ``compare``, ``plot``, ``report`` and ``demo``. Bad input (unknown
experiment, optimizer or setting, a value of the wrong type, an unreadable file) gets one line on
stderr naming the valid choices, exit code 2, and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hessfree._version import __version__

__all__ = ["build_parser", "main"]


class UsageError(Exception):
    """A user error: printed as one line, exit code 2."""


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment name (see `hessfree list`)")
    p.add_argument("--optimizer", default="hf", help="hf, hf-momentum, nag, cm or sgd")
    p.add_argument("--steps", type=int, help="stop after this many outer steps")
    p.add_argument("--seconds", type=float, help="stop after this much optimizer time")
    p.add_argument("--budget", type=float,
                   help="stop after this many gradient-equivalents of the training set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", help="float32 or float64")
    p.add_argument("--out", default="runs", help="folder for run directories")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the experiment (repeatable)")
    p.add_argument("--eval-every", type=int, default=10, help="evaluate every N steps")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--save-quadratics-every", type=int, metavar="K",
                   help="HF: save the step's quadratic every K steps into the results file")
    p.add_argument("--resume", metavar="PATH", help="continue the run in PATH")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hessfree`` command."""
    parser = argparse.ArgumentParser(
        prog="hessfree", description="Hessian-free optimization and momentum methods: train on "
        "the classic benchmarks, compare CG and NAG on saved quadratics, plot and report.")
    parser.add_argument("--version", action="version", version=f"hessfree {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", help="experiments and optimizers")
    _train_args(sub.add_parser("train", help="train one optimizer on one experiment"))
    p = sub.add_parser("compare", help="CG vs NAG (CM, GD) on a saved quadratic")
    p.add_argument("quadratic", help="FILE.h5[:group], e.g. results.h5:quadratics/40")
    p.add_argument("--iters", type=int, default=250)
    p.add_argument("--plot", metavar="PNG")
    p = sub.add_parser("plot", help="several runs on one figure")
    p.add_argument("results", nargs="+")
    p.add_argument("--x", default="steps", choices=["steps", "seconds", "grad-equiv"])
    p.add_argument("--y", default="train_error",
                   choices=["train_error", "test_error", "loss", "lambda", "cg_iters"])
    p.add_argument("--out", default="fig.png")
    p = sub.add_parser("report", help="final errors next to the papers' numbers")
    p.add_argument("results", nargs="+")
    sub.add_parser("demo", help="GGN products on a small autoencoder, checked against a dense "
                                "matrix")
    return parser


def _overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_list(args: argparse.Namespace) -> int:
    """Print the experiments and optimizers."""
    from hessfree.runs import experiments

    print("experiments:")
    for name in experiments.names():
        print(f"  {name:22s} {experiments.get(name).description}")
    print("optimizers: " + ", ".join(experiments.OPTIMIZERS))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train and print where the results went."""
    from hessfree.runs import experiments
    from hessfree.runs.trainer import RunSpec, train

    if not args.resume:
        if args.experiment not in experiments.names():
            raise UsageError(f"experiment: unknown {args.experiment!r}; valid: "
                             f"{', '.join(experiments.names())}")
        if args.optimizer not in experiments.OPTIMIZERS:
            raise UsageError(f"--optimizer: unknown {args.optimizer!r}; valid: "
                             f"{', '.join(experiments.OPTIMIZERS)}")
    spec = RunSpec(experiment=args.experiment, optimizer=args.optimizer, steps=args.steps,
                   seconds=args.seconds, budget=args.budget, seed=args.seed, device=args.device,
                   dtype=args.dtype, out=args.out, overrides=_overrides(args.set),
                   eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                   save_quadratics_every=args.save_quadratics_every, quiet=args.quiet,
                   resume=args.resume)
    path = train(spec)
    print(path)
    return 0


def _split_quadratic_arg(arg: str) -> tuple[str, str | None]:
    if ":" in arg and not Path(arg).exists():
        f, g = arg.rsplit(":", 1)
        return f, g
    return arg, None


def cmd_compare(args: argparse.Namespace) -> int:
    """CG vs NAG/CM/GD on a saved quadratic: the table and optionally the plot."""
    import h5py

    from hessfree import quadratic
    from hessfree.runs import experiments

    path, group = _split_quadratic_arg(args.quadratic)
    if not Path(path).is_file():
        raise UsageError(f"quadratic: no such file {path!r}")
    with h5py.File(path, "r") as f:
        if group is None:
            groups = sorted(f["quadratics"].keys(), key=int) if "quadratics" in f else []
            group = f"quadratics/{groups[len(groups) // 2]}" if groups else "/"
        q = quadratic.Quadratic.load(f[group], build_model=experiments.build_model)
    result = quadratic.compare(q, iters=args.iters)
    print(f"{path}:{group}")
    print(result.format())
    if args.plot:
        quadratic.plot(result, args.plot)
        print(args.plot)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot runs on one figure."""
    from hessfree.runs.plots import plot_runs

    for r in args.results:
        if not Path(r).is_file():
            raise UsageError(f"results: no such file {r!r}")
    print(plot_runs(args.results, x=args.x, y=args.y, out=args.out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Final errors next to the papers' numbers."""
    from hessfree.runs.report import report

    for r in args.results:
        if not Path(r).is_file():
            raise UsageError(f"results: no such file {r!r}")
    print(report(args.results))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The curvature-product demo."""
    from hessfree.runs.demo import run_demo

    return run_demo()


COMMANDS = {"list": cmd_list, "train": cmd_train, "compare": cmd_compare, "plot": cmd_plot,
            "report": cmd_report, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hessfree`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, KeyError, OSError) as err:
        msg = str(err).strip("'\"") or type(err).__name__
        print(f"hessfree {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
