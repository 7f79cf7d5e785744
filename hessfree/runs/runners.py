"""One outer step of each optimizer family behind one interface, with reproducible batch streams.

* ``hf``: Martens (2010) — gradient on the whole training set (in chunks of ``grad_chunk``
  cases), curvature on one of ``numchunks`` fixed chunks, cycled (HFDemo, papers.md §2.6); for
  generated tasks, fresh batches of ``grad_cases`` / ``curv_cases`` every step (Sutskever's code).
* ``hf-momentum``: Sutskever et al. (2013) A.6 — gradient and curvature on the current minibatch
  (1/``batch_divisor`` of the data), 50 CG steps, ζ raised and ε decayed after ``switch_step``.
* ``nag``/``cm``/``sgd``: Sutskever et al. (2013) Eq. 1-4 with the Eq. 5 schedule (or the RNN
  schedule), minibatches of ``batch_size``.

Every runner returns one row (a dict) per step, including its cost in gradient-equivalents of the
training set (``grad_equiv``: single-case gradients / n_train, products counted as gradients,
forward passes as a third), and has ``state_dict``/``load_state_dict`` for exact resumption.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from hessfree import momentum
from hessfree.curvature import Problem
from hessfree.hf import HessianFree, HFConfig
from hessfree.hf.schedules import InverseDecay, Piecewise
from hessfree.runs.experiments import Dataset, take

__all__ = ["EpochSampler", "HFRunner", "MomentumRunner", "make_runner"]


class EpochSampler:
    """Minibatch indices from a seeded random permutation per epoch (state saved exactly)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        if batch < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch}")
        self.n, self.batch = n, min(batch, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> Tensor:
        """The next minibatch's indices (a new permutation when the epoch is used up)."""
        if self.pos + self.batch > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx

    def state_dict(self) -> dict:
        """Generator state, permutation and position."""
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.gen.set_state(s["gen"])
        self.perm, self.pos = s["perm"].clone(), int(s["pos"])


def _step_seed(seed: int, step: int, role: int) -> int:
    return (seed * 1_000_003 + step * 7919 + role) % (2**31 - 1)


class _Base:
    opt: Any
    sampler: EpochSampler | None

    def __init__(self, problem: Problem, data: Dataset, settings: dict, seed: int) -> None:
        self.problem, self.data, self.settings, self.seed = problem, data, settings, seed
        self.t = 0
        self.n_train = data.n_train

    def _minibatch(self, sampler: EpochSampler, size: int, role: int) -> Any:
        if self.data.fresh is not None:
            return self.data.fresh(size, _step_seed(self.seed, self.t, role))
        idx = sampler.next().to(self._device())
        return take(self.data.train[0], idx), take(self.data.train[1], idx)

    def state_dict(self) -> dict:
        """Optimizer state (λ and CG hot start, or velocities), step and sampler state."""
        return {"opt": self.opt.state_dict(), "t": self.t,
                "sampler": self.sampler.state_dict() if self.sampler else None}

    def load_state_dict(self, s: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.opt.load_state_dict(s["opt"])
        self.t = int(s["t"])
        if self.sampler is not None and s.get("sampler"):
            self.sampler.load_state_dict(s["sampler"])

    def _device(self) -> torch.device:
        return next(iter(self.problem.resolve_params().values())).device \
            if self.problem.is_module else torch.device("cpu")


class HFRunner(_Base):
    """``hf`` and ``hf-momentum`` steps."""

    def __init__(self, problem: Problem, data: Dataset, settings: dict, seed: int,
                 variant: str) -> None:
        super().__init__(problem, data, settings, seed)
        self.variant = variant
        fields = {k: settings[k] for k in HFConfig().to_dict() if k in settings}
        if variant == "hf-momentum":
            fields["cg_decay"] = Piecewise((settings["switch_step"],),
                                           (settings["cg_decay"], settings["decay_final"]))
            fields["learning_rate"] = InverseDecay(settings["lr_scale"], settings["switch_step"],
                                                   float(settings["learning_rate"]))
        self.config = HFConfig(**fields)
        self.opt = HessianFree(problem, config=self.config)
        self.sampler: EpochSampler | None = None
        self.classic: HFConfig | None = None
        if variant == "hf-momentum" and data.fresh is None:
            size = settings.get("batch_size") or max(1, self.n_train // settings["batch_divisor"])
            self.sampler = EpochSampler(self.n_train, size, seed)
            if settings.get("classic_step", 0) > 0:
                self.classic = self._classic_config(fields)
                self._chunks = self._partition(max(1, self.n_train // size))
        elif variant == "hf" and data.fresh is None:
            self._chunks = self._partition(int(self.settings["numchunks"]))

    def _classic_config(self, fields: dict) -> HFConfig:
        """The config of A.6's last phase ("a more traditional version of HF", Martens 2010).

        Gradient on the whole training set, learning rate back to 1, many CG steps (200 per
        update, ζ = 0.995 for CURVES).
        """
        s = self.settings
        base = {k: v for k, v in fields.items() if k not in ("cg_decay", "learning_rate")}
        return HFConfig(**{**base, "cg_max_iters": int(s["classic_cg_iters"]),
                           "cg_decay": float(s["classic_decay"]), "learning_rate": 1.0})

    def _in_classic_phase(self) -> bool:
        return self.classic is not None and self.t >= self.settings["classic_step"]

    def _enter_phase(self) -> None:
        """Switch to the classic setting once ``classic_step`` is reached (idempotent)."""
        if self._in_classic_phase() and self.opt.config is not self.classic:
            self.opt.config = self.classic
            wd = float(self.settings.get("classic_weight_decay", -1.0))
            if wd >= 0:
                self.problem.weight_decay = wd

    def _partition(self, numchunks: int) -> list[Any]:
        """Fixed curvature chunks (a seeded permutation cut in ``numchunks`` pieces)."""
        k = max(1, numchunks)
        perm = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(self.seed))
        perm = perm.to(self._device())
        size = self.n_train // k
        return [(take(self.data.train[0], perm[i * size:(i + 1) * size]),
                 take(self.data.train[1], perm[i * size:(i + 1) * size])) for i in range(k)]

    def batches(self) -> tuple[Any, Any]:
        """This step's gradient and curvature batches (curvature None: the same batch)."""
        s = self.settings
        if self.variant == "hf-momentum" and not self._in_classic_phase():
            size = s.get("batch_size") or max(1, self.n_train // s["batch_divisor"])
            return self._minibatch(self.sampler, size, 0), None  # type: ignore[arg-type]
        if self.data.fresh is not None:
            return (self.data.fresh(s["grad_cases"], _step_seed(self.seed, self.t, 0)),
                    self.data.fresh(s["curv_cases"], _step_seed(self.seed, self.t, 1)))
        x, y = self.data.train
        c = int(s.get("grad_chunk", 5000))
        grad = [(take(x, slice(i, i + c)), take(y, slice(i, i + c)))
                for i in range(0, self.n_train, c)]
        return grad, self._chunks[self.t % len(self._chunks)]

    def step(self, before: Any = None) -> dict[str, Any]:
        """One HF outer step; the ``StepStats`` fields plus ``grad_equiv``.

        ``before(grad_batch, curvature_batch)`` is called with this step's batches before the
        step (e.g. to save its quadratic) without drawing them twice.
        """
        self._enter_phase()
        grad_batch, curv_batch = self.batches()
        if before is not None:
            before(grad_batch, curv_batch)
        stats = self.opt.step(grad_batch, curv_batch)
        self.t += 1
        row = stats.as_dict()
        row["grad_equiv"] = stats.grad_equivalents / self.n_train
        return row

    def postfix(self, row: dict) -> dict:
        """What the progress bar shows."""
        return {"loss": f"{row['loss_before']:.4g}", "lam": f"{row['lambda_after']:.3g}",
                "cg": row["cg_iters"]}


class MomentumRunner(_Base):
    """``nag``, ``cm`` and ``sgd`` steps (the ``torch.optim`` optimizers of hessfree.momentum)."""

    def __init__(self, problem: Problem, data: Dataset, settings: dict, seed: int, kind: str,
                 total_steps: int | None) -> None:
        super().__init__(problem, data, settings, seed)
        self.kind = kind
        self.schedule = self._schedule(settings, kind, total_steps)
        self.params = problem.resolve_params()
        plist = list(self.params.values())
        if kind == "sgd":
            self.opt: Any = momentum.SGD(plist, lr=settings["lr"])
        else:
            cls = momentum.NAG if kind == "nag" else momentum.CM
            self.opt = cls(plist, lr=settings["lr"], schedule=self.schedule)
        self.sampler = None if data.fresh is not None else \
            EpochSampler(self.n_train, settings["batch_size"], seed)

    @staticmethod
    def _schedule(s: dict, kind: str, total_steps: int | None) -> Any:
        if kind == "sgd":
            return momentum.ConstantSchedule(0.0)
        if "mu0" in s:  # RNN schedule (Sutskever et al. 2013 §4)
            return momentum.RNNSchedule(s["mu0"], warm_steps=s["warm_steps"])
        if s.get("constant_mu"):
            return momentum.ConstantSchedule(s["mu_max"])
        return momentum.SutskeverSchedule(s["mu_max"], final_mu=s["final_mu"],
                                          final_steps=s["final_steps"], total_steps=total_steps)

    def step(self, before: Any = None) -> dict[str, Any]:
        """One update on a minibatch; its row: loss, μ, ε, cost, seconds."""
        t0 = time.perf_counter()
        batch = self._minibatch(self.sampler, self.settings["batch_size"], 0)  # type: ignore
        value, grad = self.problem.value_and_grad(self.params, batch)
        ok = bool(torch.isfinite(grad).all()) and value == value
        mu = float(self.schedule(self.t))
        if ok:
            for p, g in zip(self.params.values(), torch.split(grad, [p.numel() for p in
                                                                    self.params.values()])):
                p.grad = g.view(p.shape)
            self.opt.step()
        n = self.settings["batch_size"]
        self.t += 1
        return {"step": self.t - 1, "loss": value, "mu": mu, "lr": float(self.settings["lr"]),
                "accepted": ok, "grad_cases": n, "grad_equiv": n / self.n_train,
                "seconds": time.perf_counter() - t0}

    def postfix(self, row: dict) -> dict:
        """What the progress bar shows."""
        return {"loss": f"{row['loss']:.4g}", "mu": f"{row['mu']:.3f}"}

    def evaluation_context(self) -> Any:
        """NAG holds the look-ahead point; evaluate at the true iterate θ."""
        return self.opt.at_true_params()


def make_runner(optimizer: str, problem: Problem, data: Dataset, settings: dict, seed: int,
                total_steps: int | None = None) -> HFRunner | MomentumRunner:
    """The runner for ``optimizer`` (one of ``hessfree.runs.experiments.OPTIMIZERS``)."""
    if optimizer in ("hf", "hf-momentum"):
        return HFRunner(problem, data, settings, seed, optimizer)
    return MomentumRunner(problem, data, settings, seed, optimizer, total_steps)
