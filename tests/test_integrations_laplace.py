"""The laplace-torch backend against laplace-torch's own curvlinops and BackPACK backends."""

from __future__ import annotations

import pytest
import torch
from extras import require
from torch.utils.data import DataLoader, TensorDataset

laplace = require("laplace")
require("curvlinops")
require("backpack")

from laplace.curvature import BackPackEF, BackPackGGN, CurvlinopsEF, CurvlinopsGGN  # noqa: E402

from hessfree.errors import InputError  # noqa: E402
from hessfree.integrations.laplace import HessfreeEF, HessfreeGGN  # noqa: E402

F64 = torch.float64
#: BackPACK's own backward hooks warn on inputs without gradients (its code, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
#: laplace-torch's own backend for each structure: curvlinops builds the dense matrices,
#: BackPACK the exact diagonals (curvlinops' laplace-torch interface has no diagonal)
REFERENCE = {("ggn", "full"): CurvlinopsGGN, ("ef", "full"): CurvlinopsEF,
             ("ggn", "diag"): BackPackGGN, ("ef", "diag"): BackPackEF}
OURS = {"ggn": HessfreeGGN, "ef": HessfreeEF}


def problem(likelihood: str):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, generator=g, dtype=F64)
    if likelihood == "classification":
        y, out = torch.randint(0, 3, (30,), generator=g), 3
    else:
        y, out = torch.randn(30, 2, generator=g, dtype=F64), 2
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, out)).to(F64)
    return model, DataLoader(TensorDataset(X, y), batch_size=12)  # three uneven batches


def fitted(backend, likelihood, subset, structure):
    model, loader = problem(likelihood)
    sigma = 0.8 if likelihood == "regression" else 1.0
    la = laplace.Laplace(model, likelihood, subset_of_weights=subset,
                         hessian_structure=structure, backend=backend, prior_precision=0.7,
                         sigma_noise=sigma)
    la.fit(loader)
    return la, loader


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("structure", ["full", "diag"])
@pytest.mark.parametrize("curvature", ["ggn", "ef"])
def test_posterior_and_marginal_likelihood_equal_laplace_torchs_backends(
        likelihood, subset, structure, curvature):
    ours, loader = fitted(OURS[curvature], likelihood, subset, structure)
    ref, _ = fitted(REFERENCE[curvature, structure], likelihood, subset, structure)
    assert ours.posterior_precision.shape == ref.posterior_precision.shape
    assert rel(ours.posterior_precision, ref.posterior_precision) < 1e-6
    assert rel(ours.H, ref.H) < 1e-6
    assert abs(float(ours.log_marginal_likelihood() - ref.log_marginal_likelihood())) \
        < 1e-6 * abs(float(ref.log_marginal_likelihood()))
    # a marginal likelihood at another prior precision (the quantity optimised) too
    p = torch.tensor(2.5, dtype=F64)
    assert abs(float(ours.log_marginal_likelihood(p) - ref.log_marginal_likelihood(p))) \
        < 1e-6 * abs(float(ref.log_marginal_likelihood(p)))
    # the GLM predictive goes through the backend's Jacobians
    X = loader.dataset.tensors[0][:5]
    f_ours, v_ours = ours._glm_predictive_distribution(X)
    f_ref, v_ref = ref._glm_predictive_distribution(X)
    assert rel(f_ours, f_ref) < 1e-10 and rel(v_ours, v_ref) < 1e-6


def test_jacobians_equal_torch_func():
    model, loader = problem("classification")
    X = loader.dataset.tensors[0][:7]
    ours = HessfreeGGN(model, "classification")
    J, f = ours.jacobians(X)
    J_ref, f_ref = CurvlinopsGGN(model, "classification").jacobians(X)
    assert J.shape == (7, 3, sum(p.numel() for p in model.parameters()))
    assert rel(J, J_ref) < 1e-12 and rel(f, f_ref) < 1e-14


def test_kron_is_refused_in_one_line():
    model, loader = problem("classification")
    la = laplace.Laplace(model, "classification", subset_of_weights="all",
                         hessian_structure="kron", backend=HessfreeGGN)
    with pytest.raises(InputError, match=r"'kron'.*use hessian_structure='full' or 'diag'") \
            as err:
        la.fit(loader)
    assert "\n" not in str(err.value)


def test_subnetwork_laplace_selects_rows_and_columns():
    model, loader = problem("classification")
    idx = torch.tensor([0, 3, 7, 20, 31, 40])
    las = []
    for backend in (HessfreeGGN, CurvlinopsGGN):
        la = laplace.Laplace(model, "classification", subset_of_weights="subnetwork",
                             hessian_structure="full", backend=backend,
                             subnetwork_indices=idx)
        la.fit(loader)
        las.append(la)
    assert las[0].H.shape == (6, 6) and rel(las[0].H, las[1].H) < 1e-10
