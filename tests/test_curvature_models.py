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
