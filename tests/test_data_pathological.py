import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hessfree.data import (
    TASKS,
    biases_baseline,
    constant_output,
    n_outputs,
    pathological,
    task_spec,
    zero_one_error,
)

ALL = sorted(TASKS)


def f(x, T):
    return math.floor(x * T / 100)


def last_step(mask):
    return torch.tensor([int(np.flatnonzero(row.numpy())[-1]) for row in mask])


def perfect_outputs(task, targets):
    spec = task_spec(task)
    if spec.output == "linear":
        return targets.clone()
    if spec.output == "logistic":
        return (2 * targets - 1) * 5.0
    return F.one_hot(targets, spec.n_outputs).float() * 10.0


@pytest.mark.parametrize("task", ALL)
def test_shapes_dtypes_spec_and_determinism(task):
    spec = task_spec(task)
    n = 24  # for 5-bit memorization < 32 patterns, so the patterns are random
    inputs, targets, mask = pathological(task, 100, n, seed=1)
    length = inputs.shape[1]
    assert inputs.shape == (n, length, spec.input_channels) and inputs.dtype == torch.float32
    assert mask.shape == (n, length) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    if spec.output == "softmax":
        assert targets.shape == (n, length) and targets.dtype == torch.int64
        assert targets.min() >= 0 and targets.max() < n_outputs(task)
    else:
        assert targets.shape == (n, length, 1) and targets.dtype == torch.float32
    assert length <= spec.max_length(100)
    again = pathological(task.replace("_", "-"), 100, n, seed=1)
    for a, b in zip((inputs, targets, mask), again):
        assert torch.equal(a, b)
    other = pathological(task, 100, n, seed=2)
    assert not torch.equal(inputs[:, : other[0].shape[1]], other[0][:, :length])


@pytest.mark.parametrize("task", ["addition", "multiplication", "xor"])
def test_operand_tasks_follow_the_rule(task):
    T, n = 150, 400
    inputs, targets, mask = pathological(task, T, n, seed=3)
    assert (mask.sum(1) == 1).all()
    last = last_step(mask)
    lo, hi = (f(100, T), f(110, T)) if task != "xor" else (f(50, T), f(55, T))
    assert last.min() >= lo and last.max() < hi and inputs.shape[1] == last.max() + 1
    value, marker = inputs[..., 0], inputs[..., 1]
    rows = torch.arange(n)
    assert (marker[:, 0] == -1).all() and (marker[rows, last - 3] == -1).all()
    steps = torch.arange(inputs.shape[1])
    after = steps[None, :] > last[:, None]
    assert (inputs[after] == 0).all()  # padding at the end
    for i in range(n):
        marks = torch.nonzero(marker[i] == 1).flatten().tolist()
        assert len(marks) == 2
        first, second = marks
        assert f(1, T) <= first < f(10, T)
        assert (f(10, T) <= second < f(50, T)) if task != "xor" else (f(15, T) <= second < f(25, T))
        a, b = value[i, first].item(), value[i, second].item()
        xor = float((a > 0.5) != (b > 0.5))
        expected = {"addition": a + b, "multiplication": a * b, "xor": xor}
        assert targets[i, last[i], 0].item() == pytest.approx(expected[task], abs=1e-6)
    assert (targets[..., 0] * (1 - mask) == 0).all()
    if task == "xor":
        assert set(value[~after].unique().tolist()) == {0.0, 1.0}
    else:
        assert value[~after].min() >= 0 and value[~after].max() < 1


@pytest.mark.parametrize("task", ["temporal_order", "temporal_order_3bit"])
def test_temporal_order_follows_the_rule(task):
    T, n = 100, 64
    inputs, targets, mask = pathological(task, T, n, seed=4)
    symbols = inputs.argmax(-1)
    last = last_step(mask)
    three = task.endswith("3bit")
    spots = [(1, 10), (30, 40), (50, 60)] if three else [(1, 10), (40, 50)]
    classes = []
    for i in range(n):
        assert symbols[i, 0] == 7 and inputs[i, last[i] + 1 :].sum() == 0
        assert symbols[i, last[i] if three else last[i] - 1] == 6
        special = torch.nonzero(symbols[i, : last[i] + 1] >= 4).flatten().tolist()
        special = [t for t in special if symbols[i, t] in (4, 5)]
        assert len(special) == len(spots)
        for t, (lo, hi) in zip(special, spots):
            assert f(lo, T) <= t <= f(hi, T)
        bits = [int(symbols[i, t]) - 4 for t in special]
        expected = bits[2] * 4 + bits[1] * 2 + bits[0] if three else bits[0] * 2 + bits[1]
        assert targets[i, last[i]] == expected
        classes.append(expected)
    assert np.bincount(classes).tolist() == [n // n_outputs(task)] * n_outputs(task)  # balanced


def test_random_permutation_follows_the_rule():
    inputs, targets, mask = pathological("random_permutation", 50, 30, seed=5)
    assert inputs.shape == (30, 50, 100) and (mask == 1).all()
    symbols = inputs.argmax(-1)
    assert torch.equal(symbols[:, 0], torch.arange(30) % 2)
    assert symbols[:, 1:].min() >= 2
    assert torch.equal(targets[:, :-1], symbols[:, 1:])
    assert torch.equal(targets[:, -1], symbols[:, 0])


@pytest.mark.parametrize(
    "task,chars,size", [("memorization_5bit", 5, 2), ("memorization_20bit", 10, 5)]
)
def test_memorization_follows_the_rule(task, chars, size):
    T = 60
    n = 32 if size == 2 else 20
    inputs, targets, mask = pathological(task, T, n, seed=6)
    length = f(100, T)
    assert inputs.shape == (n, length, size + 2) and (mask == 1).all()
    symbols = inputs.argmax(-1)
    data = symbols[:, :chars]
    assert data.max() < size
    go, blank = size, size + 1
    assert (symbols[:, length - chars - 1] == go).all()
    rest = torch.ones(length, dtype=torch.bool)
    rest[:chars] = False
    rest[length - chars - 1] = False
    assert (symbols[:, rest] == blank).all()
    assert torch.equal(targets[:, -chars:], data)
    assert (targets[:, :-chars] == size).all()  # the blank output class
    if n == size**chars:
        assert len({tuple(row) for row in data.tolist()}) == n  # all 32 patterns, once each


@pytest.mark.parametrize("task", ALL)
def test_perfect_predictions_have_zero_error(task):
    n = 32 if task == "memorization_5bit" else 20
    _, targets, mask = pathological(task, 100, n, seed=7)
    assert zero_one_error(task, perfect_outputs(task, targets), targets, mask) == 0.0


def test_regression_error_uses_the_0_04_tolerance():
    _, targets, mask = pathological("addition", 100, 50, seed=8)
    assert zero_one_error("addition", targets + 0.035, targets, mask) == 0.0
    assert zero_one_error("addition", targets - 0.045, targets, mask) == 1.0
    shifted = targets.clone()
    shifted[:10] += 1.0  # 10 of 50 sequences wrong
    assert zero_one_error("addition", shifted, targets, mask) == pytest.approx(0.2)


def test_constant_outputs_give_the_documented_errors():
    _, targets, mask = pathological("temporal_order", 100, 40, seed=9)
    out = constant_output("temporal_order", targets, mask)
    assert out.shape == (40, targets.shape[1], 4)
    assert zero_one_error("temporal_order", out, targets, mask) == 0.75
    for task, T, chars in (("memorization_5bit", 200, 5), ("memorization_20bit", 80, 10)):
        _, targets, mask = pathological(task, T, 16, seed=9)
        out = constant_output(task, targets, mask)
        assert zero_one_error(task, out, targets, mask) == pytest.approx(chars / f(100, T))
    _, targets, mask = pathological("xor", 100, 200, seed=9)
    ones = targets[..., 0].sum().item() / 200  # one masked step per sequence
    assert zero_one_error("xor", torch.full_like(targets, 3.0), targets, mask) == pytest.approx(
        1 - ones)


def test_biases_baselines_against_closed_forms():
    # sum of two U[0,1]: P(|s - 1| <= 0.04) = 0.08 - 0.04**2; product: F(p) = p - p ln p
    add = 1 - (0.08 - 0.04**2)
    cdf = lambda p: p - p * math.log(p)  # noqa: E731
    mul = 1 - (cdf(0.29) - cdf(0.21))
    assert biases_baseline("addition", 80, 10000) == pytest.approx(add, abs=0.015)
    assert biases_baseline("multiplication", 80, 10000) == pytest.approx(mul, abs=0.015)
    assert biases_baseline("xor", 100, 4000) == pytest.approx(0.5, abs=0.04)
    assert biases_baseline("temporal_order_3bit", 100, 800) == 0.875
    assert biases_baseline("random_permutation", 100, 200) == 1.0
    assert biases_baseline("memorization_5bit", 200, 32) == pytest.approx(0.025)


def test_center_subtracts_documented_means_and_keeps_the_error():
    raw = pathological("multiplication", 100, 300, seed=10)
    cen = pathological("multiplication", 100, 300, seed=10, center=True)
    real = torch.arange(raw[0].shape[1])[None, :] <= last_step(raw[2])[:, None]
    torch.testing.assert_close(cen[0][..., 0], (raw[0][..., 0] - 0.5) * real)
    assert torch.equal(cen[0][..., 1], raw[0][..., 1])
    torch.testing.assert_close(cen[1], raw[1] - 0.25 * raw[2][..., None])
    assert abs(cen[0][..., 0][real].mean().item()) < 0.01
    guess = torch.full_like(raw[1], 0.2)
    assert zero_one_error("multiplication", guess, raw[1], raw[2]) == zero_one_error(
        "multiplication", guess - 0.25, cen[1], cen[2])
    xor_raw, xor_cen = pathological("xor", 100, 50, 1), pathological("xor", 100, 50, 1, center=True)
    assert torch.equal(xor_raw[1], xor_cen[1])  # logistic targets stay in {0, 1}
    with pytest.raises(ValueError, match="center"):
        pathological("temporal_order", 100, 4, center=True)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown pathological task 'adding'.*'addition'"):
        pathological("adding", 100, 4, 0)
    with pytest.raises(ValueError, match="T=5 is too small"):
        pathological("addition", 5, 4, 0)
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        pathological("xor", 100, 0, 0)
    _, targets, mask = pathological("temporal_order", 100, 4, 0)
    with pytest.raises(ValueError, match="outputs must have shape"):
        zero_one_error("temporal_order", torch.zeros(4, mask.shape[1], 8), targets, mask)
    with pytest.raises(ValueError, match="targets must be integer class indices"):
        zero_one_error("temporal_order", torch.zeros(4, mask.shape[1], 4), targets.float(), mask)
    with pytest.raises(ValueError, match="at least one step"):
        zero_one_error("temporal_order", torch.zeros(4, mask.shape[1], 4), targets, mask * 0)
