"""Tests of the CG stopping rules on constructed sequences of φ values."""

import pytest

from hessfree import cg
from hessfree.cg import CGState


def first_stop(rule, phi):
    """The first i at which ``rule`` fires on φ_0..φ_i, or None."""
    for i in range(len(phi)):
        reason = rule(CGState(i, phi[: i + 1]))
        if reason is not None:
            return i, reason
    return None


def test_martens_defaults_are_the_papers():
    rule = cg.MartensProgress()
    assert (rule.eps, rule.min_gap, rule.gap_ratio) == (5e-4, 10, 0.1)
    assert cg.solve.__defaults__[2] is None  # stop=None means MartensProgress()


def test_martens_fires_when_phi_stops_moving():
    # φ_i = -i for i <= 20, then -20. k = 10 for i <= 100, threshold k·eps = 0.005.
    # i in 11..20: ratio (φ_i - φ_{i-10}) / φ_i = 10/i >= 0.5;
    # i in 21..29: ratio = (-20 + (i - 10)) / -20 = (30 - i)/20 >= 0.05;
    # i = 30: φ_20 = φ_30 = -20, ratio 0 < 0.005  -> stops at 30.
    phi = [-float(min(i, 20)) for i in range(100)]
    assert first_stop(cg.MartensProgress(), phi) == (30, cg.MARTENS_PROGRESS)


def test_martens_fires_exactly_where_the_ratio_crosses_k_eps():
    # φ_i = -(1 - 2^-i). For 10 < i <= 100 (k = 10) the ratio is
    # (2^-(i-10) - 2^-i) / (1 - 2^-i) = 2^-(i-10)·(1 - 2^-10)/(1 - 2^-i):
    # i = 17: 2^-7·0.99902/0.99999 = 0.0078 >= 0.005;  i = 18: 2^-8·0.99902/1.0 = 0.0039 < 0.005.
    phi = [-(1 - 2.0**-i) for i in range(60)]
    assert first_stop(cg.MartensProgress(), phi) == (18, cg.MARTENS_PROGRESS)


def test_martens_gap_grows_with_i_beyond_100():
    # φ_i = -i for i <= 140, then -140. For i <= 140 the ratio is k/i >= k·eps (needs i > 2000).
    # i in 141..154: k = ceil(i/10) in {15, 16}, i - k <= 138, ratio >= 2/140 = 0.0143 >= k·eps
    #   (<= 16·5e-4 = 0.008);
    # i = 155: k = ceil(15.5) = 16, φ_139 = -139, ratio = 1/140 = 0.00714 < 16·5e-4 = 0.008.
    phi = [-float(min(i, 140)) for i in range(250)]
    assert [cg.martens_gap(i) for i in (99, 100, 101, 150, 155)] == [10, 10, 11, 15, 16]
    assert first_stop(cg.MartensProgress(), phi) == (155, cg.MARTENS_PROGRESS)


@pytest.mark.parametrize("value", [1.0, 0.0, 1e-30])
def test_martens_does_not_fire_while_phi_is_not_negative(value):
    # A constant sequence has ratio 0 (or 0/0): only the sign test keeps the rule quiet.
    assert first_stop(cg.MartensProgress(), [value] * 400) is None


def test_martens_sign_test_is_on_phi_i_minus_k_as_in_conjgrad_1():
    # With k·eps >= 1 the sign tests of Martens (φ_{i-k} < 0) and Sutskever (φ_i < 0) differ.
    # eps = 0.5, k = 10: φ_i = +1 for i <= 20, then -0.5.
    # i = 21: φ_21 < 0 and ratio (-0.5 - 1)/-0.5 = 3 < 5, but φ_11 = +1 -> Martens waits;
    # i = 31: φ_21 = -0.5 < 0 and ratio 0 < 5 -> stops at 31.
    phi = [1.0 if i <= 20 else -0.5 for i in range(60)]
    assert first_stop(cg.MartensProgress(eps=0.5), phi) == (31, cg.MARTENS_PROGRESS)


def test_martens_respects_its_constants():
    phi = [-float(min(i, 20)) for i in range(100)]
    # min_gap = 5: i = 25 is the first with φ_{i-5} = -20 = φ_i (ratio 0).
    assert first_stop(cg.MartensProgress(min_gap=5), phi) == (25, cg.MARTENS_PROGRESS)
    # eps = 5e-3 (k·eps = 0.05): i = 29 has ratio (30 - 29)/20 = 0.05, not < 0.05; i = 30 fires.
    assert first_stop(cg.MartensProgress(eps=5e-3), phi) == (30, cg.MARTENS_PROGRESS)
    # eps = 6e-3 (k·eps = 0.06): i = 29 fires (0.05 < 0.06), i = 28 does not (0.1).
    assert first_stop(cg.MartensProgress(eps=6e-3), phi) == (29, cg.MARTENS_PROGRESS)


def test_residual_tolerance_is_max_of_relative_and_absolute():
    rule = cg.ResidualTolerance(rtol=1e-3, atol=1e-2)
    assert rule(CGState(5, [], residual_norm=1e-2, b_norm=1.0)) == cg.RESIDUAL_TOLERANCE
    assert rule(CGState(5, [], residual_norm=1.1e-2, b_norm=1.0)) is None
    assert rule(CGState(5, [], residual_norm=0.1, b_norm=100.0)) == cg.RESIDUAL_TOLERANCE
    assert rule(CGState(5, [], residual_norm=0.11, b_norm=100.0)) is None


def test_state_norms_are_computed_lazily_and_once():
    calls = []

    def norm():
        calls.append(1)
        return 1.0

    state = CGState(3, [0.0], residual_norm=norm, b_norm=2.0)
    assert calls == []
    assert cg.ResidualTolerance(0.5)(state) == cg.RESIDUAL_TOLERANCE
    assert state.residual_norm == 1.0 and calls == [1]
    with pytest.raises(ValueError, match="CGState.residual_norm"):
        _ = CGState(0, [0.0]).residual_norm


def test_max_iters_and_any_of():
    assert first_stop(cg.MaxIters(7), [0.0] * 20) == (7, cg.MAX_ITERATIONS)
    assert first_stop(cg.MaxIters(0), [0.0]) == (0, cg.MAX_ITERATIONS)
    phi = [-float(min(i, 20)) for i in range(100)]
    both = cg.AnyOf(cg.MartensProgress(), cg.MaxIters(30))
    assert first_stop(both, phi) == (30, cg.MARTENS_PROGRESS)  # first rule in order wins
    assert first_stop(cg.AnyOf(cg.MaxIters(30), cg.MartensProgress()), phi) == (
        30, cg.MAX_ITERATIONS,
    )
    assert first_stop(cg.AnyOf(), phi) is None


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: cg.MartensProgress(eps=0), r"^MartensProgress.eps"),
        (lambda: cg.MartensProgress(min_gap=0), r"^MartensProgress.min_gap"),
        (lambda: cg.MartensProgress(min_gap=2.5), r"^MartensProgress.min_gap"),
        (lambda: cg.MartensProgress(gap_ratio=-0.1), r"^MartensProgress.gap_ratio"),
        (lambda: cg.ResidualTolerance(-1e-6), r"^ResidualTolerance.rtol"),
        (lambda: cg.ResidualTolerance(1e-6, atol=-1.0), r"^ResidualTolerance.atol"),
        (lambda: cg.MaxIters(-1), r"^MaxIters.n"),
        (lambda: cg.MaxIters(True), r"^MaxIters.n"),
    ],
)
def test_bad_rule_constants_raise_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()
