import pytest

from hessfree.data.paths import candidates, data_root, first_existing


def test_data_root_argument_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HESSFREE_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg", "x") == tmp_path / "arg"
    assert data_root(None, "x") == tmp_path / "env"
    monkeypatch.setenv("HESSFREE_DATA", "")
    with pytest.raises(ValueError, match=r"caller: no data root given.*HESSFREE_DATA"):
        data_root(None, "caller")


def test_candidates_search_root_then_subfolder(tmp_path):
    paths = candidates(tmp_path, "sub", ("a.gz", "a"))
    assert paths == [tmp_path / "a.gz", tmp_path / "a", tmp_path / "sub" / "a.gz",
                     tmp_path / "sub" / "a"]
    assert first_existing(paths) is None
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_text("x")
    assert first_existing(paths) == tmp_path / "sub" / "a"

