"""Model adapters: how a :class:`~hessfree.Problem` calls one family of models.

A plain ``nn.Module`` is called as ``model(inputs)`` (``model(*inputs)``, ``model(**inputs)``)
and must return its outputs (logits) as one tensor. A family of models with its own conventions
(Hugging Face models return an output object and take ``use_cache=``) gets an adapter: extra
keywords for the call, the tensor to read from what the model returns, a default loss, and the
checks that refuse what curvature products cannot handle. Adapters live in
:mod:`hessfree.integrations` and register themselves here; the core never imports them, and an
adapter never imports its third-party package until a model of that package is seen.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hessfree.errors import InputError

__all__ = ["ModelAdapter", "adapter_for", "register"]


class ModelAdapter:
    """The plain ``nn.Module`` (or function) convention; subclasses adapt other families."""

    #: the family's name, for messages
    name = "module"

    def matches(self, model: Any) -> bool:
        """Whether ``model`` belongs to this family."""
        return False

    def default_loss(self, model: Any) -> Any:
        """The loss the family's own training uses, or raise (the plain module has none)."""
        raise InputError("loss: required for this model (a hessfree.losses loss or a callable "
                         "loss(outputs, targets) -> scalar)")

    def call_kwargs(self, model: nn.Module) -> dict[str, Any]:
        """Keywords added to every call of the model (none for a plain module)."""
        return {}

    def outputs(self, model: Any, result: Any) -> Any:
        """The outputs (logits) the loss takes, from what the model returned."""
        return result

    def check(self, model: Any) -> None:
        """Raise :class:`InputError` (one line) for a model the products cannot handle.

        Called when a :class:`~hessfree.Problem` is built and whenever an operator is set up.
        """

    def check_modes(self, model: Any) -> None:
        """Raise :class:`InputError` (one line) for a mode the products cannot handle.

        Training-mode randomness, for instance; called whenever an operator is set up.
        """


_REGISTERED: list[ModelAdapter] = []
_PLAIN = ModelAdapter()


def register(adapter: ModelAdapter) -> None:
    """Add ``adapter`` (consulted before the plain convention); registering twice is harmless."""
    if not any(type(a) is type(adapter) for a in _REGISTERED):
        _REGISTERED.append(adapter)


def adapter_for(model: Any) -> ModelAdapter:
    """The registered adapter whose family ``model`` belongs to, else the plain convention."""
    for adapter in _REGISTERED:
        if adapter.matches(model):
            return adapter
    return _PLAIN
