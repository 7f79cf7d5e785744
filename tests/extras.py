"""Optional extras the integration tests need (laplace-torch, kronfluence, curvlinops, BackPACK,
transformers).

``require(name)`` imports the package. In CI (``CI`` set) a missing extra is an error: CI
installs every extra (``make extras``). Elsewhere the test is skipped with a line that says
what is missing and how to install it, so a skip is never silent.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

INSTALL = "install the extras with `make extras` (see the README, 'Curvature in your research')"


def require(name: str) -> ModuleType:
    """Import ``name``; fail in CI, skip loudly elsewhere when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        if os.environ.get("CI"):
            raise AssertionError(f"CI must install the extra {name!r}: {err}") from err
        pytest.skip(f"optional extra {name!r} is not installed ({err}); {INSTALL}",
                    allow_module_level=True)
