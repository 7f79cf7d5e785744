"""hessfree: Hessian-free optimization and momentum methods in PyTorch.

The public API is re-exported here; see the README for a tour.
"""

import os as _os
import sys as _sys

# scipy/numpy's OpenBLAS threads spin between calls and take the cores from torch, which does the
# heavy work here: measured 2.6x slower CG/Lanczos through to_scipy() on 2 cores
# (benchmarks/RESULTS.md). Default them to one thread unless the user decided otherwise.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from hessfree import cg, models, momentum, quadratic, vectors  # noqa: E402
from hessfree.curvature import (  # noqa: E402
    GGN,
    CurvatureOperator,
    DampedOperator,
    EmpiricalFisher,
    Hessian,
    Problem,
    losses,
)
from hessfree.hf import HessianFree, HFConfig, StepStats  # noqa: E402
from hessfree.momentum import (  # noqa: E402
    CM,
    NAG,
    SGD,
    ConstantSchedule,
    RNNSchedule,
    SutskeverSchedule,
)
from hessfree.quadratic import Quadratic  # noqa: E402

__version__ = "0.1.0"

_LAZY = ("data", "hf", "runs")  # imported on first use (``hessfree.data.curves(...)``)


def __getattr__(name: str) -> object:
    """Import the ``data``, ``hf`` and ``runs`` subpackages on first attribute access."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"hessfree.{name}")
    raise AttributeError(f"module 'hessfree' has no attribute {name!r}")

__all__ = [
    "CM",
    "GGN",
    "NAG",
    "SGD",
    "ConstantSchedule",
    "CurvatureOperator",
    "DampedOperator",
    "EmpiricalFisher",
    "HFConfig",
    "Hessian",
    "HessianFree",
    "Problem",
    "Quadratic",
    "RNNSchedule",
    "StepStats",
    "SutskeverSchedule",
    "__version__",
    "cg",
    "data",
    "losses",
    "models",
    "momentum",
    "quadratic",
    "vectors",
]
