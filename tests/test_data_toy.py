import pytest
import torch

from hessfree.data import sequence_reversal, toy


def test_quartic_value_gradient_and_descent():
    q = toy.quartic
    x = q.start(torch.float64).requires_grad_()
    assert torch.equal(x.detach(), torch.full((4,), 0.5, dtype=torch.float64))
    value = q(x)
    assert value.item() == pytest.approx(1.0)  # (4 * 0.25) ** 2
    (grad,) = torch.autograd.grad(value, x)
    # d/dx (|x|²)² = 4 |x|² x = 2 at x = 0.5 · ones
    torch.testing.assert_close(grad, torch.full((4,), 2.0, dtype=torch.float64))
    assert q.lr == 0.01 and q.start() is not q.start()
    y = q.start(torch.float64)
    for _ in range(100):
        y = y.detach().requires_grad_()
        (g,) = torch.autograd.grad(q(y), y)
        y = y - q.lr * g
    assert 0 < q(y).item() < 0.2  # converges towards 0, slowly (vanishing curvature)
    assert q(torch.zeros(4)).item() == 0.0
    with pytest.raises(ValueError, match="last dimension 4"):
        q(torch.zeros(3))


def test_sequence_reversal_format_and_determinism():
    inputs, targets = sequence_reversal(50, seed=3)
    assert inputs.shape == (50, 8, 8) and inputs.dtype == torch.float32
    assert targets.shape == (50, 8) and targets.dtype == torch.int64
    assert (inputs.sum(-1) == 1).all()
    symbols = inputs.argmax(-1)
    assert (symbols.sort(1).values == torch.arange(8)).all()  # permutations of 1..8 (as 0..7)
    assert torch.equal(targets, symbols.flip(1))
    again = sequence_reversal(50, seed=3)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)
    assert not torch.equal(sequence_reversal(50, seed=4)[0], inputs)
    assert sequence_reversal(3, 0, length=5)[0].shape == (3, 5, 5)
    with pytest.raises(ValueError, match="length: expected an integer >= 1"):
        sequence_reversal(3, 0, length=0)
