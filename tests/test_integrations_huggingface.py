"""Hugging Face models with the real ``transformers`` package (the ``huggingface`` extra).

Tiny models built from configs (no download): GPT-2 and a Llama-style model (causal LMs,
dict batches with an attention mask and -100 labels) and BERT for sequence classification.
Products against dense float64 references (torch.func Jacobians with PyTorch's math
attention), the loss against the model's own ``.loss``, chunks against the joined batch, ten
HF steps, and every refusal in one line. The tests skip loudly when ``transformers`` is absent
outside CI, and fail in CI (which installs the extra).
"""

from __future__ import annotations

import pytest
import torch
from extras import require
from test_curvature_attention import readme_code
from transformer_cases import Dense, dense_hessian, module_logits, rel, seeded

import hessfree
from hessfree.errors import InputError

TOL = 1e-8
VOCAB, T = 50, 8


@pytest.fixture(scope="module")
def tf():
    return require("transformers")


def _seeded(model, seed: int):
    return seeded(model, seed, scale=0.1, perturb=True)


def gpt2(tf, seed: int = 0, **overrides):
    cfg = tf.GPT2Config(vocab_size=VOCAB, n_positions=12, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0, **overrides)
    torch.manual_seed(seed)
    return tf.GPT2LMHeadModel(cfg)


def llama(tf, seed: int = 0):
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=12, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0)
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(cfg)


def bert(tf, seed: int = 0):
    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=12,
                        num_labels=3, pad_token_id=0)
    torch.manual_seed(seed)
    return tf.BertForSequenceClassification(cfg)


def lm_batch(n: int = 3, seed: int = 1) -> dict:
    """input_ids, an attention mask with right padding, labels with -100 at padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[0, 6:] = 0
    if n > 2:
        mask[2, 5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _vectors(dim: int, k: int = 2) -> torch.Tensor:
    return torch.randn(dim, k, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def _reference(model, batch, shift: bool = True) -> Dense:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits_of = module_logits(model, **inputs, use_cache=False)
    params = {n: p for n, p in model.named_parameters()}
    return Dense(logits_of, params, batch["labels"], shift=shift)


@pytest.fixture(scope="module")
def gpt2_case(tf):
    model = _seeded(gpt2(tf), 3)
    batch = lm_batch()
    return model, batch, _reference(model, batch)


def test_gpt2_ggn_and_fisher_equal_dense_references(gpt2_case):
    model, batch, ref = gpt2_case
    problem = hessfree.Problem(model)  # the causal LM's loss: token CE with the shift
    assert isinstance(problem.loss, hessfree.TokenCrossEntropy) and problem.loss.shift
    V = _vectors(ref.theta.numel())
    G = hessfree.GGN(problem, batch)
    assert G.backend == "double-backward"
    assert abs(G.value - ref.value()) < 1e-12
    assert rel(G @ V, ref.ggn(V)) < TOL
    F = hessfree.EmpiricalFisher(problem, batch)
    assert rel(F @ V, ref.fisher(V)) < TOL
    assert rel(F.diagonal(), torch.diagonal(ref.EF)) < TOL  # one backward per sequence
    Gf = hessfree.GGN(problem, batch, backend="forward")  # jvp per product (mask code)
    assert rel(Gf @ V[:, 0], ref.ggn(V[:, :1])[:, 0]) < TOL
    lean = {"backend": "jvp", "cache": False}  # nothing kept between products
    Gl, Fl = hessfree.GGN(problem, batch, **lean), hessfree.EmpiricalFisher(problem, batch, **lean)
    assert rel(Gl @ V, ref.ggn(V)) < TOL and rel(Fl @ V, ref.fisher(V)) < TOL
    assert Gl.value == G.value and rel(Gl.grad, G.grad) < 1e-14


def test_gpt2_hessian_equals_the_dense_hessian(gpt2_case):
    model, batch, _ = gpt2_case
    problem = hessfree.Problem(model)
    subset = ["transformer.wte.weight", "transformer.h.0.attn.c_attn.bias",
              "transformer.h.1.ln_2.weight"]  # wte is tied to the output layer
    params = {n: p for n, p in problem.parameters().items() if n in subset}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    dense = dense_hessian(module_logits(model, **inputs, use_cache=False),
                          dict(model.named_parameters()), subset, batch["labels"], shift=True)
    H = hessfree.Hessian(problem, batch, params=params)
    V = _vectors(H.dim, 3)
    assert rel(H @ V, dense @ V) < TOL


def test_the_objective_is_the_models_own_loss(tf, gpt2_case):
    model, batch, _ = gpt2_case
    problem = hessfree.Problem(model)
    ours = problem.value(problem.parameters(), batch)
    with torch.no_grad():
        theirs = float(model(**batch).loss)  # Hugging Face computes it in float32
    assert ours == pytest.approx(theirs, rel=1e-6)
    classifier = _seeded(bert(tf), 4)
    cls_batch = {**lm_batch(), "labels": torch.tensor([0, 2, 1])}
    cls_problem = hessfree.Problem(classifier)
    assert isinstance(cls_problem.loss, hessfree.losses.CrossEntropy)
    with torch.no_grad():
        want = float(classifier(**cls_batch).loss)
    assert cls_problem.value(cls_problem.parameters(), cls_batch) == pytest.approx(want,
                                                                                  rel=1e-12)
    masked = _seeded(tf.BertForMaskedLM(classifier.config), 5)  # no shift, -100 ignored
    mlm_problem = hessfree.Problem(masked)
    assert not mlm_problem.loss.shift
    with torch.no_grad():
        want = float(masked(**batch).loss)
    assert mlm_problem.value(mlm_problem.parameters(), batch) == pytest.approx(want, rel=1e-12)


def test_llama_and_bert_ggn_equal_dense_references(tf):
    """Llama to 1e-6: its RMSNorm computes in float32 whatever the model's dtype (by design),
    so two float64 derivative computations agree to float32 rounding only."""
    model = _seeded(llama(tf), 5)
    batch = lm_batch()
    ref = _reference(model, batch)
    V = _vectors(ref.theta.numel())
    assert rel(hessfree.GGN(hessfree.Problem(model), batch) @ V, ref.ggn(V)) < 1e-6
    model = _seeded(bert(tf), 6)
    batch = {**lm_batch(), "labels": torch.tensor([1, 0, 2])}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    params = dict(model.named_parameters())
    ref = Dense(module_logits(model, **inputs), params, batch["labels"], shift=False)
    V = _vectors(ref.theta.numel())
    assert rel(hessfree.GGN(hessfree.Problem(model), batch) @ V, ref.ggn(V)) < TOL


def test_dict_chunks_of_different_sizes_equal_the_joined_batch(tf):
    model = _seeded(gpt2(tf), 7)
    batch = lm_batch(5, seed=8)
    chunks = [{k: v[a:b] for k, v in batch.items()} for a, b in ((0, 1), (1, 4), (4, 5))]
    problem = hessfree.Problem(model, weight_decay=1e-3)
    V = _vectors(sum(p.numel() for p in model.parameters()))
    for cls in (hessfree.GGN, hessfree.EmpiricalFisher):
        a, b = cls(problem, batch), cls(problem, chunks)
        c = cls(problem, chunks, backend="jvp", cache=False)  # nothing kept between products
        assert abs(a.value - b.value) < 1e-13 and rel(b.grad, a.grad) < 1e-12
        assert abs(a.value - c.value) < 1e-13 and rel(c.grad, a.grad) < 1e-12
        assert rel(b @ V, a @ V) < 1e-12 and rel(c @ V, a @ V) < 1e-12, cls.__name__
    loader = torch.utils.data.DataLoader(
        [{k: v[i] for k, v in batch.items()} for i in range(5)], batch_size=2)
    params = problem.parameters()
    assert problem.value(params, loader) == pytest.approx(problem.value(params, batch),
                                                          rel=1e-13)


def test_ten_hf_steps_lower_a_gpt2_training_loss(tf):
    """HF on a tiny GPT-2 (float32) from dict batches, 12 sequences of a learnable language
    (counting up by a per-sequence stride), in two chunks. Settings for a language model:
    λ₀ = 1 (Martens' 45 was for autoencoder losses summed over 784 outputs; a mean token
    cross-entropy has curvature of order one), at most 20 CG iterations a step, the rest as
    Martens (2010): preconditioner, CG-backtracking, Armijo line search."""
    model = gpt2(tf, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # training mode, no dropout
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, VOCAB, (12, 1), generator=g)
    ids = (start + torch.randint(1, 4, (12, 1), generator=g) * torch.arange(10)) % VOCAB
    mask = torch.ones_like(ids)
    mask[::4, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    data = [{"input_ids": ids[i:i + 6], "attention_mask": mask[i:i + 6],
             "labels": labels[i:i + 6]} for i in (0, 6)]
    problem = hessfree.Problem(model)
    opt = hessfree.HessianFree(problem, config=hessfree.HFConfig.martens2010(
        initial_lambda=1.0, cg_max_iters=20))
    before = problem.value(problem.parameters(), data)
    stats = [opt.step(data) for _ in range(10)]
    after = problem.value(problem.parameters(), data)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(s.accepted for s in stats) >= 5 and after < before - 0.2, (before, after)


def test_the_readme_hugging_face_example_runs_and_learns(tf, capsys):
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(readme_code("### A Hugging Face model"), "README.md", "exec"), ns)
    losses = [float(line.split()[0]) for line in capsys.readouterr().out.strip().splitlines()]
    problem, batches = ns["problem"], ns["batches"]
    with torch.no_grad():
        theirs = sum(float(ns["model"](**b).loss) * int(b["labels"][:, 1:].ne(-100).sum())
                     for b in batches) / sum(int(b["labels"][:, 1:].ne(-100).sum())
                                             for b in batches)
    assert problem.value(problem.parameters(), batches) == pytest.approx(theirs, rel=1e-5)
    assert len(losses) == 3 and losses[-1] < losses[0]


# -- refusals: one line each ------------------------------------------------------------------
def _one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg and info.value.__cause__ is None
    return msg


def test_training_mode_dropout_is_refused(tf):
    model = gpt2(tf).double()  # built from a config: training mode, dropout 0.1
    problem = hessfree.Problem(model)
    with pytest.raises(InputError) as info:
        hessfree.GGN(problem, lm_batch())
    msg = _one_line(info)
    assert "training mode with dropout" in msg and "model.eval()" in msg
    model.eval()
    hessfree.GGN(problem, lm_batch())  # the same problem, now in eval mode


def test_a_flash_attention_implementation_is_refused(tf):
    model = gpt2(tf).eval()
    model.config._attn_implementation = "flash_attention_2"  # simulated: no flash_attn here
    with pytest.raises(InputError) as info:
        hessfree.Problem(model)
    msg = _one_line(info)
    assert "'flash_attention_2'" in msg and "set_attn_implementation('sdpa')" in msg


def test_an_output_without_logits_is_refused(tf):
    base = tf.GPT2Model(gpt2(tf).config).eval()
    with pytest.raises(InputError, match="no default loss for GPT2Model"):
        hessfree.Problem(base)
    problem = hessfree.Problem(base, hessfree.TokenCrossEntropy())
    with pytest.raises(InputError) as info:
        problem.value(problem.parameters(), lm_batch())
    assert "GPT2Model's output has no logits" in _one_line(info)


def test_a_dict_batch_without_labels_is_refused(tf):
    problem = hessfree.Problem(gpt2(tf).eval())
    batch = lm_batch()
    del batch["labels"]
    with pytest.raises(InputError) as info:
        hessfree.GGN(problem, batch)
    assert "has no 'labels'" in _one_line(info)
