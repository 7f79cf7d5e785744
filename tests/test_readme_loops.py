"""The code of the README's "In your training loop" section runs and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from extras import require

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## In your training loop", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture
def facade(tmp_path, monkeypatch, capsys):
    """The first block run in a fresh folder: its namespace and what it printed."""
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks()[0], "README.md", "exec"), ns)
    return ns, capsys.readouterr().out.strip().splitlines()


def test_facade_snippet_trains_and_saves(facade):
    ns, lines = facade
    assert len(lines) == 3 and ns["opt"].hf.t == 12
    first, last = float(lines[0].split()[1]), float(lines[-1].split()[1])
    assert last < 0.5 * first  # the labelling is learnable: the loss falls
    saved = torch.load("hf.pt", weights_only=True)
    assert saved["opt"]["hessfree"]["optimizer"]["step"] == 12
    assert all(s.product_cases == 64 * s.products for s in ns["opt"].hf.history)


def test_lightning_snippet_checkpoints_the_hf_state(facade):
    require("lightning")
    ns, _ = facade
    exec(compile(blocks()[1], "README.md", "exec"), ns)
    assert ns["trainer"].global_step == 8  # 4 batches an epoch, 2 epochs
    (ckpt,) = Path("checkpoints").glob("*.ckpt")
    state = torch.load(ckpt, weights_only=True)["optimizer_states"][0]
    assert state["hessfree"]["optimizer"]["step"] == 8


def test_accelerate_snippet_saves_the_hf_state(facade):
    require("accelerate")
    ns, _ = facade
    exec(compile(blocks()[2], "README.md", "exec"), ns)
    saved = torch.load(Path("hf-state") / "optimizer.bin", weights_only=True)
    assert saved["hessfree"]["optimizer"]["step"] == 4
