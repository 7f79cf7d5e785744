"""Zero-one errors of the pathological tasks and the "biases only" baseline.

Rules ([S13 §4.2]; Sutskever's ``zero_one_loss_*``, [HF-RNN]):
addition / multiplication: a sequence is wrong when |prediction - target| > 0.04 at its final
masked step; xor: when the sign of the logit disagrees with the target bit; temporal order and
random permutation: when the arg-max class at the final masked step is wrong; memorization: the
fraction of masked time steps whose arg-max class is wrong. ``outputs`` are the model's
pre-nonlinearity outputs (logits for logistic / softmax), as everywhere in hessfree.
"""

from __future__ import annotations

import torch

from hessfree.data.pathological import pathological, task_spec
from hessfree.errors import InputError

TOLERANCE = 0.04
"""Largest |prediction - target| counted as correct for the regression tasks ([S13 §4.2])."""


def check_shapes(spec, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise a ValueError naming the argument whose shape or dtype does not fit ``spec``."""
    if mask.dim() != 2:
        raise InputError(f"zero_one_error: mask must be (n, length), got {tuple(mask.shape)}")
    n, length = mask.shape
    want = (n, length, spec.n_outputs)
    if tuple(outputs.shape) != want:
        raise InputError(f"zero_one_error: outputs must have shape {want} for {spec.name}, "
                         f"got {tuple(outputs.shape)}")
    if spec.output == "softmax":
        if tuple(targets.shape) != (n, length) or targets.is_floating_point():
            raise InputError(f"zero_one_error: targets must be integer class indices of shape "
                             f"{(n, length)}, got {targets.dtype} {tuple(targets.shape)}")
    elif tuple(targets.shape) != (n, length, 1):
        raise InputError(f"zero_one_error: targets must have shape {(n, length, 1)}, got "
                         f"{tuple(targets.shape)}")


def last_masked(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last step with ``mask > 0`` in each sequence.

    Raises:
        ValueError: if some sequence has no masked step.
    """
    steps = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, steps, -1).max(dim=1).values
    if (last < 0).any():
        raise InputError("zero_one_error: every sequence needs at least one step with mask > 0")
    return last


def zero_one_error(
    task: str, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> float:
    """The zero-one error of a task, as a fraction in [0, 1] (not a percentage).

    Args:
        task: pathological task name (see ``pathological``).
        outputs: ``(n, length, n_outputs)`` pre-nonlinearity model outputs.
        targets: as returned by ``pathological`` (centred targets are fine: the regression
            rule compares outputs and targets in the same units).
        mask: ``(n, length)`` loss weights as returned by ``pathological``.

    Returns:
        Fraction of wrong sequences (final-step tasks) or of wrong masked steps (memorization).
    """
    spec = task_spec(task)
    check_shapes(spec, outputs, targets, mask)
    with torch.no_grad():
        if spec.error == "steps":
            wrong = (outputs.argmax(-1) != targets).to(mask.dtype)
            return float((wrong * mask).sum() / mask.sum())
        rows = torch.arange(mask.shape[0], device=mask.device)
        last = last_masked(mask)
        out, tgt = outputs[rows, last], targets[rows, last]
        if spec.output == "linear":
            wrong = (out[:, 0] - tgt[:, 0]).abs() > TOLERANCE
        elif spec.output == "logistic":
            wrong = (out[:, 0] > 0) != (tgt[:, 0] > 0.5)
        else:
            wrong = out.argmax(-1) != tgt
        return float(wrong.double().mean())


def constant_output(task: str, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The outputs of a model that learned only its output biases ([S13 Table 5] "biases").

    The bias minimising the training loss over the masked steps: the mean target (linear,
    squared loss), the logit of the mean target (logistic), or the log class frequencies
    (softmax). Returned broadcast to ``(n, length, n_outputs)``.
    """
    spec = task_spec(task)
    n, length = mask.shape
    weight = mask / mask.sum()
    if spec.output == "softmax":
        freq = torch.zeros(spec.n_outputs, dtype=torch.float64)
        freq.index_add_(0, targets.reshape(-1), weight.reshape(-1).double())
        bias = (freq + 1e-12).log()
    else:
        mean = (targets[..., 0].double() * weight).sum()
        bias = mean.reshape(1)
        if spec.output == "logistic":
            bias = torch.logit(bias, eps=1e-6)
    return bias.float().expand(n, length, spec.n_outputs)


def biases_baseline(task: str, T: int = 200, n: int = 10000, seed: int = 0) -> float:
    """Zero-one error of the biases-only model: fitted on one batch, scored on a fresh one.

    Expected values (fractions): addition 0.92, multiplication 0.89 (the mean target is
    within 0.04 of a + b for 8 % of sequences, of a * b for 11 %), xor 0.5, temporal order
    0.75, 3-bit 0.875, random permutation 1.0 (the most frequent symbol is never the first
    one), memorization ``num_chars / f(100)``: 5-bit at T = 200 gives 0.025, 20-bit at T = 80
    gives 0.125. [S13 Table 5] lists 0.82 / 0.84 (add / mul, T = 80; fractions) and 2.5 / 8.0
    (mem-5 T = 200 / mem-20 T = 80; percentages): mem-5 agrees; the others differ for reasons
    the paper does not give (our rules follow Sutskever's released code).
    """
    train = pathological(task, T, n, seed)
    test = pathological(task, T, n, seed + 1)
    bias = constant_output(task, train[1], train[2])
    outputs = bias[:1, :1].expand(n, test[2].shape[1], -1)
    return zero_one_error(task, outputs, test[1], test[2])
