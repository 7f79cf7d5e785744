"""``python -m hessfree``: the command line."""

from hessfree.runs.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
