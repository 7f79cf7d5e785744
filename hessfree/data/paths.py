"""Where data files live: the data root and candidate folders.

The root comes from an argument or the ``HESSFREE_DATA`` environment variable; nothing in the
package names a machine path.
"""

from __future__ import annotations

import os
from pathlib import Path

from hessfree.errors import InputError

ENV_VAR = "HESSFREE_DATA"
"""Environment variable naming the data root when no ``root`` argument is given."""


def data_root(root: str | os.PathLike | None, caller: str) -> Path:
    """Resolve the data root from ``root`` or ``$HESSFREE_DATA``.

    Args:
        root: an explicit folder, or ``None`` to use the environment variable.
        caller: the public function asking (named in the error message).

    Returns:
        The root folder as a ``Path`` (not checked for existence).

    Raises:
        ValueError: if ``root`` is ``None`` and ``HESSFREE_DATA`` is unset or empty.
    """
    if root is None:
        env = os.environ.get(ENV_VAR, "")
        if not env:
            raise InputError(
                f"{caller}: no data root given; pass root=... or set the {ENV_VAR} "
                "environment variable to the folder holding the data"
            )
        root = env
    return Path(root).expanduser()


def candidates(root: Path, subdir: str, names: tuple[str, ...]) -> list[Path]:
    """Paths to try, in order: each name in ``root`` and then in ``root/subdir``."""
    return [folder / name for folder in (root, root / subdir) for name in names]


def first_existing(paths: list[Path]) -> Path | None:
    """The first path that is an existing file, or ``None``."""
    for path in paths:
        if path.is_file():
            return path
    return None
