"""Thin adapters from hessfree to other tools; the core never imports them.

Each module here imports its tool at import time and is imported only by name
(``import hessfree.integrations.laplace``); the tools are optional extras of the package.

* :mod:`hessfree.integrations.laplace` — a laplace-torch curvature backend (``backend=``).
"""
