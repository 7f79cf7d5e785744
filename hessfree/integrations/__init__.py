"""Thin adapters of hessfree to other packages; their packages are optional extras.

The core never imports this subpackage. Importing it registers each adapter with the core
(:mod:`hessfree.curvature.adapters`) without importing the adapted package, which is imported
only once one of its models is seen.

- :mod:`hessfree.integrations.huggingface`: ``transformers`` models and their dict batches
  (``pip install "hessfree[huggingface]"``).
"""

from hessfree.integrations import huggingface

__all__ = ["huggingface"]
