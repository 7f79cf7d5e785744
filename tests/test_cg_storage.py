"""Tests of the stored-iterate policies (Martens' geometric grid)."""

import pytest

from hessfree import cg
from hessfree.cg.storage import as_store_policy


def test_martens_grid_by_hand():
    # ceil(5·1.3ʲ): 5, 6.5, 8.45, 10.985, 14.28, 18.56, 24.13, 31.37, 40.79, 53.02, 68.93, 89.6,
    # 116.5, 151.5, 196.9, then 255.9 > 250.
    assert sorted(cg.Geometric().grid(250)) == [
        5, 7, 9, 11, 15, 19, 25, 32, 41, 54, 69, 90, 117, 152, 197,
    ]
    assert sorted(cg.Geometric(1.3, first=5).grid(4)) == []


def test_repeated_ceilings_are_kept_once_and_the_grid_moves_on():
    # ceil(1.1ʲ): 1, 2 (1.1 .. 1.95, eight times), 3 (2.14 .. 2.85), 4, 4, 4, 5, 5, 6, 6, 7, 7,
    # 8, 9, 9, 10, 11. Martens' `i == ceil(inext)` test would stall at the first repeat of 2.
    assert sorted(cg.Geometric(1.1, first=1).grid(10)) == list(range(1, 11))


def test_every_and_never():
    assert sorted(cg.Every().grid(5)) == [1, 2, 3, 4, 5]
    assert sorted(cg.Every(3).grid(10)) == [3, 6, 9]
    assert cg.Never().grid(100) == frozenset()


def test_store_argument_forms():
    assert as_store_policy(None) == cg.Geometric(1.3, first=5)
    assert as_store_policy(True) == cg.Geometric()
    assert as_store_policy(False) == cg.Never()
    assert as_store_policy(cg.Every(2)) == cg.Every(2)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: cg.Geometric(1.0), r"^Geometric.ratio"),
        (lambda: cg.Geometric(0.5), r"^Geometric.ratio"),
        (lambda: cg.Geometric(1.3, first=0), r"^Geometric.first"),
        (lambda: cg.Every(0), r"^Every.step"),
    ],
)
def test_bad_policy_constants_raise_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()
