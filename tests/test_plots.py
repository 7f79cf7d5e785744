import logging
import math

import numpy as np
import pytest

from hessfree.hf.stats import StepStats
from hessfree.runs import plots, rows
from hessfree.runs.plots import plot_runs
from hessfree.runs.results import ResultsWriter, read_results

matplotlib = pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hf_row(i):
    values = {k: {"float": 1.0, "int": 1, "bool": True, "str": "accepted"}[t]
              for k, t in StepStats.__annotations__.items()}
    values.update(step=i, loss_before=math.nan if i == 3 else 1.0 / (i + 1),
                  lambda_after=10.0 * 0.7**i, cg_iters=5 + 3 * i, seconds=0.2,
                  grad_cases=100, product_cases=40 * (i + 1), forward_cases=30)
    return rows.hf_row(StepStats(**values), 1000)


def nag_row(i):
    return rows.momentum_row(i, True, "accepted", 3.0 / (i + 2), 100, 1000, 0.01, 0.9, 0.01)


def write(path, optimizer, row, n_steps, evals):
    with ResultsWriter(path, {"experiment": "toy", "optimizer": optimizer, "n_train": 1000}) as w:
        for i in range(n_steps):
            w.append_step(row(i))
        for j in range(evals):
            w.append_eval({"step": 4 * j, "seconds": 0.8 * j, "grad_equiv": 2.5 * j,
                           "train_error": 0.5 * 0.8**j, "test_error": 0.55 * 0.85**j})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    (root / "hf-1").mkdir()
    (root / "nag-1").mkdir()
    return [write(root / "hf-1" / "results.h5", "hf", hf_row, 12, 4),
            write(root / "nag-1" / "results.h5", "nag", nag_row, 40, 6)]


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    rgba = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgba = np.concatenate([rgba, np.full(rgba.shape[:2] + (4 - rgba.shape[2],), 255, np.uint8)],
                          axis=2)
    assert len(np.unique(rgba.view(np.uint32))) > 10  # lines and text, not a blank canvas


@pytest.mark.parametrize("x", sorted(plots.X_AXES))
@pytest.mark.parametrize("y", sorted(plots.Y_AXES))
def test_every_axis_choice_writes_a_png(runs, tmp_path, x, y, caplog):
    with caplog.at_level(logging.WARNING, logger="hessfree.runs.plots"):
        out = plot_runs(runs, x=x, y=y, out=tmp_path / "sub" / "fig.png")
    assert out == tmp_path / "sub" / "fig.png"
    check_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["fig.png"]  # no temporary file left
    skipped = y in ("lambda", "cg_iters")  # NAG rows have neither
    assert ("nag-1" in caplog.text) == skipped


def test_series_values(runs):
    hf, nag = (read_results(p) for p in runs)
    x, y = plots._series(hf, "seconds", "loss")
    assert len(x) == 11  # the NaN loss of step 3 is dropped
    np.testing.assert_allclose(x[:4], [0.2, 0.4, 0.6, 1.0])
    np.testing.assert_allclose(y[3], 1.0 / 5)
    x, y = plots._series(hf, "grad-equiv", "cg_iters")
    np.testing.assert_allclose(x[:2], [0.150, 0.150 + (100 + 80 + 10) / 1000])
    np.testing.assert_array_equal(y[:2], [5, 8])
    x, y = plots._series(nag, "steps", "loss")
    np.testing.assert_array_equal(x, np.arange(40))
    np.testing.assert_allclose(y, 3.0 / (np.arange(40) + 2))
    x, y = plots._series(nag, "grad-equiv", "test_error")
    np.testing.assert_allclose(x, 2.5 * np.arange(6))
    assert plots._series(nag, "steps", "lambda") is None


def test_log_scale_only_for_positive_values(runs):
    hf = read_results(runs[0])
    fig = plots._figure([("hf", *plots._series(hf, "steps", "loss"))], "steps", "loss", None)
    assert fig.axes[0].get_yscale() == "log"
    fig = plots._figure([("a", np.arange(3.0), np.array([0.0, 1.0, 2.0]))], "steps", "cg_iters",
                        "t")
    assert fig.axes[0].get_yscale() == "linear" and fig.axes[0].get_title() == "t"


def test_labels_default_unique_and_given(runs, tmp_path):
    rs = [read_results(p) for p in [*runs, runs[0]]]
    assert plots._labels(rs[:2], None) == ["hf", "nag"]
    assert plots._labels(rs, None) == ["hf (hf-1) #1", "nag", "hf (hf-1) #3"]
    assert plots._labels(rs[:2], ["HF", "NAG μ=0.99"]) == ["HF", "NAG μ=0.99"]
    with pytest.raises(ValueError, match="labels: expected 2"):
        plot_runs(runs, labels=["one"], out=tmp_path / "f.png")


def test_errors(runs, tmp_path):
    with pytest.raises(ValueError, match="x: expected one of"):
        plot_runs(runs, x="epochs", out=tmp_path / "f.png")
    with pytest.raises(ValueError, match="y: expected one of"):
        plot_runs(runs, y="accuracy", out=tmp_path / "f.png")
    with pytest.raises(ValueError, match="paths"):
        plot_runs([], out=tmp_path / "f.png")
    with pytest.raises(ValueError, match="no run has the fields to plot y='lambda'"):
        plot_runs(runs[1:], y="lambda", out=tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()


def test_overwrites_existing_png(runs, tmp_path):
    out = tmp_path / "f.png"
    out.write_bytes(b"old")
    plot_runs(runs, y="loss", x="steps", out=out, title="custom")
    check_png(out)


def test_the_quadratic_figure_names_every_curve_and_keeps_its_labels_inside(tmp_path,
                                                                            monkeypatch):
    """NAG identical to CM (NAG hidden under CM before): each curve is labelled with its name
    and final value at its end, NAG is drawn on top in its own style, and the axis labels lie
    inside the image."""
    from hessfree import quadratic
    from hessfree.quadratic import eigen
    from hessfree.quadratic.comparison import Comparison

    k = np.arange(0, 51, dtype=np.float64)
    same = -1.0 + 0.9 ** k
    c = Comparison(values={"cg": -1.0 + 0.5 ** k, "nag": same.copy(), "cm": same.copy(),
                           "gd": -1.0 + 0.97 ** k}, products={}, iters=50, dim=10, q_star=-1.0)
    kept = {}
    real = eigen.save_figure
    monkeypatch.setattr(eigen, "save_figure", lambda fig, *a, **kw: (kept.setdefault(
        "fig", fig), real(fig, *a, **kw))[1])
    quadratic.plot(c, tmp_path / "q.png")
    fig = kept["fig"]
    (ax,) = fig.axes
    texts = {t.get_text().split()[0]: t for t in ax.texts}
    assert sorted(texts) == ["cg", "cm", "gd", "nag"]
    assert texts["nag"].get_text() == f"nag {0.9 ** 50:.3g}"  # the gap q - q* at the end
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert lines["nag"].get_zorder() > lines["cm"].get_zorder()
    assert lines["nag"].get_linestyle() != lines["cm"].get_linestyle()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    for i, one in enumerate(boxes):  # NAG's and CM's labels apart, though their ends coincide
        assert not any(one.overlaps(other) for other in boxes[i + 1:])
    box = fig.bbox
    for label in (ax.xaxis.label, ax.yaxis.label):
        inside = label.get_window_extent(renderer)
        assert box.x0 <= inside.x0 and inside.x1 <= box.x1
        assert box.y0 <= inside.y0 and inside.y1 <= box.y1
