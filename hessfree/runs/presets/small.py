"""Small built-in experiments: sanity checks the package was first specified with.

An MNIST classifier and toy problems (a quartic, sequence reversal, ...), each small enough to run
in seconds; their descriptions (``hessfree list``) say what each checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hessfree import _checks, batches, models
from hessfree import data as hdata
from hessfree.curvature import losses
from hessfree.errors import InputError
from hessfree.hf import HFConfig
from hessfree.models.init import esn_init_
from hessfree.runs.definition import Dataset, Experiment
from hessfree.runs.settings import (
    GRAD_CHUNK,
    DataSettings,
    HFSettings,
    MomentumHFSettings,
    MomentumSettings,
)

__all__ = ["SMALL"]


@dataclass(frozen=True)
class MLPData(DataSettings):
    """Settings of the MNIST classifier: hidden units and the data folder."""

    n_train: int = 60000
    n_hidden: int = 600
    root: str = ""

    def __post_init__(self) -> None:
        """Validate."""
        super().__post_init__()
        _checks.integer(self.n_train, "n_train", minimum=1)
        _checks.integer(self.n_hidden, "n_hidden", minimum=1)


@dataclass(frozen=True)
class SequenceData(DataSettings):
    """Settings of the sequence-reversal task: sequences per batch and hidden units."""

    n_train: int = 1000
    n_test: int = 1000
    n_hidden: int = 100

    def __post_init__(self) -> None:
        """Validate."""
        super().__post_init__()
        _checks.integer(self.n_train, "n_train", minimum=1)
        _checks.integer(self.n_hidden, "n_hidden", minimum=1)


def _mlp_error(model: nn.Module, batch: Any, s: MLPData) -> float:
    x, y = batch
    with torch.no_grad():
        wrong = sum(int((model(xc).argmax(-1) != yc).sum())
                    for xc, yc in batches.split((x, y), GRAD_CHUNK))
    return wrong / x.shape[0]


def _mlp_data(s: MLPData, seed: int) -> Dataset:
    xtr, ytr, xte, yte = hdata.mnist(s.root or None)
    if s.n_train > len(xtr):
        raise InputError(f"n_train: MNIST's training set has {len(xtr)} cases, asked for "
                         f"{s.n_train}")
    return Dataset((xtr[: s.n_train], ytr[: s.n_train]), (xte, yte))


def _mlp_model(s: MLPData, g: torch.Generator) -> nn.Module:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    return models.MLP([784, s.n_hidden, 10], "logistic", output="softmax")


def _mnist_mlp() -> Experiment:
    mom = MomentumSettings(batch_size=100, lr=0.01, schedule="constant", mu_max=0.9,
                           final_steps=0)
    return Experiment(
        name="mnist-mlp", description="MNIST classifier 784-600-10 (logistic hidden, softmax), "
        "a small check of SGD/CM/NAG at lr 0.01, mu 0.9, minibatch 100",
        data=_mlp_data, model=_mlp_model, loss=lambda s: losses.CrossEntropy(), error=_mlp_error,
        error_name="classification error (fraction)",
        settings={"data": MLPData(),
                  "hf": HFSettings(HFConfig(initial_lambda=1.0), numchunks=10),
                  "hf-momentum": MomentumHFSettings(HFConfig.momentum_like(initial_lambda=1.0),
                                                    batch_divisor=60, minibatch_cg_steps=0),
                  "nag": mom, "cm": mom, "sgd": mom.replace(mu_max=0.0)},
        model_spec=lambda s: {"n_hidden": s.n_hidden})


class QuarticModel(nn.Module):
    """The toy quartic f(x) = (x1² + x2² + x3² + x4²)² as a model.

    Its output is ``Σx²`` per case and the squared-error loss against 0 gives ``f``; the GGN is
    then ``2 (2x)(2x)ᵀ``.
    """

    def __init__(self, dim: int = 4, start: float = 0.5) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.full((dim,), float(start)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``Σx²`` for every case of ``inputs``, shape ``(N, 1)``."""
        return (self.x * self.x).sum().expand(inputs.shape[0], 1)


def _quartic_error(model: nn.Module, batch: Any, s: DataSettings) -> float:
    with torch.no_grad():
        return float(hdata.toy.quartic(model.x.detach().double()))


def _toy_quartic() -> Experiment:
    mom = MomentumSettings(batch_size=1, lr=0.01, schedule="constant", mu_max=0.9,
                           final_steps=0)
    zeros = (torch.zeros(1, 1), torch.zeros(1, 1))
    return Experiment(
        name="toy-quartic", description="f(x) = (x1²+x2²+x3²+x4²)² from x = 0.5 (a check of the "
        "update rules: SGD ~200 steps, CM/NAG ~10 at lr 0.01)",
        data=lambda s, seed: Dataset(zeros, zeros),
        model=lambda s, g: QuarticModel(), loss=lambda s: losses.MSE(), error=_quartic_error,
        error_name="f(x)",
        settings={"data": DataSettings(n_train=1),
                  "hf": HFSettings(HFConfig(initial_lambda=1e-3, preconditioner=False),
                                   numchunks=1),
                  "hf-momentum": MomentumHFSettings(
                      HFConfig.momentum_like(initial_lambda=1e-3, preconditioner=False,
                                             cg_max_iters=4), batch_divisor=1,
                      minibatch_cg_steps=0, heldout_rho=False),  # one case: no held-out batch
                  "nag": mom, "cm": mom, "sgd": mom.replace(mu_max=0.0)},
        model_spec=lambda s: {})


def _reversal_draw(n: int, seed: int, length: int = 8) -> Any:
    """Read a permutation of 1..8, then output it reversed during 8 blank steps."""
    x, y = hdata.sequence_reversal(n, seed=seed, length=length)
    inputs = torch.cat([x, torch.zeros_like(x)], 1)
    targets = torch.cat([torch.zeros_like(y), y], 1)
    mask = torch.cat([torch.zeros(n, length), torch.ones(n, length)], 1)
    return inputs, (targets, mask)


def _reversal_error(model: nn.Module, batch: Any, s: SequenceData) -> float:
    x, (t, m) = batch
    with torch.no_grad():
        wrong = (model(x).argmax(-1) != t).to(m.dtype)
    return float((wrong * m).sum() / m.sum())


def _sequence_reversal() -> Experiment:
    mom = MomentumSettings(batch_size=100, lr=1e-2, schedule="rnn", mu0=0.9, warm_steps=1000)
    return Experiment(
        name="sequence-reversal", description="reverse a random permutation of 1..8 (a toy "
        "sequence task of the recursive-autoencoder kind): tanh RNN, softmax output after 8 "
        "blank steps",
        data=lambda s, seed: Dataset(_reversal_draw(s.n_train, seed),
                                     _reversal_draw(s.n_test, 10**6 + seed), _reversal_draw),
        model=lambda s, g: esn_init_(models.TanhRNN(8, s.n_hidden, 8, "softmax"),
                                     input_scale=0.1, generator=g),
        loss=lambda s: losses.CrossEntropy(), error=_reversal_error,
        error_name="fraction of wrong output symbols",
        settings={"data": SequenceData(),
                  "hf": HFSettings(HFConfig(preconditioner=False, initial_lambda=1.0,
                                            structural_damping=0.03),
                                   grad_cases=1000, curv_cases=500),
                  "hf-momentum": MomentumHFSettings(
                      HFConfig.momentum_like(preconditioner=False, initial_lambda=1.0,
                                             structural_damping=0.03), batch_size=100,
                      minibatch_cg_steps=0),
                  "nag": mom, "cm": mom, "sgd": mom.replace(mu0=0.0, warm_steps=0)},
        model_spec=lambda s: {"n_hidden": s.n_hidden})


SMALL: dict[str, Callable[[], Experiment]] = {
    "mnist-mlp": _mnist_mlp, "toy-quartic": _toy_quartic, "sequence-reversal": _sequence_reversal,
}
