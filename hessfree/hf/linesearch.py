"""Deprecated: the Armijo search is in :mod:`hessfree.hf.stepsize`, HF's one step-size module.

``hessfree.hf.linesearch.armijo`` and ``.LineSearchResult`` still read, with a
``DeprecationWarning``; import them from :mod:`hessfree.hf.stepsize` (or :mod:`hessfree.hf`).
"""

from __future__ import annotations

import warnings
from typing import Any

from hessfree.hf import stepsize

__all__: list[str] = []
_MOVED = ("LineSearchResult", "armijo")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"hessfree.hf.linesearch.{name} moved to hessfree.hf.stepsize.{name}; the "
                      "old module goes in the next release", DeprecationWarning, stacklevel=2)
        return getattr(stepsize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
