"""The long-term-dependency problems of Hochreiter & Schmidhuber (1997), as in Martens & Sutskever.

Each generator follows Sutskever's released data code for Martens & Sutskever (2011) [M&S11]
([HF-RNN]: ``opt/d/seq/pathological.py`` and ``opt/d/seq/utils``; [Data: pathological]):
``factor = T / 100``, positions drawn uniformly from ranges scaled by the factor, balanced class
assignment by sequence index where his code does it. Positions use ``f(x) = floor(x * T / 100)``
computed exactly in integers (his ``int(x * factor)`` in floating point is one lower for a few T).

Format (shared with the loss code):
  inputs  float32 ``(n, length, channels)``; sequences of different lengths are padded at the
          end with zeros to the longest in the batch;
  targets float32 ``(n, length, 1)`` (linear / logistic outputs) or int64 ``(n, length)``
          class indices (softmax over the last output dimension; 0 where the mask is 0);
  mask    float32 ``(n, length)``, 1 where the loss applies, 0 elsewhere and on padding.
A sequence whose target index is ``T'`` has ``T' + 1`` real steps (0..T'), as in the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hessfree import _checks
from hessfree.errors import InputError


@dataclass(frozen=True)
class TaskSpec:
    """What a model for a task needs: channels, outputs, output kind, length and error rule.

    Attributes:
        name: canonical task name.
        input_channels: size of the last input dimension.
        n_outputs: number of output units (classes for softmax tasks).
        output: ``"linear"`` (squared loss), ``"logistic"`` (cross-entropy) or ``"softmax"``.
        error: ``"final"`` (zero-one error of the last masked step of each sequence) or
            ``"steps"`` (fraction of wrong masked time steps).
        length_range: ``(low, high)`` in units of T/100: the target index T' is drawn from
            ``[f(low), f(high))``; ``high is None`` for fixed length ``f(low)``.
        target_mean: expected target, subtracted by ``center=True`` (``None``: not centred).
        batch_size: Sutskever's minibatch size (1000; 32 for 5-bit memorization).
    """

    name: str
    input_channels: int
    n_outputs: int
    output: str
    error: str
    length_range: tuple[int, int | None]
    target_mean: float | None = None
    batch_size: int = 1000

    def max_length(self, T: int) -> int:
        """The longest possible sequence (the padded length of a large batch) for ``T``."""
        low, high = self.length_range
        return scaled(low, T) if high is None else scaled(high, T)


TASKS = {
    "addition": TaskSpec("addition", 2, 1, "linear", "final", (100, 110), 1.0),
    "multiplication": TaskSpec("multiplication", 2, 1, "linear", "final", (100, 110), 0.25),
    "xor": TaskSpec("xor", 2, 1, "logistic", "final", (50, 55)),
    "temporal_order": TaskSpec("temporal_order", 8, 4, "softmax", "final", (100, 110)),
    "temporal_order_3bit": TaskSpec("temporal_order_3bit", 8, 8, "softmax", "final", (100, 110)),
    "random_permutation": TaskSpec("random_permutation", 100, 100, "softmax", "final", (100, None)),
    "memorization_5bit": TaskSpec(
        "memorization_5bit", 4, 3, "softmax", "steps", (100, None), batch_size=32
    ),
    "memorization_20bit": TaskSpec("memorization_20bit", 7, 6, "softmax", "steps", (100, None)),
}
"""The eight tasks ([Data: pathological]). Memorization channels: ``char_size`` symbols, then the
"go" (pre-signal) and blank channels; outputs: ``char_size`` symbols, then blank."""
MEMORY = {"memorization_5bit": (5, 2), "memorization_20bit": (10, 5)}
"""(num_chars, char_size) of the noiseless memorization tasks (Sutskever's ``raw_mem``)."""


def scaled(x: int, T: int) -> int:
    """``f(x) = floor(x * T / 100)``, Sutskever's ``int(x * factor)`` in exact arithmetic."""
    return (x * T) // 100


def task_spec(task: str) -> TaskSpec:
    """The ``TaskSpec`` of ``task`` (hyphens and case ignored, e.g. ``"temporal-order"``).

    Raises:
        ValueError: for an unknown task, listing the valid names.
    """
    key = str(task).strip().lower().replace("-", "_")
    if key not in TASKS:
        raise InputError(f"unknown pathological task {task!r}; valid names: {sorted(TASKS)}")
    return TASKS[key]


def n_outputs(task: str) -> int:
    """Number of output units of ``task`` (classes for softmax tasks)."""
    return task_spec(task).n_outputs


def draw(rng: np.random.Generator, low: int, high: int, n: int, what: str, T: int) -> np.ndarray:
    """``n`` integers uniform on ``[low, high)``; a clear error if the range is empty."""
    if high <= low:
        raise InputError(f"pathological: T={T} is too small: the {what} range [{low}, {high}) "
                         "is empty")
    return rng.integers(low, high, size=n)


def one_hot(symbols: np.ndarray, channels: int, lengths: np.ndarray) -> np.ndarray:
    """One-hot float32 encoding of ``(n, length)`` symbols, zero beyond each sequence's length."""
    out = np.zeros(symbols.shape + (channels,), dtype=np.float32)
    np.put_along_axis(out, symbols[..., None], 1.0, axis=-1)
    out[np.arange(symbols.shape[1])[None, :] >= lengths[:, None]] = 0.0
    return out


def operands(task: str, T: int, n: int, rng: np.random.Generator):
    """Addition, multiplication, xor: Sutskever's ``op_cls`` ([HF-RNN]).

    Length: target index T' in ``[f(100), f(110))`` (xor: ``[f(50), f(55))``). Value channel:
    U[0, 1) at every step (xor: fair bits). Marker channel: -1 at step 0, 1 at I in
    ``[f(1), f(10))`` and J in ``[f(10), f(50))`` (xor: ``[f(15), f(25))``), -1 at T' - 3
    ("about to predict"), 0 elsewhere (I = 0 overwrites the first -1 when T < 100, as in the
    code). Target at step T': value[I] + value[J], value[I] * value[J], or value[I] xor value[J].
    """
    spec = TASKS[task]
    last = draw(rng, scaled(spec.length_range[0], T), scaled(spec.length_range[1], T), n,
                "sequence length", T)
    b_range = (15, 25) if task == "xor" else (10, 50)
    first = draw(rng, scaled(1, T), scaled(10, T), n, "first marker", T)
    second = draw(rng, scaled(b_range[0], T), scaled(b_range[1], T), n, "second marker", T)
    if np.any(last - 3 <= second):
        raise InputError(f"pathological: T={T} is too small for {task}: the end signal at T'-3 "
                         "would fall on or before the second marker")
    length, rows = int(last.max()) + 1, np.arange(n)
    values = rng.random((n, length))
    if task == "xor":
        values = (values < 0.5).astype(np.float64)
    marker = np.zeros((n, length))
    marker[:, 0] = -1.0
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    marker[rows, last - 3] = -1.0
    a, b = values[rows, first], values[rows, second]
    result = {"addition": a + b, "multiplication": a * b}.get(task)
    if result is None:
        result = np.logical_xor(a > 0.5, b > 0.5).astype(np.float64)
    inputs = np.stack([values, marker], axis=-1).astype(np.float32)
    inputs[np.arange(length)[None, :] > last[:, None]] = 0.0
    targets = np.zeros((n, length, 1), dtype=np.float32)
    targets[rows, last, 0] = result
    return inputs, targets, last


def temporal(task: str, T: int, n: int, rng: np.random.Generator):
    """Temporal order, 2 or 3 bits: Sutskever's ``temporal2`` / ``temporal3`` ([HF-RNN]).

    Symbols: 0-3 distractors (uniform), 4 = X, 5 = Y, 6 = prediction cue, 7 = start (step 0).
    T' in ``[f(100), f(110))``. Special symbols at I in ``[f(1), f(10)]``, J in
    ``[f(40), f(50)]`` (3-bit: ``[f(30), f(40)]`` and K in ``[f(50), f(60)]``), ends included.
    The symbols are balanced by sequence index b: A = X + b % 2, B = X + (b // 2) % 2,
    C = X + (b // 4) % 2. 2-bit: cue at T' - 1, target class 2A' + B' at T' (A' = A - X);
    3-bit: cue at T', class 4C' + 2B' + A' at T'. (The code puts the 2-bit cue one step early.)
    """
    three = task == "temporal_order_3bit"
    last = draw(rng, scaled(100, T), scaled(110, T), n, "sequence length", T)
    spots = [(1, 10), (30, 40), (50, 60)] if three else [(1, 10), (40, 50)]
    places = [draw(rng, scaled(lo, T), scaled(hi, T) + 1, n, "symbol position", T)
              for lo, hi in spots]
    length, rows, index = int(last.max()) + 1, np.arange(n), np.arange(n)
    bits = [(index >> k) & 1 for k in range(len(spots))]
    symbols = rng.integers(0, 4, size=(n, length))
    symbols[rows, last if three else last - 1] = 6
    symbols[:, 0] = 7
    for place, bit in zip(places, bits):
        symbols[rows, place] = 4 + bit
    cls = bits[2] * 4 + bits[1] * 2 + bits[0] if three else bits[0] * 2 + bits[1]
    targets = np.zeros((n, length), dtype=np.int64)
    targets[rows, last] = cls
    return one_hot(symbols, 8, last + 1), targets, last


def permutation(T: int, n: int, rng: np.random.Generator):
    """Random permutation: Sutskever's ``perm_mem`` with 100 symbols ([HF-RNN]).

    Length f(100). Step 0 shows symbol b % 2 (balanced), steps 1.. random symbols from 2..99.
    The target at each step is the next input symbol, and at the last step the first symbol;
    the loss covers every step, the zero-one error only the last.
    """
    length = scaled(100, T)
    if length < 2:
        raise InputError(f"pathological: T={T} is too small for random_permutation")
    symbols = np.empty((n, length), dtype=np.int64)
    symbols[:, 0] = np.arange(n) % 2
    symbols[:, 1:] = rng.integers(2, 100, size=(n, length - 1))
    targets = np.concatenate([symbols[:, 1:], symbols[:, :1]], axis=1)
    return one_hot(symbols, 100, np.full(n, length)), targets


def memorization(task: str, T: int, n: int, rng: np.random.Generator):
    """Noiseless memorization: Sutskever's ``raw_mem`` ([HF-RNN]; [S13 A.4]).

    Length f(100). Inputs: ``num_chars`` data symbols, then blanks, with the "go" symbol at
    step ``length - num_chars - 1``; targets: blank everywhere except the last ``num_chars``
    steps, which repeat the data; loss at every step. Channels: data symbols
    ``0..char_size-1``, then go, then blank (the released code uses ``char_size`` channels
    only, so its blank and go collide with data symbols; we take the evident intent, which
    reproduces the 2.5 % biases-only error of [S13 Table 5] for 5 bits at T = 200).
    Patterns: all ``char_size ** num_chars`` patterns in order (repeated) when ``n`` is a
    multiple of that count (the code enumerates them when equal), else i.i.d. uniform.
    """
    chars, size = MEMORY[task]
    length = scaled(100, T)
    if length < 2 * chars + 1:
        raise InputError(f"pathological: T={T} is too small for {task}: need at least "
                         f"{2 * chars + 1} steps, got {length}")
    patterns = size**chars
    if n % patterns == 0:
        number = np.arange(n)[:, None] % patterns
        data = (number // size ** np.arange(chars - 1, -1, -1)) % size
    else:
        data = rng.integers(0, size, size=(n, chars))
    go, blank = size, size + 1
    symbols = np.full((n, length), blank, dtype=np.int64)
    symbols[:, :chars] = data
    symbols[:, length - chars - 1] = go
    targets = np.full((n, length), size, dtype=np.int64)
    targets[:, length - chars :] = data
    return one_hot(symbols, size + 2, np.full(n, length)), targets


def center_inputs(task: str, inputs: np.ndarray, targets: np.ndarray, lengths: np.ndarray):
    """Subtract the generating distribution's means ([S13 §4]: centring of inputs and outputs).

    Value channel: minus 0.5 (the mean of U[0, 1) and of fair bits) at real steps, padding
    stays 0. Marker channel: unchanged (-1, +1, +1, -1 already sums to 0 in every sequence).
    Targets of addition / multiplication: minus ``spec.target_mean`` (E[a + b] = 1,
    E[a b] = 1/4) at the target step; xor targets stay in {0, 1} for the logistic loss.
    """
    real = np.arange(inputs.shape[1])[None, :] < lengths[:, None]
    inputs[..., 0] -= np.float32(0.5) * real
    mean = TASKS[task].target_mean
    if mean is not None:
        targets[np.arange(len(targets)), lengths - 1, 0] -= np.float32(mean)


def pathological(
    task: str, T: int = 200, n: int = 1000, seed: int = 0, center: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate ``n`` sequences of a pathological task in Martens & Sutskever's (2011) format.

    Tasks (hyphens accepted): ``addition``, ``multiplication``, ``xor``, ``temporal_order``,
    ``temporal_order_3bit``, ``random_permutation``, ``memorization_5bit``,
    ``memorization_20bit``. Generation rules are in the docstrings of ``operands``,
    ``temporal``, ``permutation`` and ``memorization``; lengths scale with ``T`` through
    ``f(x) = floor(x T / 100)``. Sutskever's defaults: T = 200, 1000 sequences per batch
    (32 for 5-bit memorization, which then enumerates all 32 patterns).

    Args:
        task: the task name.
        T: the nominal length (the paper's T).
        n: number of sequences.
        seed: random seed; the result is a deterministic function of all arguments.
        center: subtract the inputs' and targets' expected values ([S13 §4];
            see ``center_inputs``). Defined for addition, multiplication and xor only: the
            one-hot tasks are left as in the papers.

    Returns:
        ``(inputs, targets, mask)`` as described in the module docstring. Inputs of
        addition / multiplication / xor have channels ``[value, marker]``.

    Raises:
        ValueError: for an unknown task (listing the valid ones), a bad ``T`` or ``n``, or
            ``center=True`` on a one-hot task.
    """
    spec = task_spec(task)
    for name, value in (("T", T), ("n", n)):
        _checks.integer(value, f"pathological: {name}", minimum=1)
    if center and spec.output == "softmax":
        raise InputError(f"pathological: center=True is defined for addition, multiplication "
                         f"and xor (real-valued inputs), not for {spec.name}")
    T, n = int(T), int(n)
    rng = np.random.default_rng(seed)
    if spec.name in ("addition", "multiplication", "xor"):
        inputs, targets, last = operands(spec.name, T, n, rng)
        if center:
            center_inputs(spec.name, inputs, targets, last + 1)
    elif spec.name.startswith("temporal"):
        inputs, targets, last = temporal(spec.name, T, n, rng)
    elif spec.name == "random_permutation":
        inputs, targets = permutation(T, n, rng)
    else:
        inputs, targets = memorization(spec.name, T, n, rng)
    if spec.error == "steps" or spec.name == "random_permutation":
        mask = np.ones(targets.shape[:2], dtype=np.float32)
    else:
        mask = np.zeros(targets.shape[:2], dtype=np.float32)
        mask[np.arange(n), last] = 1.0
    return torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask)
