"""The small data set of the training-loop examples: a learnable labelling, float64.

Shared by ``hf_with_lightning.py`` and ``hf_with_accelerate.py`` (imported from beside them).
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def make_data(n: int = 256, inputs: int = 10, classes: int = 3, seed: int = 0
              ) -> TensorDataset:
    """``n`` Gaussian inputs labelled by the argmax of a random linear map (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, inputs, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(inputs, classes, generator=g, dtype=torch.float64)).argmax(1)
    return TensorDataset(x, y)
