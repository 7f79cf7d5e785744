"""Thin adapters from hessfree to other tools; the core never imports them.

The tools are optional extras of the package.

* :mod:`hessfree.integrations.laplace` — a laplace-torch curvature backend (``backend=``). It
  imports its tool at import time and is imported only by name
  (``import hessfree.integrations.laplace``).
* :mod:`hessfree.integrations.huggingface` — ``transformers`` models and their dict batches as
  :class:`~hessfree.Problem` models (``pip install "hessfree[huggingface]"``). It imports
  nothing of its tool until one of its models is seen, so it is imported here, with
  ``hessfree``: that registers its adapter with the core (:mod:`hessfree.curvature.adapters`)
  and ``hessfree.Problem(model)`` recognises a Hugging Face model with no import of yours.
* :mod:`hessfree.integrations.optim` — HF behind the ``torch.optim.Optimizer`` interface, for
  training loops (plain, PyTorch Lightning, Accelerate); it needs only torch.
"""

from hessfree.integrations import huggingface

__all__ = ["huggingface"]
