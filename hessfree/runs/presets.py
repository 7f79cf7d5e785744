"""Built-in experiments, with the papers' settings (``reference/papers.md``, cited per value).

Deep autoencoders (Hinton & Salakhutdinov 2006): ``curves-ae``, ``mnist-ae``, ``faces-ae`` —
HF as Martens (2010) / HFDemo, NAG/CM as Sutskever et al. (2013) §3, the momentum-like HF of
their appendix A.6. RNN problems (Martens & Sutskever 2011; Sutskever et al. 2013 §4): the eight
pathological tasks. Also ``mnist-mlp`` and the seed posts' ``toy-quartic`` and
``sequence-reversal``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hessfree import data as hdata
from hessfree import losses, models
from hessfree.hf import HFConfig
from hessfree.models.init import esn_init_, sparse_init_
from hessfree.runs.experiments import Dataset, Experiment, register

_HF_FIELDS = {k: v for k, v in HFConfig().to_dict().items() if not isinstance(v, dict)}


def hf_settings(**over: Any) -> dict[str, Any]:
    """Every HFConfig field (Martens' defaults) plus the HF batch settings, then ``over``."""
    return {**_HF_FIELDS, "weight_decay": 0.0, "numchunks": 4, "grad_chunk": 5000, **over}


def momentum_hf_settings(**over: Any) -> dict[str, Any]:
    """The momentum-like HF settings (Sutskever et al. 2013 A.6).

    Minibatch = 1/``batch_divisor`` of the data, 50 CG steps, ζ 0.95 raised to ``decay_final``
    and ε = ``lr_scale``/(t − ``switch_step``) after the switch. ``classic_step > 0`` switches to
    A.6's last phase there: gradient on the whole training set, ``classic_cg_iters`` CG steps,
    ζ = ``classic_decay``, ε = 1, and weight decay ``classic_weight_decay`` if >= 0.
    """
    base = {k: v for k, v in HFConfig.momentum_like().to_dict().items()
            if not isinstance(v, dict)}
    return {**base, "weight_decay": 0.0, "batch_divisor": 16, "decay_final": 0.999,
            "switch_step": 4000, "lr_scale": 500.0, "classic_step": 0, "classic_cg_iters": 200,
            "classic_decay": 0.995, "classic_weight_decay": -1.0, "grad_chunk": 5000, **over}


def momentum_settings(**over: Any) -> dict[str, Any]:
    """NAG/CM/SGD on the autoencoders: minibatch 200, Eq. 5 schedule, final μ = 0.9 phase."""
    return {"weight_decay": 0.0, "batch_size": 200, "lr": 0.01, "mu_max": 0.99,
            "final_mu": 0.9, "final_steps": 1000, **over}


def _ae_error(model: nn.Module, batch: Any, settings: dict) -> float:
    return models.reconstruction_error(model, batch[0])


def _ae_model(preset: str) -> Any:
    def build(settings: dict, g: torch.Generator) -> nn.Module:
        model = getattr(models, preset)()
        return sparse_init_(model, scale=settings.get("si_scale", 1.0), generator=g)
    return build


def _autoencoder(name: str, data: Any, preset: str, loss: Any, n_train: int, hf_wd: float,
                 numchunks: int, paper: dict, mom: dict, desc: str) -> Experiment:
    return Experiment(
        name=name, description=desc, data=data, model=_ae_model(preset),
        loss=lambda s: loss(), error=_ae_error,
        error_name="squared reconstruction error (sum over pixels, mean over cases)",
        settings={
            "data": {"n_train": n_train, "n_test": 0, "si_scale": 1.0, "eval_cases": 0},
            "hf": hf_settings(weight_decay=hf_wd, numchunks=numchunks),
            "hf-momentum": momentum_hf_settings(weight_decay=hf_wd, **mom),
            "nag": momentum_settings(), "cm": momentum_settings(),
            "sgd": momentum_settings(mu_max=0.0),
        },
        paper=paper, model_spec=lambda s: {"preset": preset, "si_scale": s.get("si_scale", 1)})


def _curves_data(s: dict, seed: int) -> Dataset:
    tr, te = hdata.curves(n_train=s["n_train"], n_test=s["n_test"] or 10000, seed=seed)
    return Dataset((tr, tr), (te, te))


def _mnist_data(s: dict, seed: int) -> Dataset:
    xtr, _, xte, _ = hdata.mnist(s.get("root") or None)
    xte = xte[: s["n_test"] or None]
    return Dataset((xtr[: s["n_train"]],) * 2, (xte, xte))


def _faces_data(s: dict, seed: int) -> Dataset:
    tr = hdata.faces("train", root=s.get("root") or None, seed=seed)[: s["n_train"]]
    te = hdata.faces("test", root=s.get("root") or None, seed=seed)[: s["n_test"] or None]
    return Dataset((tr, tr), (te, te))


# Table 1 of Sutskever et al. (2013): training squared error; HF* = Martens (2010), HF† = A.6.
_TABLE1 = {
    "curves-ae": {"sgd": 0.48, "nag (mu_max 0.99)": 0.096, "nag (mu_max 0.999)": 0.074,
                  "cm (mu_max 0.99)": 0.10, "hf (Martens 2010, HF*)": 0.11,
                  "hf-momentum (HF†)": 0.058},
    "mnist-ae": {"sgd": 2.1, "nag (mu_max 0.99)": 0.73, "nag (mu_max 0.999)": 0.80,
                 "cm (mu_max 0.99)": 0.77, "hf (Martens 2010, HF*)": 1.40,
                 "hf-momentum (HF†)": 0.69},
    "faces-ae": {"sgd": 36.4, "nag (mu_max 0.99)": 8.5, "nag (mu_max 0.999)": 7.7,
                 "cm (mu_max 0.99)": 8.7, "hf (Martens 2010, HF*)": 12.0,
                 "hf-momentum (HF†)": 7.5},
}

register(_autoencoder(
    "curves-ae", _curves_data, "curves_autoencoder", losses.BCEWithLogits, 20000, 2e-5, 4,
    _TABLE1["curves-ae"], {"batch_divisor": 16, "switch_step": 4000, "lr_scale": 500.0},
    "CURVES autoencoder 784-400-200-100-50-25-6 (re-generated CURVES), logistic output"))
register(_autoencoder(
    "mnist-ae", _mnist_data, "mnist_autoencoder", losses.BCEWithLogits, 60000, 1e-5, 8,
    _TABLE1["mnist-ae"], {"batch_divisor": 20, "switch_step": 500, "lr_scale": 250.0,
                          "decay_final": 0.995},
    "MNIST autoencoder 784-1000-500-250-30 (real MNIST, $HESSFREE_DATA), logistic output"))
register(_autoencoder(
    "faces-ae", _faces_data, "faces_autoencoder", losses.MSE, 103500, 1e-5, 20,
    _TABLE1["faces-ae"], {"batch_divisor": 20},
    "FACES autoencoder 625-2000-1000-500-30 (re-built from Olivetti), linear output"))


# -- RNN problems -----------------------------------------------------------------------------
_RNN_LOSS = {"linear": losses.MSE, "logistic": losses.BCEWithLogits,
             "softmax": losses.CrossEntropy}
# Table 5 of Sutskever et al. (2013): zero-one errors, best µ0 (NAG 0.995) and biases baseline
_TABLE5 = {"addition": {"biases": 0.82, "nag (mu0 0.995)": 0.00025},
           "multiplication": {"biases": 0.84, "nag (mu0 0.995)": 0.0013},
           "memorization_5bit": {"biases": 2.5, "nag (mu0 0.995)": 0.63},
           "memorization_20bit": {"biases": 8.0, "nag (mu0 0.995)": 0.00005}}


def _rnn_experiment(task: str) -> Experiment:
    spec = hdata.task_spec(task)
    memorization = task.startswith("memorization")

    def fresh(s: dict) -> Any:
        def draw(n: int, seed: int) -> Any:
            x, t, m = hdata.pathological(task, T=s["T"], n=n, seed=seed, center=s["center"])
            return x, (t, m)
        return draw

    def make_data(s: dict, seed: int) -> Dataset:
        draw = fresh(s)
        return Dataset(draw(s["n_train"], 10**6 + seed), draw(s["n_test"], 2 * 10**6 + seed),
                       draw)

    def make_model(s: dict, g: torch.Generator) -> nn.Module:
        rnn = models.TanhRNN(spec.input_channels, s["n_hidden"], spec.n_outputs, spec.output)
        return esn_init_(rnn, spectral_radius=1.1, input_scale=0.1 if memorization else 0.001,
                         output_scale=0.1, output_bias=_mean_output(task, s), generator=g)

    def error(model: nn.Module, batch: Any, s: dict) -> float:
        x, (t, m) = batch
        with torch.no_grad():
            return hdata.zero_one_error(task, model(x), t, m)

    data_settings = {"T": 80 if task != "memorization_5bit" else 200, "n_train": 1000,
                     "n_test": 1000, "center": task == "multiplication", "n_hidden": 100}
    n_out = spec.n_outputs
    return Experiment(
        name=task.replace("_", "-"), description=f"{task} (Martens & Sutskever 2011), 100 tanh "
        f"units, {spec.output} output", data=make_data, model=make_model,
        loss=lambda s: _RNN_LOSS[spec.output](), error=error,
        error_name="zero-one error (fraction)",
        settings={
            "data": data_settings,
            # Sutskever's HF-RNN code: no preconditioner, 300 CG steps, structural damping
            # mu = 0.03, initial damping 0.01 * outputs, L2 2e-5 (papers.md §3.1)
            "hf": hf_settings(weight_decay=2e-5, preconditioner=False, cg_max_iters=300,
                              structural_damping=0.03, initial_lambda=0.01 * n_out,
                              grad_cases=1000, curv_cases=1000),
            "hf-momentum": momentum_hf_settings(weight_decay=2e-5, preconditioner=False,
                                                structural_damping=0.03,
                                                initial_lambda=0.01 * n_out, batch_size=100),
            # §4: minibatch 100, µ = 0.9 for 1000 updates then µ0, ε from {1e-3 .. 1e-6}
            **{k: {"weight_decay": 0.0, "batch_size": 100, "lr": 1e-4, "mu0": 0.995,
                   "warm_steps": 1000} for k in ("nag", "cm")},
            "sgd": {"weight_decay": 0.0, "batch_size": 100, "lr": 1e-4, "mu0": 0.0,
                    "warm_steps": 0},
        },
        paper=_TABLE5.get(task, {}),
        model_spec=lambda s: {"task": task, "n_hidden": s["n_hidden"], "T": s["T"]})


def _mean_output(task: str, s: dict) -> float | Tensor:
    """Output bias = mean target (Table 4); for softmax, log class frequencies."""
    x, t, m = hdata.pathological(task, T=s.get("T", 80), n=2000, seed=12345,
                                 center=s.get("center", False))
    if t.is_floating_point():
        return float((t[..., 0] * m).sum() / m.sum())
    k = hdata.task_spec(task).n_outputs
    counts = torch.bincount(t[m > 0].long(), minlength=k).double() + 1.0
    return (counts / counts.sum()).log().float()


for _task in hdata.TASKS:
    register(_rnn_experiment(_task))
from hessfree.runs import presets_small  # noqa: E402,F401  (the small experiments)
