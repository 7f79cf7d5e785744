"""Batches of a run: pieces of the gradient batch (HF-RNN's layout), held-out minibatches."""

import numpy as np
import pytest
import torch

from hessfree.hf.phases import BatchSpec, Phase
from hessfree.runs.batching import BACKTRACK, CURVATURE, GRADIENT, RHO, SEARCH, BatchDrawer
from hessfree.runs.cli import main
from hessfree.runs.dataset import Dataset
from hessfree.runs.experiments import get
from hessfree.runs.results import read_results


def _stored(n=64):
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 3)
    return Dataset((x, x.clone()), (x[:8], x[:8]))


def _fresh():
    def fresh(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 4, generator=g, dtype=torch.float64)
        return x, (x.sum(1, keepdim=True), torch.ones(n, 1))
    return Dataset(fresh(16, 0), fresh(16, 1), fresh)


def _ids(batch):
    return batch[0][:, 0].long().tolist()


@pytest.mark.parametrize("fresh", [False, True])
def test_pieces_are_disjoint_consecutive_parts_of_the_gradient_batch(fresh):
    data = _fresh() if fresh else _stored()
    drawer = BatchDrawer(data, seed=3, chunk=10_000)
    for t in range(3):
        grad = drawer.draw(BatchSpec("minibatch", size=40), t, GRADIENT)
        pieces = [drawer.draw(BatchSpec("piece", parts=10, index=i), t, role)
                  for i, role in ((0, CURVATURE), (1, BACKTRACK), (2, SEARCH))]
        for i, p in enumerate(pieces):
            torch.testing.assert_close(p[0], grad[0][4 * i:4 * i + 4], rtol=0, atol=0)
        if not fresh:
            ids = [set(_ids(p)) for p in pieces]
            assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])


def test_a_piece_needs_its_gradient_batch_first():
    drawer = BatchDrawer(_stored(), seed=0, chunk=100)
    with pytest.raises(ValueError, match="drawn first"):
        drawer.draw(BatchSpec("piece", parts=4, index=1), 0, CURVATURE)
    drawer.draw(BatchSpec("minibatch", size=8), 0, GRADIENT)
    with pytest.raises(ValueError, match="drawn first"):
        drawer.draw(BatchSpec("piece", parts=4, index=1), 1, CURVATURE)


def test_fresh_gradient_batches_larger_than_the_memory_chunk_come_in_chunks():
    drawer = BatchDrawer(_fresh(), seed=0, chunk=16)
    grad = drawer.draw(BatchSpec("minibatch", size=40), 0, GRADIENT)
    assert isinstance(grad, list) and [len(c[0]) for c in grad] == [16, 16, 8]
    piece = drawer.draw(BatchSpec("piece", parts=10, index=2), 0, CURVATURE)
    torch.testing.assert_close(piece[0], grad[0][0][8:12])


def test_held_out_minibatches_are_disjoint_from_the_gradient_minibatch():
    """The momentum-like HF's check batch no longer shares ~1/16 of its cases with the fitted
    minibatch; it is drawn from the other cases, reproducibly after a resume."""
    n, size = 64, 16
    a = BatchDrawer(_stored(n), seed=5, chunk=1000)
    seen = []
    for t in range(12):
        g = set(_ids(a.draw(BatchSpec("minibatch", size=size), t, GRADIENT)))
        c = _ids(a.draw(BatchSpec("minibatch", size=size), t, RHO))
        assert len(set(c)) == size and not (g & set(c))
        seen.append(c)
        if t == 5:
            state = a.state_dict()
    b = BatchDrawer(_stored(n), seed=5, chunk=1000)
    b.load_state_dict(state)
    for t in range(6, 12):
        b.draw(BatchSpec("minibatch", size=size), t, GRADIENT)
        assert _ids(b.draw(BatchSpec("minibatch", size=size), t, RHO)) == seen[t]


def test_piece_specs_are_validated():
    with pytest.raises(ValueError, match="index"):
        BatchSpec("piece", parts=3)
    with pytest.raises(ValueError, match="index"):
        BatchSpec("piece", parts=3, index=3)
    with pytest.raises(ValueError, match="index"):
        BatchSpec("minibatch", size=3, index=0)
    with pytest.raises(ValueError, match="gradient"):
        Phase("a", gradient=BatchSpec("piece", parts=3, index=0))
    p = Phase("a", curvature=BatchSpec("piece", parts=10, index=0),
              backtrack=BatchSpec("piece", parts=10, index=1),
              search=BatchSpec("piece", parts=10, index=2))
    assert Phase.from_dict(p.to_dict()) == p


def test_the_rnn_hf_preset_uses_hf_rnns_batches(capsys, tmp_path):
    """Gradient on 10 pieces of fresh sequences; curvature, backtracking, search on 0, 1, 2."""
    exp = get("addition")
    _, settings = exp.settings_for("hf", {})
    phase = settings.phases(1000, True)[0]
    assert phase.gradient == BatchSpec("minibatch", size=10_000)
    assert [phase.curvature, phase.backtrack, phase.search] == [
        BatchSpec("piece", parts=10, index=i) for i in range(3)]
    cfg = settings.config
    assert (cfg.initial_lambda, cfg.structural_damping, cfg.cg_max_iters) == (0.01, 0.03, 300)
    argv = ["addition", "--optimizer", "hf", "--set", "T=12", "--set", "n_hidden=6",
            "--set", "grad_cases=60", "--set", "cg_max_iters=12", "--set", "n_test=32",
            "--set", "n_train=60", "--steps", "3", "--eval-every", "1", "--seed", "1"]
    paths = []
    for out in ("a", "b"):
        assert main(["train", *argv, "--out", str(tmp_path / out), "--quiet"]) == 0
        paths.append(capsys.readouterr().out.strip().splitlines()[-1])
    a, b = (read_results(p) for p in paths)
    assert len(a.steps["step"]) == 3
    # the backtracking evaluated the held-out piece: chosen iterates lie on HF-RNN's grid
    # 1, 11, ... or are an early-stopped last one
    for it, n_cg in zip(a.steps["backtrack_iter"], a.steps["cg_iters"]):
        assert (it - 1) % 10 == 0 or it == n_cg
    for k in ("loss", "rho", "lambda_after", "cg_iters", "backtrack_iter", "step_size"):
        np.testing.assert_array_equal(a.steps[k], b.steps[k], err_msg=k)


@pytest.mark.parametrize("shared_targets", [False, True])
def test_chunks_are_a_seeded_partition_taken_when_used(shared_targets):
    """HFDemo's fixed chunks: piece t mod parts of one seeded permutation, cut in n // parts;
    the pieces are taken when used (an autoencoder's targets share the inputs' copy)."""
    n, parts = 50, 4
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 3)
    y = x if shared_targets else -x
    drawer = BatchDrawer(Dataset((x, y), (x[:8], y[:8])), seed=7, chunk=1000)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(7))  # independent reference
    size = n // parts
    seen = set()
    for t in range(2 * parts):
        cx, cy = drawer.draw(BatchSpec("chunk", parts=parts), t, CURVATURE)
        piece = perm[(t % parts) * size:(t % parts + 1) * size]
        torch.testing.assert_close(cx, x[piece], rtol=0, atol=0)
        torch.testing.assert_close(cy, y[piece], rtol=0, atol=0)
        assert (cy.data_ptr() == cx.data_ptr()) == shared_targets
        seen |= set(_ids((cx, cy)))
    assert len(seen) == parts * size  # disjoint pieces
