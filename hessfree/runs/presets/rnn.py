"""The pathological RNN problems (Martens & Sutskever 2011; Sutskever et al. 2013 §4).

HF with structural damping as Sutskever's HF-RNN code runs it ([M&S11]; [HF-RNN],
:meth:`HFConfig.hf_rnn`: no preconditioner, at most 300 CG steps with Martens' progress test,
CG-backtracking on a held-out batch keeping the best of iterates 1, 11, 21, ..., ρ on the
curvature batch with the damped model, the first of 0.8^i (i < 50) that lowers a third batch's
objective, μ = 0.03, initial damping 0.01 × the code's ``num_outputs``, L2 2e-5, the gradient on
10 batches of fresh sequences of which the first three are the curvature, backtracking and
line-search batches); NAG/CM with minibatches of 100 sequences, μ = 0.9 for 1000 updates then μ0
([S13 §4]); the ESN-style initialization of [S13 Table 4] for every optimizer (HF-RNN's demo
initializes sparsely; README "Fidelity"). Table 5 of [S13] is attached as the published numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hessfree import _checks, models
from hessfree import data as hdata
from hessfree.curvature import losses
from hessfree.hf import HFConfig
from hessfree.models.init import esn_init_
from hessfree.runs.definition import Dataset, Experiment
from hessfree.runs.settings import (
    DataSettings,
    HFSettings,
    MomentumHFSettings,
    MomentumSettings,
)

__all__ = ["RNNData", "RNN_TASKS", "TABLE5", "hf_rnn_outputs"]

_LOSS = {"linear": losses.MSE, "logistic": losses.BCEWithLogits, "softmax": losses.CrossEntropy}
#: Table 5 of [S13], every column, the one source of its numbers (each task's ``paper`` row):
#: zero-one errors (add/mul look like fractions, the memorization rows like percentages,
#: docs/references.md [S13 Table 5]); "0.9N" = NAG with μ0 0.9
TABLE5 = {
    task: dict(zip(("biases", "0", "0.9N", "0.98N", "0.995N", "0.9M", "0.98M", "0.995M"), row))
    for task, row in (
        ("addition", (0.82, 0.39, 0.02, 0.21, 0.00025, 0.43, 0.62, 0.036)),
        ("multiplication", (0.84, 0.48, 0.36, 0.22, 0.0013, 0.029, 0.025, 0.37)),
        ("memorization_5bit", (2.5, 1.27, 1.02, 0.96, 0.63, 1.12, 1.09, 0.92)),
        ("memorization_20bit", (8.0, 5.37, 2.77, 0.0144, 0.00005, 1.75, 0.0017, 0.053)),
    )
}


@dataclass(frozen=True)
class RNNData(DataSettings):
    """Data and model settings of the RNN tasks.

    Attributes:
        T: sequence length (80, or 200 for 5-bit memorization, [S13 Table 5]).
        center: subtract the mean of inputs and outputs ([S13 §4]: needed for multiplication).
        n_hidden: tanh hidden units (100, [S13 §4]).
    """

    n_train: int = 1000
    n_test: int = 1000
    T: int = 80
    center: bool = False
    n_hidden: int = 100

    def __post_init__(self) -> None:
        """Validate."""
        super().__post_init__()
        _checks.integer(self.n_train, "n_train", minimum=1)
        _checks.integer(self.n_test, "n_test", minimum=1)
        _checks.integer(self.T, "T", minimum=1)
        _checks.boolean(self.center, "center")
        _checks.integer(self.n_hidden, "n_hidden", minimum=1)


def hf_rnn_outputs(task: str, T: int) -> int:
    """HF-RNN's ``data_object.num_outputs`` of ``task`` at length ``T``, which scales its damping.

    [HF-RNN] ``opt/d/seq/utils``: 1 for addition, multiplication and XOR (``op_cls``), 8 for
    both temporal-order tasks, ``T`` for the random permutation, ``char_size · num_chars · T``
    for noiseless memorization ("this isn't quite the right number of outputs, but that's what
    I used"): 2·5·T for 5 bits, 5·10·T for 20 bits.
    """
    per_task = {"addition": 1, "multiplication": 1, "xor": 1, "temporal_order": 8,
                "temporal_order_3bit": 8, "random_permutation": T,
                "memorization_5bit": 2 * 5 * T, "memorization_20bit": 5 * 10 * T}
    return per_task[task]


def _mean_output(task: str, s: RNNData) -> float | Tensor:
    """Output bias = mean target ([S13 Table 4]); for softmax, log class frequencies."""
    x, t, m = hdata.pathological(task, T=s.T, n=2000, seed=12345, center=s.center)
    if t.is_floating_point():
        return float((t[..., 0] * m).sum() / m.sum())
    k = hdata.task_spec(task).n_outputs
    counts = torch.bincount(t[m > 0].long(), minlength=k).double() + 1.0
    return (counts / counts.sum()).log().float()


def _task(task: str) -> Callable[[], Experiment]:
    spec = hdata.task_spec(task)
    memorization = task.startswith("memorization")

    def draw(s: RNNData) -> Callable[[int, int], Any]:
        def fresh(n: int, seed: int) -> Any:
            x, t, m = hdata.pathological(task, T=s.T, n=n, seed=seed, center=s.center)
            return x, (t, m)
        return fresh

    def make_data(s: RNNData, seed: int) -> Dataset:
        fresh = draw(s)
        return Dataset(fresh(s.n_train, 10**6 + seed), fresh(s.n_test, 2 * 10**6 + seed), fresh)

    def make_model(s: RNNData, g: torch.Generator) -> nn.Module:
        rnn = models.TanhRNN(spec.input_channels, s.n_hidden, spec.n_outputs, spec.output)
        return esn_init_(rnn, spectral_radius=1.1, input_scale=0.1 if memorization else 0.001,
                         output_scale=0.1, output_bias=_mean_output(task, s), generator=g)

    def error(model: nn.Module, batch: Any, s: RNNData) -> float:
        x, (t, m) = batch
        with torch.no_grad():
            return hdata.zero_one_error(task, model(x), t, m)

    def factory() -> Experiment:
        T = 80 if task != "memorization_5bit" else 200
        # [HF-RNN] demo: init_damping = array([1, .03]) * data_object.num_outputs * 0.01
        lam0 = 0.01 * hf_rnn_outputs(task, T)
        hf_config = HFConfig.hf_rnn(structural_damping=0.03, initial_lambda=lam0)
        batch = spec.batch_size  # [HF-RNN] pathological.py: 1000 (32 for 5-bit memorization)
        nag = MomentumSettings(batch_size=100, lr=1e-4, schedule="rnn", mu0=0.995,
                               warm_steps=1000)
        return Experiment(
            name=task.replace("_", "-"), description=f"{task} (Martens & Sutskever 2011), 100 "
            f"tanh units, {spec.output} output", data=make_data, model=make_model,
            loss=lambda s: _LOSS[spec.output](), error=error,
            error_name="zero-one error (fraction)",
            settings={
                "data": RNNData(T=T, center=task == "multiplication"),
                # [HF-RNN]: the gradient on num_train_batches = 10 fresh batches, the
                # curvature on batch 0, backtracking on 1, the line search on 2 (pieces)
                "hf": HFSettings(hf_config, weight_decay=2e-5, grad_cases=10 * batch,
                                 curv_cases=batch, pieces=10, grad_chunk=batch),
                "hf-momentum": MomentumHFSettings(
                    HFConfig.momentum_like(preconditioner=False, structural_damping=0.03,
                                           initial_lambda=lam0),
                    weight_decay=2e-5, batch_size=100, minibatch_cg_steps=0),
                "nag": nag, "cm": nag, "sgd": nag.replace(mu0=0.0, warm_steps=0),
            },
            paper=TABLE5.get(task, {}),
            model_spec=lambda s: {"task": task, "n_hidden": s.n_hidden, "T": s.T})
    return factory


RNN_TASKS = {task.replace("_", "-"): _task(task) for task in hdata.TASKS}
