"""Small models, data and independent dense references for the curvature tests.

The references use only torch.func (jacrev, hessian) and torch's own loss functions, never the
package's loss code, so a wrong closed form in hessfree.losses cannot cancel out.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

import hessfree


class TinyRNN(nn.Module):
    """tanh RNN, output at every step; exposes hidden pre-activations for structural damping."""

    hidden_nonlinearity = "tanh"

    def __init__(self, n_in: int = 2, n_h: int = 4, n_out: int = 3) -> None:
        super().__init__()
        self.w_in = nn.Linear(n_in, n_h)
        self.w_hh = nn.Linear(n_h, n_h, bias=False)
        self.w_out = nn.Linear(n_h, n_out)

    def forward(self, x, return_hidden=False):
        u = self.w_in(x)
        h = x.new_zeros(x.shape[0], self.w_hh.in_features)
        pre, hs = [], []
        for t in range(x.shape[1]):
            a = u[:, t] + self.w_hh(h)
            h = torch.tanh(a)
            pre.append(a)
            hs.append(h)
        out = self.w_out(torch.stack(hs, 1))
        return (out, torch.stack(pre, 1)) if return_hidden else out


class TupleInput(nn.Module):
    """A model called as model(x1, x2)."""

    def __init__(self, n_out: int = 3) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)
        self.c = nn.Linear(4, n_out)

    def forward(self, x1, x2):
        return self.c(torch.tanh(self.a(x1)) * torch.sigmoid(self.b(x2)))


def mlp(n_out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, n_out))


def autoencoder() -> nn.Module:
    """6-4-2-4-6 with logistic hidden units and a linear code layer."""
    return nn.Sequential(nn.Linear(6, 4), nn.Sigmoid(), nn.Linear(4, 2), nn.Linear(2, 4),
                         nn.Sigmoid(), nn.Linear(4, 6))


MODELS = ("mlp", "autoencoder", "rnn", "tuple")
LOSSES = ("mse", "bce", "ce")


def make_case(model_name: str, loss_name: str, reduction: str, dtype, seed: int = 0, n: int = 5):
    """(model, loss, batch) with fresh random inputs and targets fitting the loss."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if model_name == "mlp":
        model, inputs, out_shape = mlp(), torch.randn(n, 5, generator=g), (n, 3)
    elif model_name == "autoencoder":
        model, inputs, out_shape = autoencoder(), torch.rand(n, 6, generator=g), (n, 6)
    elif model_name == "rnn":
        model, inputs, out_shape = TinyRNN(), torch.randn(n, 4, 2, generator=g), (n, 4, 3)
    elif model_name == "tuple":
        model = TupleInput()
        inputs = (torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g))
        out_shape = (n, 3)
    else:
        raise ValueError(model_name)
    model = model.to(dtype)
    inputs = tuple(x.to(dtype) for x in inputs) if isinstance(inputs, tuple) else inputs.to(dtype)
    if loss_name == "ce":
        targets = torch.randint(0, out_shape[-1], out_shape[:-1], generator=g)
    elif loss_name == "bce":
        targets = torch.rand(out_shape, generator=g).to(dtype)
    else:
        targets = torch.randn(out_shape, generator=g).to(dtype)
    loss = {"mse": hessfree.losses.MSE, "bce": hessfree.losses.BCEWithLogits,
            "ce": hessfree.losses.CrossEntropy}[loss_name](reduction)
    return model, loss, (inputs, targets)


def reference_loss(loss_name: str, reduction: str, z, t):
    """Independent per-batch loss with the papers' reduction convention, via torch.nn.functional."""
    n = z.shape[0]
    if loss_name == "mse":
        total = F.mse_loss(z, t, reduction="sum")
    elif loss_name == "bce":
        total = F.binary_cross_entropy_with_logits(z, t, reduction="sum")
    else:
        total = F.cross_entropy(z.reshape(-1, z.shape[-1]), t.reshape(-1), reduction="sum")
    return total / n if reduction == "mean" else total


class Reference:
    """Dense float64 matrices of one case: GGN, Hessian, empirical Fisher, structural term."""

    def __init__(self, model, loss_name, reduction, batch, weight_decay=0.0):
        self.model = model
        params = {k: v.detach().to(torch.float64) for k, v in model.named_parameters()}
        self.layout = hessfree.vectors.ParamLayout.from_params(params)
        self.theta = torch.cat([p.reshape(-1) for p in params.values()])
        inputs, targets = batch
        self.inputs = tuple(x.double() for x in inputs) if isinstance(inputs, tuple) \
            else inputs.double()
        self.t = targets.double() if targets.is_floating_point() else targets
        self.loss_name, self.reduction, self.wd = loss_name, reduction, weight_decay
        self.model64 = copy.deepcopy(model).double()

    def f(self, th, hidden=False):
        args = self.inputs if isinstance(self.inputs, tuple) else (self.inputs,)
        kw = {"return_hidden": True} if hidden else {}
        return functional_call(self.model64, self.layout.split(th), args, kw)

    def objective(self, th):
        return reference_loss(self.loss_name, self.reduction, self.f(th), self.t) \
            + 0.5 * self.wd * th.square().sum()

    def ggn(self):
        out = self.f(self.theta)
        J = jacrev(lambda th: self.f(th).reshape(-1))(self.theta)
        HL = hessian(lambda z: reference_loss(self.loss_name, self.reduction,
                                              z.reshape(out.shape), self.t))(out.reshape(-1))
        return J.T @ HL @ J + self.wd * torch.eye(J.shape[1], dtype=torch.float64)

    def hessian(self):
        return hessian(self.objective)(self.theta)

    def grad(self):
        return torch.func.grad(self.objective)(self.theta)

    def fisher(self):
        n = self.f(self.theta).shape[0]

        def per_case(th):
            z = self.f(th)
            return torch.stack([reference_loss(self.loss_name, "sum", z[i:i + 1], self.t[i:i + 1])
                                for i in range(n)])

        Jl = jacrev(per_case)(self.theta)
        s = 1.0 / n if self.reduction == "mean" else 1.0
        return s * Jl.T @ Jl + self.wd * torch.eye(Jl.shape[1], dtype=torch.float64)

    def structural(self):
        """J_aᵀ diag(¼(1 - tanh(a)²)) J_a, scaled like the loss ([HF-RNN] ``Tanh.H_prod``)."""
        _, a = self.f(self.theta, hidden=True)
        Ja = jacrev(lambda th: self.f(th, hidden=True)[1].reshape(-1))(self.theta)
        d = 0.25 * (1 - torch.tanh(a.reshape(-1)).square())
        s = 1.0 / a.shape[0] if self.reduction == "mean" else 1.0
        return s * Ja.T @ (d[:, None] * Ja)


class TokenMSE(hessfree.losses.MSE):
    """Squared error over ``(B, T, D)`` outputs, averaged over the positions the mask keeps.

    A per-token loss in the accumulator's contract: it counts its tokens that count.
    """

    def count(self, targets):
        _, mask = targets
        return int(mask.sum())

    def scale_for(self, n):
        return 1.0 / n


def sequence_case(n: int = 7, seed: int = 0):
    """(model, x, y, mask): a Tanh MLP applied along ``(B, T=5)`` sequences, a token mask."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(n, 5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, 5, 2, generator=g, dtype=torch.float64)
    mask = (torch.rand(n, 5, generator=g) > 0.4).to(torch.float64)
    mask[0] = 0.0  # a sequence with no token that counts
    return model, x, y, mask


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
