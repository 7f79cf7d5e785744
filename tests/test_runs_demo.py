"""``hessfree demo`` end to end at a tiny budget: three runs, the quadratic comparison, files."""

from __future__ import annotations

from hessfree.runs.cli import main
from hessfree.runs.results import read_results


def test_demo_writes_runs_table_and_figure(capsys, tmp_path):
    code = main(["demo", "--budget", "6", "--out", str(tmp_path), "--quiet",
                 "--set", "n_train=300", "--set", "n_test=100"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (folder,) = list(tmp_path.glob("demo-*"))
    for opt in ("hf", "hf-momentum", "nag"):
        res = read_results(folder / "curves-small" / opt / "results.h5")
        assert res.attrs["status"].startswith("finished")
        assert res.eval["grad_equiv"][-1] >= 6  # equal cost: every budget spent
        assert res.eval["train_error"][-1] < res.eval["train_error"][0]
    assert read_results(folder / "curves-small" / "hf" / "results.h5").quadratics
    table = (folder / "demo.md").read_text()
    assert "| NAG (Eq. 3-5) |" in table and "| cg |" in table and "| nag |" in table
    assert (folder / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert "momentum-like HF (A.6)" in out


def test_check_products_passes(capsys):
    assert main(["check-products"]) == 0
    assert "dense float64 reference" in capsys.readouterr().out
