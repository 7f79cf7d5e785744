"""The ``hessfree`` command line (also ``python -m hessfree``).

``list``, ``train``, ``compare``, ``plot``, ``report``, ``reproduce``, ``demo``,
``check-products``, ``artifact`` and ``verify``. Bad input — an unknown
experiment, optimizer or setting, a value of the wrong type or out of range, a file that is not
what it should be — and faults the run reports cleanly (a full disk) get one line on stderr,
exit code 2 and no traceback. Anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hessfree._version import __version__
from hessfree.errors import InputError, InputTypeError, RunError

__all__ = ["build_parser", "main", "reproduce_command"]

#: exit code of a user error or a cleanly reported fault
EXIT_USAGE = 2


class UsageError(InputError):
    """A user error found by the command line itself."""


class _Help(argparse.HelpFormatter):
    """Help texts that end with the option's default, where it has a useful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS \
            or default == []  # 0 is a default worth showing (``0 in (False,)`` is True)
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", default="auto", metavar="N|auto",
                   help="intra-op threads of the tensor operations: a number, or auto = "
                        "$OMP_NUM_THREADS when set, else the cores the load average leaves "
                        "free (an idle 2-core machine: 2, a busy one: 1)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", nargs="?", default=None,
                   help="experiment name (see `hessfree list`); optional with --resume")
    p.add_argument("--optimizer", help="an optimizer family of `hessfree list` (default hf)")
    p.add_argument("--steps", type=_int("--steps"), help="stop after this many outer steps")
    p.add_argument("--seconds", type=_float("--seconds"),
                   help="wall-clock seconds for the whole run from the training loop's start, "
                        "evaluations and checkpoints included (it ends within max(1.1 S, S + 5))")
    p.add_argument("--budget", type=_float("--budget"),
                   help="stop after this many gradient-equivalents of the training set")
    p.add_argument("--seed", type=_int("--seed"), help="seed of data, initialization and "
                   "minibatches (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", help="float32 or float64 (default float32)")
    p.add_argument("--out", help="folder for run directories (default runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the experiment (repeatable)")
    p.add_argument("--eval-every", type=_int("--eval-every"),
                   help="evaluate every N steps (default 10)")
    p.add_argument("--checkpoint-every", type=_int("--checkpoint-every"),
                   help="checkpoint every N steps (default 50)")
    p.add_argument("--checkpoint-minutes", type=_float("--checkpoint-minutes"), metavar="M",
                   help="also checkpoint after a step ending M minutes of wall-clock after the "
                        "last checkpoint, whichever is due first (default 10)")
    p.add_argument("--save-quadratics-every", type=_int("--save-quadratics-every"),
                   metavar="K", help="HF: save the step's quadratic every K steps")
    p.add_argument("--resume", metavar="PATH", help="continue the run in PATH")
    p.add_argument("--name", help="the run folder's name (default <optimizer>-<time>)")
    p.add_argument("--timeout", type=_float("--timeout"),
                   help="under torchrun: seconds a rank waits for the others (default 600)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads_arg(p)


def _reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="table1 (deep autoencoders) or table5 (RNN tasks)")
    p.add_argument("--fraction", type=_float("--fraction"), required=True,
                   help="fraction of the papers' budget, in (0, 1]")
    p.add_argument("--experiments", type=_list(str),
                   help="comma-separated subset of the table's experiments (default: all)")
    p.add_argument("--optimizers", type=_list(str),
                   help="comma-separated subset of the table's optimizers, or any registered "
                        "family with a grid role (default: the table's)")
    p.add_argument("--mu", type=_list(float),
                   help="μ_max (table1) or μ0 (table5) values (default: the paper's)")
    p.add_argument("--lrs", type=_list(float),
                   help="learning-rate grid (default: the paper's, table1 0.05 ... 0.0001)")
    p.add_argument("--device", default="cpu", help="where every run trains: cpu or cuda")
    p.add_argument("--dtype", default="float32", help="float32 or float64")
    p.add_argument("--jobs", type=_int("--jobs"), default=1,
                   help="runs at a time (worker processes running the same path)")
    p.add_argument("--resume", action="store_true",
                   help="continue unfinished runs in --out, skip finished ones")
    p.add_argument("--out", default="reproduce", help="folder for the runs and the summary")
    p.add_argument("--summary-only", action="store_true",
                   help="run nothing: summarize the runs already in --out, finished or not")
    p.add_argument("--seed", type=_int("--seed"), default=0,
                   help="the seed of every run (with --seeds N: the first)")
    p.add_argument("--seeds", type=_seed_list,
                   help="seeds per cell: a count N (--seed, --seed+1, ...) or a comma-separated "
                        "list; each cell runs once per seed and the summary gives mean and spread")
    p.add_argument("--mu-stages", choices=("scaled", "unscaled"), default="scaled",
                   help="scale Eq. 5's 250-update stages and the RNN schedule's 1000 warm "
                        "updates with --fraction (default, so μ reaches μ_max) or keep them")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for every run (repeatable)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line over the plan (the plan is still printed)")
    _threads_arg(p)


def _seed_list(text: str) -> int | list[int]:
    """``"3"``: three seeds; ``"0,4,7"``: those seeds."""
    try:
        if "," not in text:
            return int(text)
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma-separated list of seeds, "
                                         f"got {text!r}") from None


def _list(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") \
                from None
    return parse


def _scalar(kind: type, expected: str) -> Any:
    """An argparse ``type`` for the option ``name``: ``kind(text)``, else "expected ..."."""
    def typed(name: str) -> Any:
        def parse(text: str) -> Any:
            try:
                return kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        parse.__name__ = name
        return parse
    return typed


_int = _scalar(int, "an integer")
_float = _scalar(float, "a number")


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line and exit code 2; help texts with their defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # noqa: D102
        raise UsageError(message)


def _evidence_args(sub: Any) -> None:
    """The ``artifact`` and ``verify`` commands."""
    p = sub.add_parser("artifact", help="a small committed artifact (tables, no parameters) of "
                       "a folder of runs, with the command that made them")
    p.add_argument("source", help="the folder the command wrote (it may not exist yet)")
    p.add_argument("--out", required=True, help="the artifact folder")
    p.add_argument("--command", dest="made_by", help="the exact command that wrote SOURCE "
                   "(default: the command of the artifact already in --out)")
    p.add_argument("--note", help="what a reader should know about the runs (default: the "
                   "existing artifact's)")
    p.add_argument("--max-rows", type=_int("--max-rows"), default=1000,
                   help="runs with more updates keep step counts, not the step table")
    p = sub.add_parser("verify", help="recompute every published number from the committed "
                       "artifacts (a registry of claims)")
    p.add_argument("--root", default=".", help="the repository (default: here)")
    p.add_argument("--claims", default=None,
                   help="the registry file (default ROOT/benchmarks/claims.py)")
    p.add_argument("--write", action="store_true",
                   help="rewrite the generated blocks and redraw the figures first")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hessfree`` command."""
    parser = _Parser(
        prog="hessfree",
        description="Hessian-free optimization and momentum methods: train on the classic "
        "benchmarks, compare CG and NAG on saved quadratics, plot and report.")
    parser.add_argument("--version", action="version", version=f"hessfree {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("list", help="experiments and optimizers")
    _train_args(sub.add_parser("train", help="train one optimizer on one experiment"))
    p = sub.add_parser("compare", help="CG vs NAG (CM, GD) on a saved quadratic")
    p.add_argument("quadratic", help="FILE.h5[:group], e.g. results.h5:quadratics/40 (default "
                   "group: the middle one saved)")
    p.add_argument("--iters", type=_int("--iters"), default=250,
                   help="curvature products per method")
    p.add_argument("--plot", metavar="IMAGE", help="write the curves (.png, .pdf or .svg)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _threads_arg(p)
    p.add_argument("--save", metavar="JSON", help="write q(x_k) of every method as JSON")
    p = sub.add_parser("plot", help="several runs on one figure")
    p.add_argument("results", nargs="+", help="results.h5 files")
    p.add_argument("--x", default="steps", choices=["steps", "seconds", "grad-equiv"],
                   help="the x axis (seconds: optimizer time of the updates)")
    p.add_argument("--y", default="train_error",
                   choices=["train_error", "test_error", "loss", "lambda", "cg_iters"],
                   help="the y axis")
    p.add_argument("--out", default="fig.png", help="the image (.png, .pdf or .svg)")
    p = sub.add_parser("report", help="final errors next to the papers' numbers")
    p.add_argument("results", nargs="+", help="results.h5 files")
    _reproduce_args(sub.add_parser(
        "reproduce", help="Table 1 or Table 5 of Sutskever et al. (2013) at a fraction of the "
        "budget"))
    p = sub.add_parser("demo", help="HF, the momentum-like HF and NAG at equal cost, then CG vs "
                       "NAG on a saved quadratic (README, 'Set-up': its measured time)")
    p.add_argument("--budget", type=_float("--budget"), default=400.0,
                   help="gradient-equivalents per optimizer")
    p.add_argument("--out", default="runs", help="folder for the demo-<time> folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=_int("--threads"), default=1,
                   help="torch threads (default 1: the same digits run to run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of curves-small for every run (repeatable)")
    p = sub.add_parser("check-products", help="GGN products on a small autoencoder, checked "
                       "against a dense matrix")
    _threads_arg(p)
    _evidence_args(sub)
    return parser


def _overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set: expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise UsageError(f"--set: expected KEY=VALUE, got {item!r}")
        if k.strip() in out and out[k.strip()] != v.strip():
            raise UsageError(f"--set {k.strip()}: given twice ({out[k.strip()]!r} and "
                             f"{v.strip()!r})")
        out[k.strip()] = v.strip()
    return out


def cmd_list(args: argparse.Namespace) -> int:
    """Print the experiments and optimizers."""
    from hessfree.runs import experiments, families

    print("experiments:")
    for name in experiments.names():
        print(f"  {name:22s} {experiments.get(name).description}")
    print("optimizers: " + ", ".join(families.names()))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) and print where the results went."""
    from hessfree.runs import experiments
    from hessfree.runs.trainer import RunSpec, resume, train

    overrides = _overrides(args.set)
    if args.resume:
        threads = _thread_count(args.threads)  # auto: the run's own threads are kept
        path = resume(args.resume, steps=args.steps, seconds=args.seconds, budget=args.budget,
                      quiet=args.quiet, experiment=args.experiment, optimizer=args.optimizer,
                      seed=args.seed, dtype=args.dtype, device=args.device,
                      eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                      checkpoint_minutes=args.checkpoint_minutes,
                      save_quadratics_every=args.save_quadratics_every, out=args.out,
                      overrides=overrides, timeout=args.timeout,
                      threads=None if threads == "auto" else threads)
        if _rank() == 0:
            print(path)
        return 0
    if args.experiment is None:
        raise UsageError("experiment: required (see `hessfree list`), unless --resume is given")
    if args.experiment not in experiments.names():
        raise UsageError(f"experiment: unknown {args.experiment!r}; valid: "
                         f"{', '.join(experiments.names())}")
    given = {k: getattr(args, k) for k in ("optimizer", "seed", "device", "dtype", "out",
                                          "eval_every", "checkpoint_every", "checkpoint_minutes",
                                          "name", "timeout")
             if getattr(args, k) is not None}
    spec = RunSpec(experiment=args.experiment, steps=args.steps, seconds=args.seconds,
                   budget=args.budget, overrides=overrides,
                   save_quadratics_every=args.save_quadratics_every, quiet=args.quiet,
                   threads=_thread_count(args.threads), **given)
    path = train(spec)
    if _rank() == 0:
        print(path)
    return 0


def _thread_count(text: str) -> int | str:
    """``--threads``: ``"auto"`` or a positive integer (checked by the run)."""
    from hessfree.runs.threads import AUTO, choose

    return AUTO if text.strip().lower() == AUTO else choose(text).n


def _our_threads(text: str) -> Any:
    """This process's threads for a command that is not a run (set here: the process is ours)."""
    from hessfree.runs.threads import choose, using

    return using(choose(text).n)


def _rank() -> int:
    from hessfree.distributed import env_world

    return env_world()[0]


def _split_quadratic_arg(arg: str) -> tuple[str, str | None]:
    if ":" in arg and not Path(arg).exists():
        f, g = arg.rsplit(":", 1)
        return f, g
    return arg, None


def cmd_compare(args: argparse.Namespace) -> int:
    """CG vs NAG/CM/GD on a saved quadratic: the table and optionally the plot."""
    import h5py

    from hessfree import quadratic
    from hessfree._files import check_image_output, write_text
    from hessfree._h5 import open_file
    from hessfree.runs import experiments

    path, group = _split_quadratic_arg(args.quadratic)
    if not Path(path).is_file():
        raise UsageError(f"quadratic: no such file {path!r}")
    if args.plot:
        check_image_output(args.plot, [path], "--plot")
    if args.save and (Path(args.save).suffix != ".json" or Path(args.save).resolve() ==
                      Path(path).resolve()):
        raise UsageError(f"--save: expected a new .json file, got {args.save!r}")
    _check_int(args.iters, "--iters", 1)
    with open_file(path, "r", what="quadratic file") as f:
        saved = sorted(f["quadratics"].keys(), key=lambda k: (len(k), k)) \
            if isinstance(f.get("quadratics"), h5py.Group) else []
        if group is None:
            if not saved and f.attrs.get("format") != quadratic.io.FORMAT:
                raise UsageError(f"quadratic: {path} holds no saved quadratic (train with "
                                 "--save-quadratics-every K to save some)")
            group = f"quadratics/{saved[len(saved) // 2]}" if saved else "/"
        node = f.get(group)
        if not isinstance(node, h5py.Group) or "schema_version" not in node.attrs:
            have = ", ".join(f"quadratics/{k}" for k in saved) or "none"
            raise UsageError(f"quadratic: {path} has no quadratic at {group!r}; saved "
                             f"quadratics: {have}")
        q = quadratic.Quadratic.load(node, build_model=experiments.build_model)
    from hessfree.runs.progress import products

    expected = args.iters * (2 + 2 * len(quadratic.MU_GRID)) + 30  # CG, GD, NAG/CM per μ, L
    with _our_threads(args.threads), products(q, expected, "compare", args.quiet):
        result = quadratic.compare(q, iters=args.iters)
    print(f"{path}:{group}")
    print(result.format())
    if args.save:
        record = {"source": f"{Path(path).name}:{group}", **result.to_dict()}
        write_text(args.save, json.dumps(record, indent=1) + "\n")
        print(args.save)
    if args.plot:
        quadratic.plot(result, args.plot)
        print(args.plot)
    return 0


def _check_int(value: int, name: str, minimum: int) -> None:
    if value < minimum:
        raise UsageError(f"{name}: expected an integer >= {minimum}, got {value}")


def _results_files(paths: list[str]) -> None:
    for r in paths:
        if not Path(r).is_file():
            raise UsageError(f"results: no such file {r!r}")


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot runs on one figure."""
    from hessfree._files import check_image_output
    from hessfree.runs.plots import plot_runs

    _results_files(args.results)
    check_image_output(args.out, args.results, "--out")
    print(plot_runs(args.results, x=args.x, y=args.y, out=args.out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Final errors next to the papers' numbers."""
    from hessfree.runs.report import report

    _results_files(args.results)
    print(report(args.results))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run a table's protocol at a fraction of its budget; print the summary."""
    from hessfree.runs.reproduce import reproduce

    md = reproduce(args.table, args.fraction, out=args.out, experiments_=args.experiments,
                   optimizers=args.optimizers, mus=args.mu, lrs=args.lrs, device=args.device,
                   dtype=args.dtype, jobs=args.jobs, resume=args.resume, seed=args.seed,
                   overrides=_overrides(args.set), summary_only=args.summary_only,
                   seeds=args.seeds, mu_stages=args.mu_stages,
                   threads=_thread_count(args.threads), quiet=args.quiet)
    print(md.read_text())
    print(md)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main demo."""
    from hessfree.runs.demo import run_demo

    folder = run_demo(args.out, budget=args.budget, quiet=args.quiet,
                      overrides=_overrides(args.set), threads=args.threads)
    print(folder)
    return 0


def cmd_check_products(args: argparse.Namespace) -> int:
    """The curvature-product check against a dense matrix."""
    from hessfree.runs.check_products import run_demo

    with _our_threads(args.threads):
        return run_demo()


def reproduce_command(command: str) -> tuple[argparse.Namespace, list[Any]] | None:
    """The parsed arguments and jobs of a ``hessfree reproduce`` command line, else None.

    Leading ``VAR=value`` words and ``nice [-n N]`` are skipped, as a shell would run them.
    """
    import shlex

    from hessfree.runs.reproduce import plan

    words = shlex.split(command)
    while words and ("=" in words[0] and not words[0].startswith("-") or words[0] == "nice"):
        words = words[3:] if words[:2] == ["nice", "-n"] else words[1:]
    if len(words) < 2 or Path(words[0]).name != "hessfree" or words[1] != "reproduce":
        return None
    args = build_parser().parse_args(words[1:])
    return args, plan(args.table, args.fraction, experiments_=args.experiments,
                      optimizers=args.optimizers, mus=args.mu, lrs=args.lrs,
                      overrides=_overrides(args.set), seeds=args.seeds, seed=args.seed,
                      mu_stages=args.mu_stages)


def cmd_artifact(args: argparse.Namespace) -> int:
    """Write the artifact of a folder of runs."""
    from hessfree.runs.evidence import ARTIFACT_FILE, build

    command = args.made_by
    index = Path(args.out) / ARTIFACT_FILE
    if command is None and index.is_file():
        command = json.loads(index.read_text()).get("command")
    planned = reproduce_command(command) if command else None
    print(build(args.source, args.out, command, note=args.note, max_rows=args.max_rows,
                plan=planned))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every registered claim, block, figure and scanned section; 1 if any fails."""
    from hessfree.runs.verify import load_registry, verify

    root = Path(args.root)
    registry = load_registry(args.claims or root / "benchmarks" / "claims.py")
    outcomes = verify(root, registry, write=args.write)
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"FAIL {o.kind} {o.id}: {o.detail}")
    kinds = sorted({o.kind for o in outcomes})
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} checks hold ("
          + ", ".join(f"{sum(o.kind == k for o in outcomes)} {k}" for k in kinds) + ")")
    return 1 if failed else 0


COMMANDS = {"list": cmd_list, "train": cmd_train, "compare": cmd_compare, "plot": cmd_plot,
            "report": cmd_report, "reproduce": cmd_reproduce, "demo": cmd_demo,
            "check-products": cmd_check_products, "artifact": cmd_artifact,
            "verify": cmd_verify}


def _message(err: BaseException) -> str:
    """One line: the error's own text (a KeyError's key unquoted), never its repr."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and err.errno is not None:
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror or errno.errorcode.get(err.errno, '')}"
    else:
        text = str(err)
    return " ".join(text.split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hessfree`` console script."""
    parser = build_parser()
    raw = sys.argv[1:] if argv is None else list(argv)
    command = raw[0] if raw and not str(raw[0]).startswith("-") else "?"
    try:
        args = parser.parse_args(argv)
        command = args.command or command
        if args.command is None:
            parser.print_help()
            return 0
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return COMMANDS[args.command](args)
    except (InputError, InputTypeError, RunError, OSError) as err:
        print(f"hessfree {command}: error: {_message(err)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        started = sys.modules.get("hessfree.distributed")  # imported by a command that ran
        if started is not None:
            started.shutdown()  # a process group the command started (torchrun)


if __name__ == "__main__":
    sys.exit(main())
