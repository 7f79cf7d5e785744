"""Hugging Face ``transformers`` models as :class:`~hessfree.Problem` models.

``hessfree.Problem(model)`` takes a ``PreTrainedModel`` (built from a config or loaded) as it
is, and the operators and HF take its dict batches (``{"input_ids", "attention_mask",
"labels"}``, one dict, a list of them or a ``DataLoader`` of them) as they are:

- the ``labels`` are the targets and every other key is passed to the model as a keyword
  (:func:`hessfree.batches.as_pair`); the labels are never passed to the model, which therefore
  computes no loss of its own;
- the model is called with ``use_cache=False`` and its **logits** are read from the output
  object; an output without logits (a bare ``GPT2Model``) is refused with one line;
- the loss defaults to the one the model's head trains with ([HF-Loss]): for a causal LM
  (``*ForCausalLM``, ``GPT2LMHeadModel``)
  :class:`~hessfree.curvature.sequence_loss.TokenCrossEntropy` with ``shift=True`` (logits
  at ``t`` against the label at ``t + 1``, ``-100`` ignored, the mean over the tokens that
  count in the whole batch: ``model(**batch).loss`` on one batch); for masked LMs and token
  classification the same without the shift; for single-label sequence classification
  :class:`~hessfree.losses.CrossEntropy` (mean over sequences). Any other head needs ``loss=``.

**Model and loss for the Gauss-Newton matrix.** ``G = Jᵀ H_L J`` with ``J`` the Jacobian of
the **logits** with respect to every trainable parameter (embeddings, attention, LayerNorm or
RMSNorm, MLPs; a tied output embedding is one parameter, so its two uses add up in ``J``), and
``H_L`` the Hessian of the token cross-entropy with respect to the logits: per token
``w_t (diag p_t − p_t p_tᵀ)``, ``p_t = softmax(z_t)``, ``w_t = 1/N_tokens`` or 0 for an ignored
token. Each block is positive semi-definite (``uᵀ(diag p − p pᵀ)u = Σ p u² − (Σ p u)² ≥ 0``,
the variance of ``u`` under ``p``): the token cross-entropy is convex in the logits, so ``G`` is
PSD whatever the network in ``J`` — attention, normalisation and all. Softmax cross-entropy is
the matching loss of the softmax, so this ``H_L`` has the closed form above and ``G`` equals the
Fisher information of the model's predictive distribution over tokens ([Sch02]; [M10 §4.2];
[Mar20]). Cutting deeper (leaving the final LayerNorm or the attention in the loss) would put
their curvature, which can be indefinite, into ``H_L`` and lose both properties.

**What is refused, in one line each** (:class:`~hessfree.errors.InputError`): attention
implementations whose kernels have no double-backward or forward-mode derivative
(``flash_attention_2/3/4``, ``flex_attention``, ``paged|…``, hub kernels: use ``"sdpa"`` or
``"eager"``, which hessfree runs with PyTorch's math kernel); a model in training mode with a
non-zero dropout probability (the forward pass is random, so CG has no fixed matrix: call
``model.eval()``); an output object without logits; a dict batch without ``labels``.

``transformers`` is an optional extra (``pip install "hessfree[huggingface]"``); this module
imports it only once a model of the package is seen, and registers its adapter with the core
(:mod:`hessfree.curvature.adapters`) when ``hessfree`` is imported.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

from torch import Tensor, nn

from hessfree.curvature.adapters import ModelAdapter, register
from hessfree.curvature.losses import CrossEntropy
from hessfree.curvature.sequence_loss import TokenCrossEntropy
from hessfree.errors import InputError

__all__ = ["HuggingFaceAdapter", "default_loss", "is_huggingface_model"]

#: attention implementations known to call fused kernels without a second derivative (hub
#: kernels, named "owner/repo", too); "eager" and "sdpa" are differentiable (SDPA runs as math)
_FUSED = ("flash_attention", "flex_attention", "paged|")


def is_huggingface_model(model: Any) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (without importing the package)."""
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(model, nn.Module) and isinstance(
        model, tf.PreTrainedModel)


def _head_names(kind: str) -> set[str]:
    from transformers.models.auto import modeling_auto

    names: set[str] = set()
    for value in getattr(modeling_auto, f"MODEL_FOR_{kind}_MAPPING_NAMES", {}).values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _task(model: nn.Module) -> str | None:
    """The model's head: ``"causal-lm"``, ``"masked-lm"``, ``"token"``, ``"sequence"`` or None."""
    name = type(model).__name__
    if name in _head_names("CAUSAL_LM") or name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if name in _head_names("MASKED_LM") or name.endswith("ForMaskedLM"):
        return "masked-lm"
    if name in _head_names("TOKEN_CLASSIFICATION") or name.endswith("ForTokenClassification"):
        return "token"
    if name in _head_names("SEQUENCE_CLASSIFICATION") or \
            name.endswith("ForSequenceClassification"):
        return "sequence"
    return None


def default_loss(model: nn.Module) -> Any:
    """The loss ``model``'s head trains with, as a hessfree matching loss ([HF-Loss])."""
    task = _task(model)
    if task == "causal-lm":
        return TokenCrossEntropy(shift=True)
    if task in ("masked-lm", "token"):
        return TokenCrossEntropy()
    config = getattr(model, "config", None)
    kind = getattr(config, "problem_type", None)
    if task == "sequence" and (kind == "single_label_classification" or
                               (kind is None and getattr(config, "num_labels", 0) > 1)):
        return CrossEntropy()
    raise InputError(f"loss: hessfree has no default loss for {type(model).__name__} "
                     f"(problem_type={kind!r}); pass one, e.g. Problem(model, "
                     "hessfree.losses.MSE()) or hessfree.TokenCrossEntropy()")


#: config fields of attention dropout applied as a function (no nn.Dropout module to see)
_ATTENTION_DROPOUT = ("attention_dropout", "attn_dropout", "attention_probs_dropout_prob",
                      "attn_pdrop")


def _dropouts(model: nn.Module) -> dict[str, float]:
    """Non-zero dropout probabilities that apply in training mode.

    ``nn.Dropout`` modules, and the config's attention dropout (applied as a function by
    Hugging Face's attention code).
    """
    out = {name or "model": float(m.p) for name, m in model.named_modules()
           if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0}
    for key in _ATTENTION_DROPOUT:
        value = getattr(model.config, key, None)
        if isinstance(value, float) and value > 0:
            out[f"config.{key}"] = value
    return out


@functools.lru_cache(maxsize=None)
def _takes_use_cache(cls: type) -> bool:
    return "use_cache" in inspect.signature(cls.forward).parameters


class HuggingFaceAdapter(ModelAdapter):
    """How :class:`~hessfree.Problem` calls a ``transformers.PreTrainedModel``."""

    name = "Hugging Face"

    def matches(self, model: Any) -> bool:
        """Whether ``model`` is a ``transformers.PreTrainedModel``."""
        return is_huggingface_model(model)

    def default_loss(self, model: Any) -> Any:
        """The head's own loss (:func:`default_loss`)."""
        return default_loss(model)

    def call_kwargs(self, model: nn.Module) -> dict[str, Any]:
        """``use_cache=False`` where the model takes it (no key-value cache is built)."""
        return {"use_cache": False} if _takes_use_cache(type(model)) else {}

    def outputs(self, model: Any, result: Any) -> Any:
        """The ``logits`` of the output object (a tensor passes through)."""
        if isinstance(result, Tensor):
            return result
        logits = getattr(result, "logits", None)
        if isinstance(logits, Tensor):
            return logits
        fields = list(result.keys()) if hasattr(result, "keys") else type(result).__name__
        raise InputError(f"model: {type(model).__name__}'s output has no logits (it has "
                         f"{fields}); hessfree needs the logits, from a model with a head such "
                         "as *ForCausalLM or *ForSequenceClassification")

    def check(self, model: Any) -> None:
        """Refuse attention implementations whose kernels products cannot differentiate."""
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if isinstance(impl, str) and (impl.startswith(_FUSED) or "/" in impl):
            raise InputError(
                f"model: {type(model).__name__} uses attn_implementation={impl!r}, whose kernel "
                "has no second (double-backward) or forward-mode derivative, which curvature "
                "products need; call model.set_attn_implementation('sdpa') (or 'eager'), or "
                "build or load the model with attn_implementation='sdpa'")

    def check_modes(self, model: Any) -> None:
        """Refuse a model in training mode with dropout (its forward pass is random)."""
        if not model.training:
            return
        drop = _dropouts(model)
        if drop:
            shown = ", ".join(f"{k}={v:g}" for k, v in list(drop.items())[:3])
            more = f" and {len(drop) - 3} more" if len(drop) > 3 else ""
            raise InputError(
                f"model: {type(model).__name__} is in training mode with dropout ({shown}{more}), "
                "which makes every forward pass different, so there is no fixed curvature for "
                "CG; call model.eval() for the curvature (or build the model with its dropout "
                "probabilities at 0)")


register(HuggingFaceAdapter())
