"""Worker for tests/test_distributed_sequences.py: one rank of a gloo group on 127.0.0.1.

Usage (torchrun's environment): python _dist_sequences.py OUT_DIR N SEED MODEL
MODEL is ``encoder`` (a causal nn.TransformerEncoder LM, tuple batches with a padding mask) or
``gpt2`` (a tiny Hugging Face GPT-2, dict batches). Each rank keeps its uneven shard of the
sequences (in two chunks where it has more than one), computes every reduced quantity with a
distributed Problem and the token cross-entropy, and saves them; the parent compares with one
process on the joined batch. Token counts differ between ranks (padding and -100 labels), so
only a global token normaliser gives the joined batch's numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))


import hessfree  # noqa: E402
from hessfree.batches import take_cases  # noqa: E402
from hessfree.distributed import shard  # noqa: E402


def case(model_name: str, n: int, seed: int):
    """(model, loss, joined batch, v, V): seeded, float64, eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ids = torch.randint(1, 40, (n, 8), generator=g)
    pad = torch.ones(n, 8, dtype=torch.long)
    for row in range(0, n, 3):
        pad[row, 4 + row % 4:] = 0
    labels = ids.masked_fill(pad == 0, -100)
    labels[torch.rand(n, 8, generator=g) < 0.2] = -100
    if model_name == "gpt2":
        import transformers as tf

        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=40, n_positions=8, n_embd=16,
                                                 n_layer=2, n_head=2, bos_token_id=0,
                                                 eos_token_id=0))
        batch = {"input_ids": ids, "attention_mask": pad, "labels": labels}
    else:
        from transformer_cases import CausalLM

        model = CausalLM(vocab=40)
        batch = ((ids, pad), labels)
    model = model.double().eval()
    dim = sum(p.numel() for p in model.parameters())
    v = torch.randn(dim, generator=g, dtype=torch.float64)
    V = torch.randn(dim, 2, generator=g, dtype=torch.float64)
    return model, hessfree.TokenCrossEntropy(shift=True), batch, v, V


def quantities(problem, batch, v, V) -> dict:
    """Every reduced quantity of the token loss: the three operators (products, gradient,
    value, token count; the GGN and EF also uncached with ``backend="jvp"``, which keeps
    nothing between products), the EF diagonal, a damped solve and the objective."""
    lean = {"backend": "jvp", "cache": False}
    ops = {"ggn": hessfree.GGN(problem, batch), "hessian": hessfree.Hessian(problem, batch),
           "fisher": hessfree.EmpiricalFisher(problem, batch),
           "ggn_lean": hessfree.GGN(problem, batch, **lean),
           "fisher_lean": hessfree.EmpiricalFisher(problem, batch, **lean)}
    out = {"fisher_diag": ops["fisher"].diagonal(),
           "ggn_solve": ops["ggn"].solve(V, 0.5, rtol=1e-12).x}
    for name, op in ops.items():
        out.update({f"{name}_mv": op @ v, f"{name}_mm": op @ V, f"{name}_grad": op.grad,
                    f"{name}_value": torch.tensor(op.value),
                    f"{name}_count": torch.tensor(op.count)})
    theta = problem.parameters()
    objective, gradient = problem.value_and_grad(theta, batch)
    return {**out, "value_and_grad": gradient,
            "value": torch.tensor([problem.value(theta, batch), objective])}


def main() -> None:
    folder, n, seed, model_name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, loss, batch, v, V = case(model_name, n, seed)
    part = shard(batch, rank, world)
    rows = int((part["input_ids"] if isinstance(part, dict) else part[1]).shape[0])
    if rows > 1:  # two chunks of unequal size on this rank
        cut = max(1, rows // 3)
        part = [take_cases(part, slice(0, cut)), take_cases(part, slice(cut, rows))]
    problem = hessfree.Problem(model, loss, weight_decay=1e-3, group="world")
    torch.save(quantities(problem, part, v, V), f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
