"""The ``hessfree`` command line (filled in by the runs issue)."""

from __future__ import annotations

import argparse
import sys

import hessfree


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hessfree`` command."""
    parser = argparse.ArgumentParser(prog="hessfree", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hessfree {hessfree.__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="GGN products on a small autoencoder, checked against a dense matrix")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hessfree`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        from hessfree.runs.demo import run_demo

        return run_demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
