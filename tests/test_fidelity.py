"""Every preset equals its source, or the difference is a row of README's fidelity table.

The records below are written from the sources (docs/references.md: [HFDemo] ``nnet_train_2.m``,
``conjgrad_1.m``, ``nnet_demo_2.m``; [HF-RNN] ``opt/hf.py``, ``opt/r/demo.py``,
``opt/d/seq/pathological.py``, ``opt/d/seq/utils``; [S13] §3, §4, A.6), not from hessfree's
code. Each preset's flat settings are compared with its record; a setting that differs must be a
row of README's "Fidelity table" with the source's value and ours, and a row naming a setting
must describe a real difference (or, for a setting the source does not state, give our value).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from hessfree.runs.experiments import get
from hessfree.runs.presets.rnn import RNN_TASKS
from hessfree.runs.reproduce import TABLES
from hessfree.runs.settings import flat

README = Path(__file__).resolve().parent.parent / "README.md"
AUTOENCODERS = ("curves-ae", "mnist-ae", "faces-ae")

# [HFDemo] nnet_train_2.m / conjgrad_1.m: the constants of its active lines
HFDEMO = dict(
    initial_lambda=45.0,          # initlambda = 45.0
    lambda_min=0.0, lambda_max=math.inf,  # no bounds on lambda
    lm_lower=0.25, lm_upper=0.75,  # if rho < 0.25 || isnan(rho) ... elseif rho > 0.75
    lm_boost=1.5, lm_drop=2 / 3,  # drop = 2/3; boost = 1/drop
    rho_damped=False,             # autodamp = 0 around denom
    rho_after_backtracking=True,  # denom and ll_chunk use chs{j}
    curvature="ggn",              # mattype = 'gn'
    structural_damping=0.0,
    cg_max_iters=250,             # maxiters = 250
    cg_eps=5e-4, cg_gap_ratio=0.1, cg_min_gap=10,  # tolerance, gapratio, mingap
    cg_fixed_iters=False,
    cg_decay=0.95,                # decay = 0.95; ch = decay*ch
    cg_store_first=5, cg_store_ratio=1.3, cg_store_every=0,  # inext = 5; imult = 1.3
    backtracking=True, backtrack_batch="gradient",  # "full training set version"
    backtrack_rule="walk-back",   # for j = (length(chs)-1):-1:1 ... if ll > lowll, break
    preconditioner=True, precond_exponent=0.75,  # (grad2 + lambda + weightcost).^(3/4)
    precond_batch="gradient",     # grad2 over all training cases
    line_search=True, ls_rule="armijo", ls_batch="gradient",  # computeLL(..., indata, ...)
    ls_c=1e-2, ls_shrink=0.8, ls_max_tries=60,  # c = 10^(-2); rate = 0.8*rate; while j < 60
    learning_rate=1.0,            # rate = 1.0
    reset_on_reject=False, zero_on_reject=False,  # ch = chs{end} whatever the search did
    boost_on_reject=False,        # lambda follows rho, computed before the search
)
# nnet_demo_2.m (CURVES) and its MNIST / FACES sections: weightcost, numchunks
HFDEMO_DATA = {"curves-ae": dict(weight_decay=2e-5, numchunks=4),
               "mnist-ae": dict(weight_decay=1e-5, numchunks=8),
               "faces-ae": dict(weight_decay=1e-5 / 2, numchunks=20)}

# [HF-RNN] opt/hf.py (HF defaults and get_new_direction / line_search / optimize) and
# opt/r/demo.py (the demo's arguments)
HF_RNN = dict(
    lambda_min=0.0, lambda_max=math.inf,
    lm_lower=0.25, lm_upper=0.75, lm_boost=1.5, lm_drop=2 / 3,  # damping_heuristic
    rho_damped=True,              # RHO_denom = model(new_x, ..., damp=True)
    rho_after_backtracking=True,  # new_x = BT_x
    curvature="ggn",              # gauss_newton
    structural_damping=0.03,      # init_damping = array([1, .03]) * ...
    cg_max_iters=300,             # max_cg_iter = 300
    cg_eps=5e-4, cg_min_gap=10, cg_gap_ratio=0.1,  # progress_heuristic: eps, max(10, 0.1*i)
    cg_fixed_iters=False,         # no_progress stops CG whatever min_cg_iter says
    cg_decay=0.95,                # cg_shrink_factor=.95
    cg_store_every=10,            # cg_eval_freq=10; check_BT = (i % cg_eval_freq == 0)
    backtracking=True, backtrack_batch="heldout",  # BT_eval = 'objective' on BT_batches = [1]
    backtrack_rule="best",        # if BT_cur < BT_best
    preconditioner=False,         # M_inv(x): return x
    line_search=True, ls_rule="first-decrease",  # if cur_red < 0: break
    ls_batch="heldout",           # line_search_batches = [2]
    ls_shrink=0.8, ls_max_tries=50,  # [.8**i for i in range(50)] + [0]
    learning_rate=1.0,            # distances[0] == 1
    zero_on_reject=True,          # self.CG_x *= 0 when step == 0
    boost_on_reject=False,        # damping_heuristic(self.damping, RHO) before line_search
    weight_decay=2e-5,            # L2_decay = 2e-5
    pieces=10,                    # num_train_batches = 10: batches 0, 1, 2 are GN, BT, LS
)


def _num_outputs(task: str, T: int) -> int:
    """``data_object.num_outputs`` in [HF-RNN] ``opt/d/seq/utils`` for the preset's T."""
    return {"addition": 1, "multiplication": 1, "xor": 1,  # op_cls: self.num_outputs = 1
            "temporal_order": 8, "temporal_order_3bit": 8,  # temporal2/3: self.num_outputs = 8
            "random_permutation": T,                        # perm_mem: self.num_outputs = T
            "memorization_5bit": 2 * 5 * T,                 # char_size * num_chars * T
            "memorization_20bit": 5 * 10 * T}[task]


def _hf_rnn(task: str) -> dict:
    T = 200 if task == "memorization_5bit" else 80   # [S13 Table 5]'s lengths
    batch = 32 if task == "memorization_5bit" else 1000  # pathological.py batch_size
    return {**HF_RNN, "initial_lambda": 0.01 * _num_outputs(task, T),  # * num_outputs * 0.01
            "grad_cases": 10 * batch, "curv_cases": batch}


# [S13] §3 (autoencoders) and §4 (RNNs)
S13_AE = dict(batch_size=200, schedule="sutskever", final_mu=0.9, final_steps=1000,
              mu_stage=250, weight_decay=0.0)
S13_RNN = dict(batch_size=100, schedule="rnn", warm_steps=1000, weight_decay=0.0)
S13_RNN_SGD = dict(batch_size=100, weight_decay=0.0)  # the "0" column: μ0 = 0 (README row)
# [S13 A.6]: the hybrid HF's CURVES and MNIST schedules
A6 = {
    "curves-ae": dict(batch_divisor=16, minibatch_cg_steps=250_000, cg_max_iters=50,
                      cg_fixed_iters=True, learning_rate=1.0, cg_decay=0.95, decay_final=0.999,
                      decay_switch=4000, lr_scale=500.0, lr_origin=4000, lr_begin=4000,
                      full_cg_steps=100_000, full_cg_iters=200, full_decay=0.995,
                      final_cg_steps=500_000, weight_decay=2e-5, line_search=False,
                      heldout_rho=False),
    "mnist-ae": dict(batch_divisor=20, minibatch_cg_steps=25_000 + 225_000, cg_max_iters=50,
                     cg_fixed_iters=True, learning_rate=1.0, cg_decay=0.95, decay_final=0.995,
                     decay_switch=25_000 // 50, lr_scale=250.0, lr_origin=0,
                     lr_begin=25_000 // 50, full_cg_steps=125_000, full_decay=0.995,
                     full_curvature="minibatch", final_cg_steps=0, weight_decay=1e-5,
                     line_search=False, heldout_rho=False),
}


def _records() -> list[tuple[str, str, dict]]:
    out = [(e, "hf", {**HFDEMO, **HFDEMO_DATA[e]}) for e in AUTOENCODERS]
    out += [(name, "hf", _hf_rnn(name.replace("-", "_"))) for name in RNN_TASKS]
    out += [(e, o, S13_AE) for e in AUTOENCODERS for o in ("nag", "cm", "sgd")]
    out += [(name, o, S13_RNN) for name in RNN_TASKS for o in ("nag", "cm")]
    out += [(name, "sgd", S13_RNN_SGD) for name in RNN_TASKS]
    out += [(e, "hf-momentum", rec) for e, rec in A6.items()]
    return out


def _canon(v) -> str:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return str(v)
    return f"{float(v):g}"


def _same(a, b) -> bool:
    if isinstance(a, (bool, str)) or isinstance(b, (bool, str)) or a is None or b is None:
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-12) or a == b


def _rows() -> list[dict]:
    text = README.read_text()
    part = text.split("### Fidelity table", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("preset", "---"):
            continue
        rows.append(dict(zip(("preset", "source", "setting", "source_value", "ours", "why"),
                             cells)))
    return rows


def _covers(label: str) -> list[tuple[str, str]]:
    """The (experiment, optimizer) pairs a row's preset column names."""
    first = label.split()[0]
    if first == "autoencoders":
        exps: tuple[str, ...] = AUTOENCODERS
    elif label.startswith("RNN tasks"):
        exps = tuple(RNN_TASKS)
    elif first in AUTOENCODERS:
        exps = (first,)
    else:
        exps = AUTOENCODERS + tuple(RNN_TASKS)
    opts = re.findall(r"`([a-z-]+)`", label) or ["hf", "hf-momentum", "nag", "cm", "sgd"]
    return [(e, o) for e in exps for o in opts]


def _token(cell: str) -> str | None:
    m = re.match(r"`([^`]*)`", cell)
    return m.group(1) if m else None


def _key(row: dict) -> str | None:
    """The setting a row is about, when its setting cell is exactly one ``name``."""
    m = re.fullmatch(r"`([a-z_0-9]+)`", row["setting"])
    return m.group(1) if m else None


def test_the_table_parses():
    rows = _rows()
    assert len(rows) >= 15 and all(r["why"] for r in rows)
    for r in rows:
        assert _covers(r["preset"]), r


@pytest.mark.parametrize("experiment, optimizer, record", _records(),
                         ids=[f"{e}-{o}" for e, o, _ in _records()])
def test_every_difference_from_the_source_is_a_row(experiment, optimizer, record):
    ours = flat(get(experiment).optimizer_defaults(optimizer))
    rows = [r for r in _rows() if (experiment, optimizer) in _covers(r["preset"])]
    for key, source in record.items():
        assert key in ours, f"{key}: not a setting of {experiment} {optimizer}"
        listed = [r for r in rows if _key(r) == key]
        if _same(ours[key], source):
            assert not listed, f"{experiment} {optimizer}: {key} equals the source's " \
                               f"{source!r} but README lists it as a difference"
            continue
        assert listed, (f"{experiment} {optimizer}: {key} = {ours[key]!r} differs from the "
                        f"source's {source!r} and is not in README's fidelity table")
        (row,) = listed
        assert _token(row["source_value"]) == _canon(source), row
        assert _token(row["ours"]) == _canon(ours[key]), row


def test_rows_about_settings_the_source_leaves_open_give_our_value():
    recorded = {(e, o): rec for e, o, rec in _records()}
    for row in _rows():
        key, token = _key(row), _token(row["ours"])
        if key is None or token is None:
            continue
        for e, o in _covers(row["preset"]):
            ours = flat(get(e).optimizer_defaults(o))
            assert key in ours, row
            assert _canon(ours[key]) == token, (e, o, row)
            if (e, o) in recorded and key not in recorded[e, o]:
                assert _token(row["source_value"]) is None, row  # "not stated" and the like


def test_the_protocols_are_the_papers():
    """[S13 §3] and [S13 §4]: updates, minibatches, the μ and learning-rate grids."""
    t1, t5 = TABLES["table1"], TABLES["table5"]
    assert (t1.updates, t1.batch_size, t1.final_steps) == (750_000, 200, 1000)
    assert t1.mus == (0.0, 0.9, 0.99, 0.995, 0.999)
    assert t1.lrs == (0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001)
    assert (t5.updates, t5.batch_size) == (50_000, 100)
    assert t5.mus == (0.0, 0.9, 0.98, 0.995) and t5.lrs == (1e-3, 1e-4, 1e-5, 1e-6)
