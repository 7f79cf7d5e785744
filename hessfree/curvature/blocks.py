"""Blocks of the curvature: parameters chosen by module name or pattern, and their slices.

``param_filter`` (an argument of every curvature operator, and of :func:`restrict`) chooses
the parameters an operator is taken with respect to; the others are held fixed. The operator
is then the diagonal block ``A[S, S]`` of the full matrix for the chosen set ``S``, and it is
computed as such: the forward pass differentiates only the chosen parameters, so a product
costs the backward passes the block needs, never a full product followed by a selection.

A filter is one of:

* a module name (``"encoder.0"``: that module's own parameters and those of its submodules),
* a parameter name or a shell pattern of names (``"*.bias"``, ``"layers.1?.weight"``),
* a list of those (a parameter is chosen when any entry chooses it),
* a callable ``name -> bool``.

:func:`module_groups` splits the flat parameter vector into the slices of each module (or
each parameter), which :func:`hessfree.curvature.report` uses for per-module statistics.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from hessfree.curvature.problem import Problem, declares_hidden
from hessfree.errors import InputError, InputTypeError

__all__ = ["FrozenModel", "ParamFilter", "block_problem", "module_groups", "module_of",
           "restrict", "select_params"]

ParamFilter = str | Sequence[str] | Callable[[str], bool]


def module_of(name: str) -> str:
    """The module that owns the parameter ``name`` (``""`` for the root module)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def _chooses(pattern: str, name: str) -> bool:
    return (fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")
            or (pattern == "" and "." not in name))


def _predicate(param_filter: Any) -> Callable[[str], bool]:
    if callable(param_filter) and not isinstance(param_filter, str):
        return lambda n: bool(param_filter(n))
    patterns = [param_filter] if isinstance(param_filter, str) else param_filter
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise InputTypeError(f"param_filter: expected a module or parameter name, a pattern, a "
                             f"list of them or a callable name -> bool, got "
                             f"{type(param_filter).__name__}")
    return lambda n: any(_chooses(p, n) for p in patterns)


def select_params(params: Mapping[str, Tensor], param_filter: ParamFilter | None
                  ) -> dict[str, Tensor]:
    """The entries of ``params`` that ``param_filter`` chooses (all of them for None).

    Raises:
        InputError: the filter chooses no parameter (the message lists the names).
    """
    if param_filter is None:
        return dict(params)
    keep = _predicate(param_filter)
    out = {n: p for n, p in params.items() if keep(n)}
    if not out:
        raise InputError(f"param_filter: {param_filter!r} chooses no parameter; the parameters "
                         f"are {list(params)}")
    return out


class FrozenModel:
    """``f(params, inputs)``: a problem's model whose other parameters are held at ``frozen``.

    Called through the original problem's :meth:`~hessfree.Problem.forward`, so the model is
    called as that problem calls it (its attention scope, a model family's adapter: a Hugging
    Face model's keywords and logits).

    Args:
        problem: the original :class:`~hessfree.Problem`.
        frozen: ``{name: tensor}`` of the parameters that are not differentiated.
    """

    def __init__(self, problem: Problem, frozen: Mapping[str, Tensor]) -> None:
        self.model = problem.model
        self.forward = problem.forward
        self.frozen = {n: p.detach() for n, p in frozen.items()}

    def __getattr__(self, name: str) -> Any:  # e.g. hidden_nonlinearity
        if name in ("model", "forward", "frozen"):
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def returns_hidden(self) -> bool:
        """It forwards ``return_hidden`` to the model, so it declares what the model declares."""
        return declares_hidden(self.model)

    def __call__(self, params: Mapping[str, Tensor], inputs: Any, **kwargs: Any) -> Any:
        """The model's outputs at the frozen values updated by ``params``."""
        return self.forward({**self.frozen, **params}, inputs, **kwargs)


def block_problem(problem: Problem, params: Mapping[str, Tensor], param_filter: ParamFilter
                  ) -> tuple[Problem, dict[str, Tensor]]:
    """The problem in the chosen parameters alone, the others frozen at their ``params`` values.

    Returns the new problem (same loss, weight decay and process group; its model a
    :class:`FrozenModel`) and the chosen parameters.
    """
    chosen = select_params(params, param_filter)
    frozen = {n: p for n, p in params.items() if n not in chosen}
    if not frozen:
        return problem, chosen
    model = FrozenModel(problem, frozen)
    return Problem(model, problem.loss, problem.weight_decay, problem.reducer), chosen


def module_groups(params: Mapping[str, Tensor], by: str = "module"
                  ) -> dict[str, slice]:
    """The slices of the flat vector held by each module (``by="module"``) or parameter.

    Parameters are flattened in the order of ``params``; a module's parameters are contiguous
    there when the model registers them together (every ``nn.Module`` does).
    """
    if by not in ("module", "parameter"):
        raise InputError(f"by: expected 'module' or 'parameter', got {by!r}")
    groups: dict[str, slice] = {}
    pos = 0
    for n, p in params.items():
        key = module_of(n) if by == "module" else n
        key = key or "(root)"
        if key in groups and groups[key].stop != pos:
            raise InputError(f"by: the parameters of module {key!r} are not contiguous in the "
                             "flat vector; use by='parameter'")
        start = groups[key].start if key in groups else pos
        pos += p.numel()
        groups[key] = slice(start, pos)
    return groups


def restrict(op: Any, param_filter: ParamFilter) -> Any:
    """The block of ``op`` for the parameters ``param_filter`` chooses, as a new operator.

    ``op``: a ``GGN``, ``Hessian`` or ``EmpiricalFisher`` (rebuilt on the same problem, batch
    and parameter values, taken with respect to the chosen parameters only), or a damped one
    (the block of its base, damped alike).
    """
    base = getattr(op, "base", None)
    if base is not None and hasattr(op, "lam"):
        return type(op)(restrict(base, param_filter), op.lam)
    if not (hasattr(op, "problem") and hasattr(op, "params") and hasattr(op, "kind")):
        raise InputTypeError(f"op: expected a GGN, Hessian, EmpiricalFisher or a damped one, "
                             f"got {type(op).__name__}")
    batch = op.batch  # checked already
    extra = {"structural_damping": op.structural_damping} \
        if getattr(op, "structural_damping", 0.0) else {}
    backend = "auto" if op.backend == "sequential" else op.backend
    return type(op)(op.problem, batch, params=op.params, param_filter=param_filter,
                    backend=backend, cache=op.cache, check=False, **extra)
