"""Per-update costs of the built-in experiments (:mod:`hessfree.runs.costs`).

Written by ``python benchmarks/plan_costs.py``; do not edit by hand.
"""

COSTS: dict = {"measured": {}, "experiments": {}}
