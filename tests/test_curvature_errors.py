"""Bad input gets a clear error naming the argument."""

import pytest
import torch
from curvature_cases import make_case
from torch import nn

import hessfree


@pytest.fixture
def ae():
    model, loss, batch = make_case("autoencoder", "bce", "mean", torch.float32, seed=1)
    return hessfree.Problem(model, loss), batch


def test_vector_wrong_length_or_shape(ae):
    problem, batch = ae
    G = hessfree.GGN(problem, batch)
    with pytest.raises(ValueError, match=r"v: expected a flat 1-D tensor of length \d+"):
        G @ torch.zeros(G.dim + 1)
    with pytest.raises(ValueError, match=rf"V: expected a tensor of shape \({G.dim}, k\)"):
        G @ torch.zeros(2, G.dim)  # a block of columns is (dim, k)
    with pytest.raises(ValueError, match="v: expected a flat"):
        G.matvec(torch.zeros(2, G.dim))
    with pytest.raises(ValueError, match=r"v\['0.weight'\]: expected shape"):
        G @ ([torch.zeros(3, 3)] + [torch.zeros(p.shape) for p in list(G.params.values())[1:]])
    with pytest.raises(ValueError, match="v: expected .* tensors"):
        G @ [torch.zeros(4, 6)]
    with pytest.raises(ValueError, match="v: dict keys"):
        G @ {"nope": torch.zeros(3)}
    with pytest.raises(ValueError, match="v: expected dtype"):
        G @ torch.zeros(G.dim, dtype=torch.float64)
    with pytest.raises(TypeError, match="v: expected a Tensor"):
        G @ 3.0


@pytest.mark.parametrize("cls", [hessfree.losses.MSE, hessfree.losses.BCEWithLogits,
                                 hessfree.losses.CrossEntropy])
def test_bad_reduction(cls):
    with pytest.raises(ValueError, match="reduction: expected 'mean' or 'sum', got 'none'"):
        cls(reduction="none")


def test_generic_loss_without_per_case_reduction():
    with pytest.raises(ValueError, match="reduction"):
        hessfree.Problem(nn.Linear(2, 2), nn.MSELoss(reduction="none"))


def test_no_trainable_parameters():
    model = nn.Linear(3, 2)
    model.requires_grad_(False)
    problem = hessfree.Problem(model, hessfree.losses.MSE())
    with pytest.raises(ValueError, match="params: the model has no trainable parameters"):
        hessfree.GGN(problem, (torch.randn(4, 3), torch.randn(4, 2)))


def test_targets_shape_mismatch(ae):
    problem, (x, t) = ae
    with pytest.raises(ValueError, match=r"targets: expected shape \(5, 6\)"):
        hessfree.GGN(problem, (x, t[:, :5]))
    ce = hessfree.Problem(problem.model, hessfree.losses.CrossEntropy())
    with pytest.raises(ValueError, match="targets: class indices must have shape"):
        hessfree.GGN(ce, (x, torch.zeros(5, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"targets: class indices must lie in \[0, 6\)"):
        hessfree.GGN(ce, (x, torch.full((5,), 6)))
    with pytest.raises(ValueError, match="targets mask: expected shape"):
        hessfree.GGN(problem, (x, (t, torch.ones(5, 2))))
    with pytest.raises(ValueError, match="first dimension"):
        hessfree.GGN(problem, (x, t[:4]))


def test_float_class_targets_name_the_dtype():
    """Class indices given as floats: the message names the dtype, not an equal shape."""
    ce = hessfree.Problem(nn.Linear(3, 4), hessfree.losses.CrossEntropy())
    x, y = torch.randn(200, 3), torch.randint(0, 4, (200,))
    with pytest.raises(ValueError, match=r"integer tensor \(torch.long\), got torch.float32 "
                                         r"of shape \(200,\); convert them with .long\(\)"):
        hessfree.GGN(ce, (x, y.float()))
    hessfree.GGN(ce, (x, y))  # integer indices are fine


class _HalfUsed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.spare = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("kind", ["GGN", "Hessian", "EmpiricalFisher", "HessianFree"])
def test_a_registered_but_unused_parameter_is_refused(kind):
    """The README's promise: parameters the model does not use are refused in one line."""
    problem = hessfree.Problem(_HalfUsed(), hessfree.losses.MSE())
    batch = (torch.randn(6, 3), torch.randn(6, 2))
    with pytest.raises(ValueError, match=r"outputs do not depend on \['spare.weight', "
                                         r"'spare.bias'\]"):
        if kind == "HessianFree":
            hessfree.HessianFree(problem).step(batch)
        else:
            getattr(hessfree, kind)(problem, batch)
    problem.model.spare.requires_grad_(False)  # excluded: the rest works
    getattr(hessfree, "GGN" if kind == "HessianFree" else kind)(problem, batch)


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.BatchNorm1d(4)])
def test_train_mode_dropout_batchnorm(layer):
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 2))
    problem = hessfree.Problem(model, hessfree.losses.MSE())
    batch = (torch.randn(8, 3), torch.randn(8, 2))
    with pytest.raises(ValueError, match="Dropout/BatchNorm in training mode"):
        hessfree.GGN(problem, batch)
    model.eval()
    hessfree.GGN(problem, batch)  # fine in eval mode


def test_nondeterministic_function_model():
    def f(params, x):
        return x @ params["W"] + 0.1 * torch.randn(x.shape[0], 2)

    problem = hessfree.Problem(f, hessfree.losses.MSE())
    with pytest.raises(ValueError, match="not deterministic"):
        hessfree.GGN(problem, (torch.randn(5, 3), torch.randn(5, 2)),
                     params={"W": torch.randn(3, 2)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_batch(ae, bad):
    problem, (x, t) = ae
    x = x.clone()
    x[2, 3] = bad
    with pytest.raises(ValueError, match="batch: the batch contains non-finite values"):
        hessfree.GGN(problem, (x, t))
    with pytest.raises(ValueError, match=r"batch\[1\]: the batch contains non-finite"):
        hessfree.GGN(problem, [(t, t), (x, t)])


def test_bad_batch_structure_and_arguments(ae):
    problem, (x, t) = ae
    with pytest.raises(TypeError, match="batch: expected a tuple"):
        hessfree.GGN(problem, x)
    with pytest.raises(ValueError, match="list of minibatches is empty"):
        hessfree.GGN(problem, [])
    with pytest.raises(ValueError, match="backend"):
        hessfree.GGN(problem, (x, t), backend="magic")
    with pytest.raises(TypeError, match="problem"):
        hessfree.GGN(problem.model, (x, t))
    with pytest.raises(ValueError, match="weight_decay"):
        hessfree.Problem(problem.model, problem.loss, weight_decay=-1)
    with pytest.raises(TypeError, match="loss"):
        hessfree.Problem(problem.model, 3)
    with pytest.raises(ValueError, match="max_dim"):
        hessfree.GGN(problem, (x, t)).dense(max_dim=10)
