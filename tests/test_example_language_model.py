"""``examples/hf_on_a_language_model.py``: its smoke run (the docstring's command, scaled) and
the committed summary that ``benchmarks/RESULTS.md``'s section is generated from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from examples_import import example

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "benchmarks" / "results" / "lm_char_gpt.json"

lm = example("hf_on_a_language_model")


def test_the_text_ships_with_python_and_is_split_into_blocks():
    text = lm.Text.split(lm.corpus())
    assert len(text.vocab) > 50 and text.train.numel() > 8 * text.val.numel()
    assert int(text.train.max()) < len(text.vocab)
    val = text.validation(lm.VALIDATION)
    assert val.shape == (lm.VALIDATION, lm.CONTEXT)
    g = torch.Generator().manual_seed(0)
    assert lm.Text.split(lm.corpus()).windows(3, g).shape == (3, lm.CONTEXT)


def test_the_scaled_run_trains_both_and_writes_its_summary(tmp_path):
    out, summary_path = tmp_path / "lm.png", tmp_path / "lm.json"
    assert lm.main(["--scale", "0.02", "--out", str(out), "--summary", str(summary_path)]) == 0
    assert out.stat().st_size > 0
    summary = json.loads(summary_path.read_text())
    assert summary["validation_windows"] == 64
    runs = {r["name"]: r for r in summary["runs"]}
    assert set(runs) == {f"AdamW lr {lr:g}" for lr in lm.LEARNING_RATES} | {"HF"}
    budget = summary["budget"]
    assert budget == 0.02 * lm.ADAM_STEPS * lm.ADAM_BATCH
    start = math.log(summary["symbols"])  # uniform predictions: ln(symbols) nats per char
    for r in runs.values():
        assert r["grad_equiv"][0] == 0 and r["val_loss"][0] == pytest.approx(start, rel=0.05)
        assert all(math.isfinite(v) for v in r["val_loss"])
    for lr in lm.LEARNING_RATES:
        adamw = runs[f"AdamW lr {lr:g}"]
        assert adamw["grad_equiv"][-1] == adamw["steps"] * lm.ADAM_BATCH <= budget
        assert adamw["val_loss"][-1] < adamw["val_loss"][0]
    hf = runs["HF"]
    assert hf["steps"] >= 1 and hf["grad_equiv"][-1] >= budget
    # a step is counted in sequences (gradient, preconditioner, products), not in tokens
    first = hf["grad_equiv"][1]
    assert lm.HF_GRADIENT + lm.HF_CURVATURE <= first <= 2 * lm.HF_GRADIENT + (
        lm.HF_CG + 2) * lm.HF_CURVATURE + lm.HF_GRADIENT * 20
    # the comparison is the curves' own
    assert summary["comparison"] == lm.compare(lm.Curve(**hf),
                                               [lm.Curve(**runs[f"AdamW lr {lr:g}"])
                                                for lr in lm.LEARNING_RATES])


def test_the_committed_summary_is_what_results_shows():
    if not SUMMARY.exists():
        pytest.skip("no committed summary of the full-size run yet")
    summary = json.loads(SUMMARY.read_text())
    assert summary["budget"] == lm.ADAM_STEPS * lm.ADAM_BATCH  # the full size, not a smoke run
    assert "--scale" not in summary["command"]
    assert summary["validation_windows"] == lm.VALIDATION
    runs = [lm.Curve(**r) for r in summary["runs"]]
    assert summary["comparison"] == lm.compare(runs[-1], runs[:-1])
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert lm.results_section(summary) in results


def test_section_prints_what_results_shows(tmp_path, capsys):
    runs = [lm.Curve("AdamW lr 0.001", {}, [0.0, 64.0], [0.0, 1.0], [0.0, 1.0], [4.6, 3.0], 1),
            lm.Curve("HF", {}, [0.0, 700.0], [0.0, 5.0], [0.0, 5.0], [4.6, 3.5], 1)]
    summary = {"runs": [lm.asdict(c) for c in runs], "comparison": lm.compare(runs[1], runs[:1])}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(summary))
    assert lm.main(["--section", str(path)]) == 0
    shown = capsys.readouterr().out
    assert shown.strip() == lm.results_section(summary)
    assert "at equal gradient-equivalents (64): HF 4.6000, AdamW lr 0.001 3.0000" in shown
