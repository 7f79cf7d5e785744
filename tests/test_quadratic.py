"""Tests of hessfree.quadratic.Quadratic: values against dense formulas, save/load, errors."""

import json
import os

import h5py
import numpy as np
import pytest
import torch
from curvature_cases import Reference, TinyRNN, TupleInput, make_case, mlp

import hessfree
from hessfree.quadratic import Quadratic

F32, F64 = torch.float32, torch.float64
DTYPES = pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
LAM = 0.37


def spd(n, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=F64)
    a = m @ m.T + n * torch.eye(n, dtype=F64)
    return ((a + a.T) / 2).to(dtype), torch.randn(n, generator=g, dtype=F64).to(dtype)


def rand(n, dtype, seed=5):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


# -- values against dense formulas ---------------------------------------------------------------
def test_from_dense_value_grad_matmul_against_numpy():
    A, b = spd(7, 0)
    q = Quadratic.from_dense(A, b)
    p = rand(7, F64)
    An, bn, pn = A.numpy(), b.numpy(), p.numpy()
    assert q.dim == 7 and q.shape == (7, 7) and q.lam == 0.0 and q.is_dense
    assert torch.equal(q.g, -b) and torch.equal(q.b, b)
    assert q.value(p) == pytest.approx(-bn @ pn + 0.5 * pn @ An @ pn, rel=1e-12)
    np.testing.assert_allclose(q.grad(p).numpy(), An @ pn - bn, rtol=1e-12)
    np.testing.assert_allclose((q @ p).numpy(), An @ pn, rtol=1e-12)
    np.testing.assert_allclose(q.minimizer().numpy(), np.linalg.solve(An, bn), rtol=1e-10)
    assert q.products == 3  # value, grad, @; the dense minimizer takes none


@pytest.mark.parametrize("case", [("mlp", "mse"), ("tuple", "bce"), ("autoencoder", "bce")])
def test_operator_backed_equals_dense_reference(case):
    model, loss, batch = make_case(*case, "mean", F64, seed=1)
    G = hessfree.GGN(hessfree.Problem(model, loss, weight_decay=1e-3), batch)
    g = rand(G.dim, F64, seed=2)
    q = Quadratic(G, g, LAM)
    # independent: jacrev GGN + λI, numpy formulas
    ref = Reference(model, case[1], "mean", batch, weight_decay=1e-3)
    A = (ref.ggn() + LAM * torch.eye(G.dim, dtype=F64)).numpy()
    p = rand(G.dim, F64, seed=3)
    pn, gn = p.numpy(), g.numpy()
    assert q.value(p) == pytest.approx(gn @ pn + 0.5 * pn @ A @ pn, rel=1e-10)
    np.testing.assert_allclose(q.grad(p).numpy(), A @ pn + gn, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose((q @ p).numpy(), A @ pn, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(q.dense().numpy(), A, rtol=1e-9, atol=1e-12)
    # the dense twin from G.dense() + λI gives the same quadratic
    twin = Quadratic.from_dense(G.dense() + LAM * torch.eye(G.dim, dtype=F64), -g)
    assert twin.value(p) == pytest.approx(q.value(p), rel=1e-10)
    # list/dict vectors shaped like θ
    parts = G.layout.split(p)
    assert q.value(parts) == pytest.approx(q.value(p), rel=1e-14)
    assert torch.allclose(q @ list(parts.values()), q @ p)


def test_structural_damping_is_in_the_quadratic():
    model, loss, batch = make_case("rnn", "mse", "mean", F64, seed=0)
    mu = 0.3
    G = hessfree.GGN(hessfree.Problem(model, loss), batch, structural_damping=mu)
    q = Quadratic(G, G.grad, LAM)
    ref = Reference(model, "mse", "mean", batch)
    A = ref.ggn() + LAM * torch.eye(G.dim, dtype=F64) + mu * LAM * ref.structural()
    p = rand(G.dim, F64)
    np.testing.assert_allclose((q @ p).numpy(), (A @ p).numpy(), rtol=1e-9, atol=1e-12)


# -- errors of construction and of vectors --------------------------------------------------------
@pytest.mark.parametrize("lam", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_lam_is_rejected(lam):
    model, loss, batch = make_case("mlp", "mse", "mean", F64)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    with pytest.raises(ValueError, match="lam: expected a finite damping λ > 0"):
        Quadratic(G, G.grad, lam)
    with pytest.raises(TypeError, match="lam"):
        Quadratic(G, G.grad, True)


def test_constructor_errors():
    model, loss, batch = make_case("mlp", "mse", "mean", F64)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    with pytest.raises(TypeError, match="undamped operator"):
        Quadratic(G.damped(1.0), G.grad, 1.0)
    with pytest.raises(TypeError, match="from_dense"):
        Quadratic(torch.eye(3), torch.ones(3), 1.0)
    with pytest.raises(ValueError, match=f"g: expected a flat 1-D tensor of length {G.dim}"):
        Quadratic(G, torch.zeros(G.dim + 1, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="g: expected dtype torch.float64"):
        Quadratic(G, torch.zeros(G.dim, dtype=F32), 1.0)
    q = Quadratic(G, G.grad, 1.0)
    with pytest.raises(ValueError, match=f"p: expected a flat 1-D tensor of length {G.dim}"):
        q.value(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="p: expected dtype torch.float64"):
        q @ torch.zeros(G.dim, dtype=F32)


def test_from_dense_errors():
    A, b = spd(4, 0)
    with pytest.raises(ValueError, match="A: expected a non-empty square 2-D tensor"):
        Quadratic.from_dense(A[:3], b)
    with pytest.raises(ValueError, match="A: expected a non-empty square 2-D tensor"):
        Quadratic.from_dense(b, b)
    bad = A.clone()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match="A: expected a symmetric matrix"):
        Quadratic.from_dense(bad, b)
    with pytest.raises(ValueError, match="A: expected a floating-point dtype"):
        Quadratic.from_dense(torch.eye(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="b: expected a flat 1-D tensor of length 4"):
        Quadratic.from_dense(A, b[:3])
    with pytest.raises(ValueError, match="b: expected dtype torch.float64"):
        Quadratic.from_dense(A, b.float())
    q = Quadratic.from_dense(A, b)
    with pytest.raises(ValueError, match="p: expected a flat 1-D tensor of length 4"):
        q.value(torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="p: expected dtype torch.float64"):
        q.grad(torch.zeros(4, dtype=F32))


# -- save / load -------------------------------------------------------------------------------
def assert_same_q(q1, q2, seed=11, tol=1e-6):
    assert q2.dim == q1.dim and q2.dtype == q1.dtype and q2.lam == q1.lam
    torch.testing.assert_close(q2.g, q1.g, rtol=0, atol=0)
    for s in range(3):
        p = rand(q1.dim, q1.dtype, seed + s)
        assert rel(q2.value(p), q1.value(p)) <= tol
        assert float((q2 @ p - q1 @ p).norm()) <= tol * float((q1 @ p).norm())


@DTYPES
def test_dense_round_trip(tmp_path, dtype):
    A, b = spd(6, 1, dtype)
    q = Quadratic.from_dense(A, b)
    q.save(tmp_path / "q.h5", step=3, note="dense")
    q2 = Quadratic.load(tmp_path / "q.h5")
    assert q2.is_dense and q2.attrs == {"step": 3, "note": "dense"}
    assert_same_q(q, q2)
    assert sorted(os.listdir(tmp_path)) == ["q.h5"]  # no temporary file left


def tuple_case(dtype):
    """TupleInput model, MSE, chunked batch of two minibatches."""
    model, loss, (x, t) = make_case("tuple", "mse", "mean", dtype, seed=2, n=7)
    batch = [((x[0][:4], x[1][:4]), t[:4]), ((x[0][4:], x[1][4:]), t[4:])]
    return model, loss, batch, {}, TupleInput


def masked_rnn_case(dtype):
    """tanh RNN, masked BCE targets (values, mask), structural damping, chunked."""
    model, loss, (x, t) = make_case("rnn", "bce", "sum", dtype, seed=3, n=6)
    mask = (torch.arange(4) < torch.tensor([4, 3, 2, 4, 1, 3])[:, None]).to(dtype)
    batch = [(x[:3], (t[:3], mask[:3])), (x[3:], (t[3:], mask[3:]))]
    return model, loss, batch, {"structural_damping": 0.25}, TinyRNN


def ce_case(dtype):
    """MLP, CrossEntropy with integer class targets, one chunk, weight decay."""
    model, loss, batch = make_case("mlp", "ce", "mean", dtype, seed=4, n=9)
    return model, loss, batch, {}, mlp


CASES = {"tuple-chunked": tuple_case, "rnn-masked-structural": masked_rnn_case, "ce": ce_case}


@DTYPES
@pytest.mark.parametrize("case", list(CASES))
def test_operator_round_trip(tmp_path, dtype, case):
    model, loss, batch, kw, factory = CASES[case](dtype)
    wd = 2e-3 if case == "ce" else 0.0
    G = hessfree.GGN(hessfree.Problem(model, loss, wd), batch, **kw)
    q = Quadratic(G, rand(G.dim, dtype, 1), LAM)
    q.save(tmp_path / "q.h5")
    # a fresh model of the same class, other weights: the file's θ is used, the model untouched
    torch.manual_seed(99)
    other = factory().to(dtype)
    before = {n: p.detach().clone() for n, p in other.named_parameters()}
    q2 = Quadratic.load(tmp_path / "q.h5", model=other)
    assert_same_q(q, q2)
    for n, p in other.named_parameters():
        assert torch.equal(p, before[n]), n
    op = q2.operator
    assert type(op.problem.loss) is type(loss) and op.problem.loss.reduction == loss.reduction
    assert op.problem.weight_decay == wd and op.backend == G.backend
    assert op.structural_damping == kw.get("structural_damping", 0.0)
    assert len(op.chunks) == len(G.chunks) and op.n_cases == G.n_cases
    for n, p in G.params.items():
        assert torch.equal(op.params[n], p.detach())


def test_save_into_group_of_existing_file(tmp_path):
    model, loss, batch, *_ = tuple_case(F64)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    q = Quadratic(G, G.grad, LAM)
    path = tmp_path / "results.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("steps/loss", data=np.arange(3.0))
        q.save(f.create_group("quadratics/3"), experiment="curves",
               model_spec={"sizes": [3, 4]}, step=3)
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["quadratics", "steps"]
        assert "__hessfree_writing__" not in f["quadratics/3"]
        q2 = Quadratic.load(f["quadratics/3"], model=model)
        assert json.loads(f["quadratics/3"].attrs["model_spec"]) == {"sizes": [3, 4]}
    assert q2.attrs == {"experiment": "curves", "model_spec": {"sizes": [3, 4]}, "step": 3}
    assert_same_q(q, q2)
    with h5py.File(path, "a") as f, pytest.raises(ValueError, match="expected an empty HDF5"):
        q.save(f["quadratics/3"])


def test_failed_save_leaves_nothing(tmp_path):
    q = Quadratic.from_dense(*spd(3, 0))
    path = tmp_path / "q.h5"
    q.save(path, version="first")
    with pytest.raises(TypeError, match="attrs: 'bad' must be"):
        q.save(path, bad=object())
    assert sorted(os.listdir(tmp_path)) == ["q.h5"]
    assert Quadratic.load(path).attrs == {"version": "first"}  # the old file is intact
    with h5py.File(tmp_path / "r.h5", "w") as f:
        grp = f.create_group("quadratics/0")
        with pytest.raises(TypeError, match="attrs: 'bad' must be"):
            q.save(grp, bad=object())
        assert len(grp) == 0 and len(grp.attrs) == 0
    with pytest.raises(ValueError, match="attrs: 'lam' is written by save itself"):
        q.save(tmp_path / "x.h5", lam=3)


def test_custom_loss_needs_loss_on_load(tmp_path):
    model, _, batch = make_case("mlp", "mse", "sum", F64)

    def my_loss(z, t):
        return ((z - t) ** 2).sum()

    my_loss.reduction = "sum"
    G = hessfree.GGN(hessfree.Problem(model, my_loss), batch)
    q = Quadratic(G, G.grad, LAM)
    q.save(tmp_path / "q.h5")
    with h5py.File(tmp_path / "q.h5") as f:
        assert f.attrs["loss"] == "custom" and f.attrs["loss_reduction"] == "sum"
    with pytest.raises(ValueError, match="loss: required; .*custom loss"):
        Quadratic.load(tmp_path / "q.h5", model=model)
    assert_same_q(q, Quadratic.load(tmp_path / "q.h5", model=model, loss=my_loss))


def test_model_from_experiment(tmp_path):
    model, loss, batch = make_case("mlp", "mse", "mean", F64)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    q = Quadratic(G, rand(G.dim, F64), LAM)
    q.save(tmp_path / "q.h5", experiment="toy", model_spec={"width": 6})
    calls = []

    def build_model(experiment, spec):
        calls.append((experiment, spec))
        return model

    assert_same_q(q, Quadratic.load(tmp_path / "q.h5", build_model=build_model))
    assert calls == [("toy", {"width": 6})]
    with pytest.raises(ValueError, match="experiment 'toy'.*build_model=.*model="):
        Quadratic.load(tmp_path / "q.h5")


def saved_operator(tmp_path, **attrs):
    model, loss, batch = make_case("tuple", "mse", "mean", F64)
    G = hessfree.GGN(hessfree.Problem(model, loss), batch)
    q = Quadratic(G, rand(G.dim, F64), LAM)
    q.save(tmp_path / "q.h5", **attrs)
    return model, tmp_path / "q.h5"


def edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize("change, message", [
    (lambda f: f.attrs.__delitem__("schema_version"), "missing attribute 'schema_version'"),
    (lambda f: f.attrs.__setitem__("schema_version", 2),
     "schema version 2.*reads versions up to 1; upgrade the hessfree package"),
    (lambda f: f.attrs.__setitem__("format", "other"), "attribute 'format' is not"),
    (lambda f: f.__delitem__("g"), "missing dataset 'g'"),
    (lambda f: f.__delitem__("theta/c.weight"), "'/theta': missing dataset 'c.weight'"),
    (lambda f: f.__delitem__("batch/0/targets"), "'/batch/0': missing dataset or group 'targets'"),
    (lambda f: f.attrs.__setitem__("lam", 0.0), r"lam \(in the file\): expected a finite"),
    (lambda f: f.attrs.__setitem__("lam", "big"), "attribute 'lam' is malformed"),
    (lambda f: f.attrs.__setitem__("param_names", "[oops"), "'param_names' is not valid JSON"),
    (lambda f: f.attrs.__setitem__("kind", "sparse"), "attribute 'kind' is malformed"),
    (lambda f: f.attrs.__delitem__("loss"), "missing attribute 'loss'"),
])
def test_malformed_files(tmp_path, change, message):
    model, path = saved_operator(tmp_path)
    edit(path, change)
    with pytest.raises(ValueError, match=message):
        Quadratic.load(path, model=model)


def test_not_a_quadratic_and_no_model(tmp_path):
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(ValueError, match="missing attribute 'format'"):
        Quadratic.load(tmp_path / "empty.h5")
    model, path = saved_operator(tmp_path)
    with pytest.raises(ValueError, match="model: required; the file names no experiment"):
        Quadratic.load(path)
    with pytest.raises(TypeError, match="path_or_group"):
        Quadratic.load(3)


def test_model_mismatch_names_and_shapes(tmp_path):
    _, path = saved_operator(tmp_path)
    with pytest.raises(ValueError, match=r"shape \(2, 4\) in the model but \(3, 4\) in the file"):
        Quadratic.load(path, model=TupleInput(n_out=2).double())
    wrong = torch.nn.Sequential(torch.nn.Linear(3, 4)).double()
    with pytest.raises(ValueError, match=r"in the file but not in the model: \['a.weight'"):
        Quadratic.load(path, model=wrong)
    with pytest.raises(ValueError, match=r"in the model but not in the file: \['w_in.weight'"):
        Quadratic.load(path, model=TinyRNN().double())


def test_h5_tree_round_trip(tmp_path):
    from hessfree.quadratic.h5 import read_tree, write_tree

    tree = {"a/b": (torch.arange(3), [torch.ones(2, dtype=torch.bfloat16)]),
            "m": torch.tensor([True, False])}
    with h5py.File(tmp_path / "t.h5", "w") as f:
        write_tree(f, "x", tree, "batch")
        with pytest.raises(TypeError, match=r"batch\[1\]: cannot save an object of type str"):
            write_tree(f, "y", (torch.ones(1), "text"), "batch")
    with h5py.File(tmp_path / "t.h5", "r") as f:
        back = read_tree(f["x"], torch.device("cpu"))
    assert list(back) == ["a/b", "m"] and isinstance(back["a/b"], tuple)
    assert torch.equal(back["a/b"][0], tree["a/b"][0])
    assert back["a/b"][1][0].dtype == torch.bfloat16 and torch.equal(back["m"], tree["m"])
