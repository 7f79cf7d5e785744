"""Blocks chosen by module or pattern equal blocks of the dense matrix; per-module reports."""

from __future__ import annotations

import pytest
import torch
from curvature_cases import MODELS, make_case
from torch.utils.flop_counter import FlopCounterMode

import hessfree
from hessfree.curvature import module_groups, report, restrict, select_params
from hessfree.errors import InputError, InputTypeError

F64 = torch.float64
KINDS = {"ggn": hessfree.GGN, "hessian": hessfree.Hessian, "fisher": hessfree.EmpiricalFisher}


def indices(params, chosen):
    pos, out = 0, []
    for n, p in params.items():
        if n in chosen:
            out += range(pos, pos + p.numel())
        pos += p.numel()
    return torch.tensor(out)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_filtered_operator_is_the_block_of_the_dense_matrix(model_name, kind):
    model, loss, batch = make_case(model_name, "ce", "mean", F64, seed=1, n=6)
    problem = hessfree.Problem(model, loss, weight_decay=1e-3)
    full = KINDS[kind](problem, batch)
    D = full.dense()
    names = list(full.params)
    filters = [names[0].rsplit(".", 1)[0], "*.bias", [names[0], names[-1]],
               lambda n: n.endswith("weight")]
    for f in filters:
        chosen = select_params(full.params, f)
        idx = indices(full.params, chosen)
        for op in (KINDS[kind](problem, batch, param_filter=f), restrict(full, f)):
            assert op.dim == len(idx)
            want = D[idx][:, idx]
            assert float((op.dense() - want).abs().max()) <= 1e-12 * float(want.abs().max())


def test_the_other_parameters_stay_at_the_given_values():
    model, loss, batch = make_case("mlp", "mse", "mean", F64, seed=2, n=6)
    problem = hessfree.Problem(model, loss)
    theta = {n: p.detach() + 0.3 for n, p in model.named_parameters()}
    D = hessfree.GGN(problem, batch, params=theta).dense()
    block = hessfree.GGN(problem, batch, params=theta, param_filter="2", cache=False)
    with torch.no_grad():  # the live module moves; the operator does not
        for p in model.parameters():
            p.mul_(-2.0)
    idx = indices(theta, select_params(theta, "2"))
    assert torch.allclose(block.dense(), D[idx][:, idx], rtol=1e-12, atol=1e-15)
    damped = restrict(hessfree.GGN(problem, batch, params=theta).damped(0.4), "2")
    assert torch.allclose(damped.dense(), D[idx][:, idx] + 0.4 * torch.eye(len(idx), dtype=F64),
                          rtol=1e-12, atol=1e-15)


def test_a_block_computes_only_what_it_needs():
    """A block's product costs fewer floating-point operations than the full product."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.Tanh(),
                                torch.nn.Linear(40, 30), torch.nn.Tanh(),
                                torch.nn.Linear(30, 5)).double()
    x, y = torch.randn(64, 50, dtype=F64), torch.randint(0, 5, (64,))
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    full = hessfree.GGN(problem, (x, y), backend="double-backward")
    block = hessfree.GGN(problem, (x, y), param_filter="4")

    def flops(op):
        v = torch.randn(op.dim, dtype=F64)
        with FlopCounterMode(display=False) as count:
            op @ v
        return count.get_total_flops()

    assert flops(block) < 0.2 * flops(full)


def test_selection_errors_and_groups():
    model, loss, batch = make_case("autoencoder", "mse", "mean", F64)
    params = dict(model.named_parameters())
    with pytest.raises(InputError, match="param_filter: 'decoder' chooses no parameter"):
        select_params(params, "decoder")
    with pytest.raises(InputTypeError, match="param_filter"):
        select_params(params, 3)
    groups = module_groups(params)
    assert list(groups) == ["0", "2", "3", "5"]
    assert groups["0"] == slice(0, 28) and groups["5"].stop == sum(p.numel() for p in
                                                                  params.values())
    assert len(module_groups(params, "parameter")) == len(params)
    with pytest.raises(InputError, match="by:"):
        module_groups(params, "layer")


def test_report_of_a_ggn_matches_its_dense_blocks(tmp_path):
    model, loss, batch = make_case("autoencoder", "bce", "mean", F64, seed=3, n=10)
    G = hessfree.GGN(hessfree.Problem(model, loss, weight_decay=1e-3), batch)
    D = G.dense()
    rep = report(G, top=2)
    assert rep.method == "exact" and [b.name for b in rep.blocks] == ["0", "2", "3", "5"]
    for b, sl in zip(rep.blocks, module_groups(G.params).values()):
        Db = D[sl, sl]
        assert abs(b.trace - float(torch.trace(Db))) < 1e-10 * float(torch.trace(Db))
        assert b.trace_stderr == 0 and b.params == sl.stop - sl.start
        top = torch.linalg.eigvalsh(Db).flip(0)[:2]
        assert torch.allclose(torch.tensor(b.top, dtype=F64), top, rtol=1e-8)
        assert b.diag_min == pytest.approx(float(torch.diagonal(Db).min()), rel=1e-10)
        assert b.diag_max == pytest.approx(float(torch.diagonal(Db).max()), rel=1e-10)
    table = rep.table()
    assert table.count("\n| ") == 1 + 4 and "trace ± s.e." in table
    out = rep.figure(tmp_path / "report.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_damped_hessian_by_hutchinson():
    model, loss, batch = make_case("mlp", "ce", "mean", F64, seed=4, n=10)
    H = hessfree.Hessian(hessfree.Problem(model, loss), batch)
    D = H.dense()
    rep = report(H.damped(0.5), by="parameter", samples=200,
                 generator=torch.Generator().manual_seed(0))
    assert rep.method == "hutchinson" and rep.operator == "Hessian + 0.5 I"
    assert len(rep.blocks) == 4
    # one set of probes served every block: 200 products, plus the blocks' eigenvalues
    assert rep.diagonal.products == 200
    for b, sl in zip(rep.blocks, module_groups(H.params, "parameter").values()):
        exact = float(torch.trace(D[sl, sl])) + 0.5 * (sl.stop - sl.start)
        assert abs(b.trace - exact) < 5 * b.trace_stderr
        top = float(torch.linalg.eigvalsh(D[sl, sl])[-1]) + 0.5
        assert b.top[0] == pytest.approx(top, rel=1e-8)
