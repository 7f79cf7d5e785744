"""The torch.optim facade: the same steps as HessianFree.step, the optimizer protocol, the state
round trip mid-run, and bad input in one line each."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hessfree
from hessfree.errors import InputError, InputTypeError
from hessfree.integrations.optim import HessianFreeOptimizer

F64 = torch.float64
CFG = hessfree.HFConfig.martens2010(initial_lambda=1.0, cg_max_iters=12)


class KeywordNet(nn.Module):
    """A model taking keyword inputs, for dict batches."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.body(features * scale)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def data(n: int = 96, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=F64)
    return x, (x @ torch.randn(6, 3, generator=g, dtype=F64)).argmax(1)


def pair(model: nn.Module, **kw) -> tuple[hessfree.Problem, HessianFreeOptimizer]:
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy(), weight_decay=1e-4)
    return problem, HessianFreeOptimizer(model.parameters(), problem, CFG, **kw)


def core(model: nn.Module) -> hessfree.HessianFree:
    return hessfree.HessianFree(
        hessfree.Problem(model, hessfree.losses.CrossEntropy(), weight_decay=1e-4), config=CFG)


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def one_line(err: pytest.ExceptionInfo, needle: str) -> None:
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg


# -- the same steps as the core ----------------------------------------------------------------

@pytest.mark.parametrize("how", ["closure", "batch", "fraction", "cases", "fixed loader"])
def test_facade_steps_equal_direct_hessianfree_steps(how):
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)  # collates [inputs, targets] lists
    fixed = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=20)
    policy = {"fraction": 0.25, "cases": 10, "fixed loader": fixed}.get(how)
    a, b = mlp(), mlp()
    ref = core(a)
    _, opt = pair(b, curvature=policy)
    for _ in range(2):
        for xb, yb in loader:
            curv = {"fraction": (xb[:8], yb[:8]), "cases": (xb[:10], yb[:10]),
                    "fixed loader": fixed}.get(how)
            want = ref.step((xb, yb), curv)
            batch = [xb, yb]
            got = opt.step(lambda: batch) if how == "closure" else opt.step(batch=batch)
            assert got == want.loss_before
            assert opt.last_stats.lambda_after == want.lambda_after
            assert opt.param_groups[0]["damping"] == ref.lam
            assert opt.param_groups[0]["lr"] == want.step_size
    assert ref.t == opt.hf.t == 6 and same(a, b)
    assert any(s.accepted for s in ref.history)


def test_dict_batches_and_a_curvature_batch_per_step():
    x, y = data()
    scale = torch.full((len(x), 1), 0.5, dtype=F64)
    torch.manual_seed(0)
    a = KeywordNet().double()
    b = KeywordNet().double()
    b.load_state_dict(a.state_dict())
    ref = core(a)
    _, opt = pair(b)
    for i in range(3):
        s = slice(32 * i, 32 * (i + 1))
        c = slice(32 * i, 32 * i + 12)
        want = ref.step(({"features": x[s], "scale": scale[s]}, y[s]),
                        ({"features": x[c], "scale": scale[c]}, y[c]))
        got = opt.step(batch={"features": x[s], "scale": scale[s], "labels": y[s]},
                       curvature_batch={"features": x[c], "scale": scale[c], "labels": y[c]})
        assert got == want.loss_before
    assert same(a, b)


def test_a_function_model_and_a_loader_of_dict_batches():
    x, y = data(48)

    def f(params, inputs):
        return torch.tanh(inputs["features"] @ params["0"]) @ params["1"]

    g = torch.Generator().manual_seed(3)
    w = [torch.randn(6, 5, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)]
    v = [t.clone() for t in w]
    problem = hessfree.Problem(f, hessfree.losses.CrossEntropy())
    ref = hessfree.HessianFree(problem, params=dict(zip("01", w)), config=CFG)
    opt = HessianFreeOptimizer(v, problem, CFG)
    rows = [{"features": x[i:i + 16], "labels": y[i:i + 16]} for i in range(0, 48, 16)]
    dicts = DataLoader(rows, batch_size=None)
    streamed = hessfree.batches.DictBatches(dicts, inputs=["features"])  # the core's adapter
    for _ in range(2):
        ref.step(streamed)
        opt.step(lambda: dicts)
    assert all(torch.equal(p, q) for p, q in zip(w, v))


# -- the torch.optim protocol ----------------------------------------------------------------

def test_it_is_a_torch_optimizer_over_the_models_parameters():
    model = mlp()
    _, opt = pair(model)
    assert isinstance(opt, torch.optim.Optimizer)
    assert len(opt.param_groups) == 1
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    calls = []
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(o.hf.t))
    x, y = data(32)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    loss = opt.step(lambda: (x, y))
    assert calls == [1] and isinstance(loss, float) and opt.last_stats.step == 0
    assert "83 parameters" in repr(opt) and "step 1" in repr(opt)


def test_a_subset_of_the_parameters_moves_alone():
    model = mlp()
    first = list(model[0].parameters())
    before = [p.detach().clone() for p in model.parameters()]
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    opt = HessianFreeOptimizer(first, problem, CFG)
    assert list(opt.hf.params) == ["0.weight", "0.bias"]
    x, y = data(32)
    assert opt.step(batch=(x, y)) > 0 and opt.last_stats.accepted
    now = list(model.parameters())
    assert not torch.equal(now[0], before[0]) and torch.equal(now[2], before[2])


def test_state_dict_round_trip_mid_run_resumes_bit_for_bit():
    x, y = data()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)] * 2
    full = mlp()
    _, opt = pair(full, curvature=0.5)
    for b in batches:
        opt.step(batch=b)
    part = mlp()
    _, opt = pair(part, curvature=0.5)
    for b in batches[:4]:
        opt.step(batch=b)
    buf = io.BytesIO()
    torch.save({"model": part.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain data: what Lightning/Accelerate load
    assert saved["opt"]["hessfree"]["version"] == 1 and saved["opt"]["state"] == {}
    for load in (True, False):
        model = mlp(seed=7)
        model.load_state_dict(saved["model"])
        _, resumed = pair(model, curvature=0.5)
        if load:
            resumed.load_state_dict(saved["opt"])
            assert resumed.hf.t == 4 and resumed.param_groups[0]["damping"] == opt.hf.lam
        for b in batches[4:]:
            resumed.step(batch=b)
        assert same(model, full) == load  # without the optimizer's state it is another run


def test_lr_schedulers_are_refused_in_one_line():
    _, opt = pair(mlp())
    with pytest.raises(InputError) as err:
        torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    one_line(err, "LR scheduler cannot drive HessianFreeOptimizer")
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    plateau.step(1.0)
    with pytest.raises(InputError) as err:
        plateau.step(2.0)  # the first change of the rate
    one_line(err, "param_groups[0]['lr']")
    opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # writing the same value is harmless


# -- bad input, one line each ------------------------------------------------------------------

def test_bad_closures_are_refused_in_one_line():
    model = mlp()
    _, opt = pair(model)
    x, y = data(16)
    with pytest.raises(InputTypeError) as err:
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    one_line(err, "closure: returned a Tensor (a loss?)")
    with pytest.raises(InputError) as err:
        opt.step(lambda: (model(x), y))
    one_line(err, "autograd graph (model outputs?)")
    with pytest.raises(InputError) as err:
        opt.step(lambda: None)
    one_line(err, "got neither")
    with pytest.raises(InputError) as err:
        opt.step(lambda: (x, y), batch=(x, y))
    one_line(err, "give one")
    with pytest.raises(InputTypeError) as err:
        opt.step(lambda: 3)
    one_line(err, "closure: returned int")
    with pytest.raises(InputTypeError) as err:
        opt.step(batch=x)
    one_line(err, "batch: got Tensor")
    with pytest.raises(InputTypeError) as err:
        opt.step(closure=(x, y))
    one_line(err, "closure: expected a callable")
    assert opt.hf.t == 0 and opt.last_stats is None


def test_missing_batches_and_targets_are_refused_in_one_line():
    x, y = data(32)
    _, opt = pair(mlp(), curvature=0.25)
    with pytest.raises(InputError) as err:  # a sub-batch needs one batch per step
        opt.step(batch=[(x[:16], y[:16]), (x[16:], y[16:])])
    one_line(err, "curvature: a sub-batch is taken from one (inputs, targets) batch")
    torch.manual_seed(0)
    _, opt = pair(KeywordNet().double())
    with pytest.raises(InputError) as err:
        opt.step(batch={"features": x, "scale": x[:, :1]})
    one_line(err, "the dict batch has no ['labels']")
    _, opt = pair(mlp(), curvature=DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    with pytest.raises(InputError) as err:  # the core's own check sees through the facade
        opt.step(batch=(x, y))
    one_line(err, "shuffle=True")


def test_bad_parameters_and_groups_are_refused_in_one_line():
    model = mlp()
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    stray = nn.Linear(2, 2).double()
    with pytest.raises(InputError) as err:
        HessianFreeOptimizer(list(model.parameters()) + list(stray.parameters()), problem)
    one_line(err, "2 of the 6 tensors (shapes [(2, 2), (2,)]) are not parameters")
    with pytest.raises(InputError) as err:
        HessianFreeOptimizer([{"params": model[0].parameters()},
                              {"params": model[2].parameters()}], problem)
    one_line(err, "one parameter group, got 2")
    with pytest.raises(InputError) as err:
        HessianFreeOptimizer([{"params": model.parameters(), "lr": 0.1}], problem)
    one_line(err, "per-group options ['lr']")
    with pytest.raises(InputError) as err:
        HessianFreeOptimizer([], problem)
    one_line(err, "at least one tensor")
    with pytest.raises(InputTypeError) as err:
        HessianFreeOptimizer(model.parameters(), model)
    one_line(err, "problem: expected a hessfree.Problem")
    for bad, needle in ((1.5, "(0, 1]"), (0, ">= 1"), (True, "got a bool")):
        with pytest.raises((InputError, InputTypeError)) as err:
            HessianFreeOptimizer(model.parameters(), problem, curvature=bad)
        one_line(err, needle)
    phases = [hessfree.Phase(curvature=hessfree.BatchSpec("minibatch", fraction=0.1))]
    with pytest.raises(InputError) as err:
        HessianFreeOptimizer(model.parameters(), problem, phases=phases)
    one_line(err, "phases[0]: its batch specs")
    opt = HessianFreeOptimizer(model[0].parameters(), problem)
    with pytest.raises(InputError) as err:
        opt.add_param_group({"params": model[2].parameters()})
    one_line(err, "add_param_group: HF solves one linear system")


def test_foreign_and_mismatched_states_are_refused_in_one_line():
    model = mlp()
    _, opt = pair(model)
    with pytest.raises(InputError) as err:
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
    one_line(err, "not a HessianFreeOptimizer state")
    state = opt.state_dict()
    state["hessfree"]["version"] = 99
    with pytest.raises(InputError) as err:
        opt.load_state_dict(state)
    one_line(err, "version 99")
    problem = hessfree.Problem(model, hessfree.losses.CrossEntropy())
    other = HessianFreeOptimizer(model[0].parameters(), problem, CFG)
    with pytest.raises(InputError) as err:
        other.load_state_dict(opt.state_dict())
    one_line(err, "saved for parameters")


def test_mixed_precision_is_refused_in_one_line():
    model = mlp()
    _, opt = pair(model)
    x, y = data(16)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(InputError) as err:
        opt.step(batch=(x, y))
    one_line(err, "precision: the model runs under autocast")
    assert opt.hf.t == 0
