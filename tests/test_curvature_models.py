"""Curvature products on the models people bring: LSTM, embeddings, convolutions with BatchNorm in
eval mode, Dropout(p=0), dict inputs, against dense float64 references from torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

import hessfree
from hessfree.errors import InputError

F64 = torch.float64


class LSTMTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.out(h)


class EmbedBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.out = nn.Linear(3, 4)

    def forward(self, idx):
        return self.out(torch.tanh(self.emb(idx).mean(1)))


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.drop = nn.Dropout(p=0.0)
        self.out = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


class KeywordModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)

    def forward(self, input_ids, extra):
        return self.a(input_ids) + self.b(extra)


def case(name: str, g: torch.Generator):
    if name == "lstm":
        return LSTMTagger(), torch.randn(5, 6, 3, generator=g), "mse", (5, 6, 2)
    if name == "embedding":
        return EmbedBag(), torch.randint(0, 7, (5, 4), generator=g), "ce", (5,)
    if name == "conv-bn-eval":
        m = ConvBN()
        with torch.no_grad():  # running statistics that are not the defaults
            m.bn.running_mean.copy_(torch.randn(2, generator=g))
            m.bn.running_var.copy_(torch.rand(2, generator=g) + 0.5)
        m.eval()
        m.drop.train()  # Dropout(p=0) is the identity even in training mode
        return m, torch.randn(5, 1, 4, 4, generator=g), "ce", (5,)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["lstm", "embedding", "conv-bn-eval"])
def test_ggn_and_hessian_match_dense_references(name):
    g = torch.Generator().manual_seed(11)
    model, x, loss_name, tshape = case(name, g)
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    if loss_name == "mse":
        t = torch.randn(tshape, generator=g, dtype=F64)
        loss = hessfree.losses.MSE()

        def ref_loss(z):
            return ((z - t) ** 2).sum() / z.shape[0]
    else:
        t = torch.randint(0, 3 if name != "embedding" else 4, tshape, generator=g)
        loss = hessfree.losses.CrossEntropy()

        def ref_loss(z):
            return torch.nn.functional.cross_entropy(z, t, reduction="sum") / z.shape[0]
    problem = hessfree.Problem(model, loss)
    params = {n: p.detach() for n, p in model.named_parameters()}
    theta = torch.cat([p.reshape(-1) for p in params.values()])
    layout = hessfree.vectors.ParamLayout.from_params(params)

    def f(th):
        return functional_call(model, layout.split(th), (x,))

    out = f(theta)
    J = jacrev(lambda th: f(th).reshape(-1))(theta)
    HL = hessian(lambda z: ref_loss(z.reshape(out.shape)))(out.reshape(-1))
    dense_ggn = J.T @ HL @ J
    dense_hess = hessian(lambda th: ref_loss(f(th)))(theta)
    v = torch.randn(theta.numel(), generator=g, dtype=F64)
    G = hessfree.GGN(problem, (x, t))
    H = hessfree.Hessian(problem, (x, t))
    torch.testing.assert_close(G @ v, dense_ggn @ v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(H @ v, dense_hess @ v, rtol=1e-9, atol=1e-11)


def test_dict_inputs_are_keywords():
    g = torch.Generator().manual_seed(3)
    model = KeywordModel().double()
    a, b = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 2, generator=g, dtype=F64)
    t = torch.randn(6, 4, generator=g, dtype=F64)
    problem = hessfree.Problem(model, hessfree.losses.MSE())
    dicts = [{"input_ids": a[:3], "extra": b[:3], "y": t[:3]},
             {"input_ids": a[3:], "extra": b[3:], "y": t[3:]}]
    G = hessfree.GGN(problem, hessfree.batches.DictBatches(dicts, ("input_ids", "extra"), "y"))
    G2 = hessfree.GGN(problem, ({"input_ids": a, "extra": b}, t))
    v = torch.randn(G.dim, generator=g, dtype=F64)
    torch.testing.assert_close(G @ v, G2 @ v, rtol=1e-12, atol=1e-14)
    with pytest.raises(InputError, match=r"no key\(s\) \['nope'\]"):
        hessfree.GGN(problem, hessfree.batches.DictBatches(dicts, ("input_ids", "nope"), "y"))


def test_training_mode_randomness_is_refused_but_dropout_zero_is_not():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=F64)
    problem = hessfree.Problem(model, hessfree.losses.MSE())
    with pytest.raises(InputError, match="Dropout/BatchNorm in training mode"):
        hessfree.GGN(problem, (x, torch.zeros(5, 2, dtype=F64)))
    model[1].p = 0.0
    hessfree.GGN(problem, (x, torch.zeros(5, 2, dtype=F64)))  # accepted


class Recurrent(nn.Module):
    """``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (any layers, either layout) and a linear read-out.

    Takes cases on dim 0 like every hessfree batch; a sequence-first module gets them
    transposed.
    """

    def __init__(self, cell: type, layers: int, batch_first: bool, inputs: int = 3,
                 hidden: int = 4, outputs: int = 2) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(inputs, hidden, num_layers=layers, batch_first=batch_first)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, x):
        h, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        return self.out(h if self.batch_first else h.transpose(0, 1))


CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def per_case_reference(model, x, t):
    """diag EF = mean over cases of the squared per-case gradients, one autograd call each."""
    rows = []
    for i in range(x.shape[0]):
        loss = ((model(x[i:i + 1]) - t[i:i + 1]) ** 2).sum()
        rows.append(torch.cat([g.reshape(-1) for g in
                               torch.autograd.grad(loss, list(model.parameters()))]))
    return torch.stack(rows).square().mean(0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # LSTM: vmap's slow fallback, not ours
@pytest.mark.filterwarnings("ignore:per-case gradients:RuntimeWarning")
@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("layers,batch_first", [(1, True), (2, False)])
def test_recurrent_modules_fisher_diagonal(cell, layers, batch_first):
    """The EF diagonal of torch's recurrent modules: vmap where it batches them, else one case
    at a time; both against plain autograd per case, and against each other where both run."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = Recurrent(CELLS[cell], layers, batch_first).double()
    x = torch.randn(6, 5, 3, generator=g, dtype=F64)
    t = torch.randn(6, 5, 2, generator=g, dtype=F64)
    F = hessfree.EmpiricalFisher(hessfree.Problem(model, hessfree.losses.MSE()), (x, t))
    ref = per_case_reference(model, x, t)
    torch.testing.assert_close(F.diagonal(), ref, rtol=1e-10, atol=1e-14)
    loop = F.diagonal(method="loop")
    torch.testing.assert_close(loop, ref, rtol=1e-10, atol=1e-14)
    # vmap batches the LSTM in float32 (torch's batching fallback), never the fused RNN/GRU
    # kernels: where it runs, the two paths agree; where not, the error names vmap
    F32 = hessfree.EmpiricalFisher(hessfree.Problem(model.float(), hessfree.losses.MSE()),
                                   (x.float(), t.float()))
    if cell == "lstm":
        torch.testing.assert_close(F32.diagonal(method="vmap", chunk_size=4),
                                   F32.diagonal(method="loop"), rtol=1e-4, atol=1e-7)
    else:
        with pytest.raises(InputError, match="'vmap' cannot batch this model") as err:
            F32.diagonal(method="vmap")
        assert "method 'auto' or 'loop'" in str(err.value)


def test_the_loop_matches_vmap_on_a_feedforward_model():
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)).double()
    x, t = torch.randn(9, 2, 6, generator=g, dtype=F64), torch.randint(0, 2, (9,), generator=g)
    F = hessfree.EmpiricalFisher(hessfree.Problem(model, hessfree.losses.CrossEntropy()), (x, t))
    torch.testing.assert_close(F.diagonal(method="loop"), F.diagonal(method="vmap", chunk_size=4),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("cell,layers,batch_first", [("gru", 2, True), ("rnn", 1, True),
                                                     ("rnn", 2, False), ("lstm", 2, True)])
def test_recurrent_models_train_with_default_hf(cell, layers, batch_first):
    """A regression RNN/GRU/LSTM takes 5 HF steps with HFConfig() defaults (preconditioner
    on): the per-case gradients fall back to one case at a time, with one warning that says
    why, and the objective falls."""
    import warnings

    from hessfree.curvature import diagonal

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Recurrent(CELLS[cell], layers, batch_first, hidden=8, outputs=1)
    x = torch.randn(48, 10, 3, generator=g)
    t = x[:, :, :1].cumsum(1) * 0.3  # a running sum: needs the recurrence
    opt = hessfree.HessianFree(hessfree.Problem(model, hessfree.losses.MSE()),
                               config=hessfree.HFConfig())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = [opt.step((x, t), (x[:24], t[:24])) for _ in range(5)]
    ours = [w for w in caught if "per-case gradients" in str(w.message)]
    assert len(ours) == (0 if cell == "lstm" else 1)  # once per model, naming vmap
    assert all("torch.func.vmap cannot batch" in str(w.message) for w in ours)
    assert (model in diagonal._UNBATCHABLE) == (cell != "lstm")
    assert all(s.cg_iters > 0 for s in steps) and any(s.accepted for s in steps)
    assert steps[-1].loss_after < steps[0].loss_before  # λ0 = 45: slowly, but down
