"""The report's statistics against independent computations on fixed data (no MLflow, no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ranksweep.sweeps.stats import StatsError, correlation, equivalence, holm, mean_ci, tost

A = [0.412, 0.405, 0.419, 0.409]
B = [0.401, 0.396, 0.407]


def test_mean_ci_is_the_student_t_interval():
    from statsmodels.stats.weightstats import DescrStatsW

    ci = mean_ci(A, 0.95)
    lo, hi = DescrStatsW(np.array(A)).tconfint_mean(alpha=0.05)
    assert ci.n == 4 and ci.mean == pytest.approx(np.mean(A))
    assert ci.std == pytest.approx(np.std(A, ddof=1))
    assert (ci.low, ci.high) == pytest.approx((lo, hi))
    one = mean_ci([0.3])
    assert one.mean == 0.3 and math.isnan(one.low) and math.isnan(one.high)
    assert mean_ci([]).n == 0


def test_correlation_matches_numpy_on_values_and_ranks():
    x = [0.1, 0.5, 0.3, 0.9, 0.7, float("nan")]
    y = [1.0, 2.5, 2.0, 3.5, 2.4, 9.0]
    c = correlation(x, y)
    xs, ys = np.array(x[:5]), np.array(y[:5])  # the NaN pair is dropped
    assert c.n == 5
    assert c.pearson == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731 (no ties here)
    assert c.spearman == pytest.approx(np.corrcoef(rank(xs), rank(ys))[0, 1])
    assert math.isnan(correlation([1, 2], [3, 4]).pearson)  # fewer than 3 pairs
    assert math.isnan(correlation([1, 1, 1], [3, 4, 5]).spearman)  # constant variable


def _welch_tost_by_hand(a, b, margin, alpha):
    a, b = np.array(a), np.array(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    d = a.mean() - b.mean()
    p_low = sps.t.sf((d + margin) / se, df)  # H0: d <= -margin
    p_up = sps.t.cdf((d - margin) / se, df)  # H0: d >= +margin
    half = sps.t.ppf(1 - alpha, df) * se
    return d, df, p_low, p_up, max(p_low, p_up), (d - half, d + half)


@pytest.mark.parametrize("margin", [0.005, 0.01, 0.02])
def test_tost_matches_a_hand_computed_welch_tost(margin):
    t = tost(A, B, margin, 0.05, ("a", "b"))
    d, df, p_low, p_up, p, ci = _welch_tost_by_hand(A, B, margin, 0.05)
    assert t.diff == pytest.approx(d) and t.df == pytest.approx(df)
    assert (t.p_lower, t.p_upper, t.p) == pytest.approx((p_low, p_up, p))
    assert (t.ci_low, t.ci_high) == pytest.approx(ci)
    assert t.equivalent == (p < 0.05) == (-margin < ci[0] and ci[1] < margin)
    assert t.margin == margin


def test_tost_decision_equals_the_interval_inside_the_margin_on_random_data():
    rng = np.random.default_rng(0)
    decisions = set()
    for _ in range(300):
        n1, n2 = rng.integers(2, 6, size=2)
        a = rng.normal(0.40, 0.006, n1)
        b = rng.normal(0.40 + rng.uniform(-0.02, 0.02), rng.uniform(0.002, 0.01), n2)
        t = tost(a, b, 0.01)
        assert t.equivalent == (-0.01 < t.ci_low and t.ci_high < 0.01)
        decisions.add(t.equivalent)
    assert decisions == {True, False}


def test_tost_margin_is_absolute_not_taken_from_the_data():
    # the same mean difference with 10x the spread: the margin stays 0.01 and equivalence is lost
    tight = tost([0.400, 0.401, 0.402, 0.401], [0.399, 0.400, 0.401, 0.400], 0.01)
    wide = tost([0.390, 0.400, 0.410, 0.405], [0.389, 0.399, 0.409, 0.404], 0.01)
    assert tight.margin == wide.margin == 0.01
    assert tight.equivalent and not wide.equivalent
    # shifting both cells changes nothing
    shifted = tost(np.array(A) + 0.2, np.array(B) + 0.2, 0.01)
    assert shifted.p == pytest.approx(tost(A, B, 0.01).p)


def test_tost_refuses_one_seed_and_bad_margins():
    with pytest.raises(StatsError, match="at least 2 seeds.*'b' has 1"):
        tost(A, [0.4], 0.01, names=("a", "b"))
    with pytest.raises(StatsError, match="positive"):
        tost(A, B, 0.0)
    exact = tost([0.4, 0.4], [0.4, 0.4], 0.01)  # no variance: the decision is exact
    assert exact.equivalent and exact.p == 0.0


def test_holm_step_down_by_hand():
    # sorted p: a .01 x 4 = .04; c .03 x 3 = .09; b .04 x 2 = .08, raised to .09 (monotone); d .2 x 1
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2}) == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.2})
    assert holm({"a": 0.5, "b": 0.6}) == pytest.approx({"a": 1.0, "b": 1.0}) and holm({}) == {}


def test_equivalence_to_the_best_cell_and_refusals():
    cells = {"x": A, "y": B, "z": [0.3, 0.31, 0.305]}
    eq = equivalence(cells, "m", margin=0.02)
    assert eq.best == "x" and eq.best_mean == pytest.approx(np.mean(A))
    assert [t.b for t in eq.to_best] == ["y", "z"]  # by mean, best first
    assert eq.equivalent_to_best == ["y"]
    assert len(eq.pairs) == 3
    assert eq.to_best[0].p == pytest.approx(_welch_tost_by_hand(A, B, 0.02, 0.05)[4])
    assert equivalence(cells, "m", 0.02, mode="min").best == "z"
    with pytest.raises(StatsError, match=r"too few: solo \(1 seed\)"):
        equivalence({**cells, "solo": [0.5]}, "m")
    with pytest.raises(StatsError, match="at least 2 cells"):
        equivalence({"x": A}, "m")


def test_seed_noise_is_the_pooled_within_cell_sd_by_hand():
    from ranksweep.sweeps.stats import seed_noise

    n = seed_noise({"a": A, "b": B, "single": [0.5]})  # a one-seed cell has no within-cell spread to give
    ss = sum((x - np.mean(A)) ** 2 for x in A) + sum((x - np.mean(B)) ** 2 for x in B)
    assert n.df == 5 and n.cells == 2 and n.sd == pytest.approx(math.sqrt(ss / 5))
    assert math.isnan(seed_noise({"a": [0.1], "b": [0.2]}).sd)


def test_detectable_difference_is_found_with_the_stated_power_by_simulation():
    """At the returned difference, a two-sided t-test at alpha 0.05 rejects in 80% of simulated sweeps."""
    from ranksweep.sweeps.stats import detectable_difference

    sd, n = 0.012, 3
    delta = detectable_difference(sd, n, n)
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, sd, (40000, n))
    b = rng.normal(delta, sd, (40000, n))
    rejected = sps.ttest_ind(a, b, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    assert detectable_difference(sd, 12, 12) < delta / 2  # more seeds, smaller detectable effects
    assert math.isnan(detectable_difference(sd, 1, 3)) and math.isnan(detectable_difference(math.nan, 3, 3))


def test_tost_power_and_the_smallest_margin_match_simulated_tost():
    """With equal true means, TOST (pooled variance) declares equivalence within the margin as often as
    ``tost_power`` says; at ``equivalence_margin`` that is the stated 80%."""
    from statsmodels.stats.weightstats import ttost_ind

    from ranksweep.sweeps.stats import equivalence_margin, tost_power

    sd, n = 0.01, 4
    rng = np.random.default_rng(1)
    for margin in (equivalence_margin(sd, n, n), 0.02):
        hits = 0
        for _ in range(3000):
            a, b = rng.normal(0.5, sd, n), rng.normal(0.5, sd, n)
            hits += ttost_ind(a, b, -margin, margin, usevar="pooled")[0] < 0.05
        assert hits / 3000 == pytest.approx(tost_power(margin, sd, n, n), abs=0.03)
    assert tost_power(equivalence_margin(sd, n, n), sd, n, n) == pytest.approx(0.8)
    assert tost_power(0.001, sd, 2, 2) < 1e-3  # two seeds cannot show a margin far inside the noise
