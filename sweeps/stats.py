"""The statistics of a sweep report: marginal means with confidence intervals, correlations, TOST.

Pure functions over plain numbers (no MLflow, no plotting), so each one is checked against an
independent computation in the tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ranksweep.core.errors import RanksweepError


class StatsError(RanksweepError, ValueError):
    """The data cannot support the test asked for; the message names what is missing."""


class Record:
    """A frozen result dataclass that the report stores as a plain dict."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Interval(Record):
    """Mean of ``n`` values with a two-sided ``level`` t confidence interval (NaN bounds when n < 2)."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval: ``mean ± t_{(1+level)/2, n-1} · s / √n``.

    ``s`` is the sample standard deviation (n − 1). With one value the interval is undefined
    (NaN); with none, everything is NaN.
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Correlation(Record):
    """Pearson's r and Spearman's ρ of ``n`` pairs, with two-sided p-values."""

    n: int
    pearson: float
    pearson_p: float
    spearman: float
    spearman_p: float


def correlation(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Pearson's r and Spearman's ρ (scipy, two-sided p-values) over the pairs where both are finite.

    Fewer than three pairs, or a constant variable, gives NaN.
    """
    from scipy import stats

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = len(a)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return Correlation(n, math.nan, math.nan, math.nan, math.nan)
    pr = stats.pearsonr(a, b)
    sr = stats.spearmanr(a, b)
    return Correlation(n, float(pr.statistic), float(pr.pvalue), float(sr.statistic), float(sr.pvalue))


@dataclass(frozen=True)
class Tost(Record):
    """Two one-sided tests of |mean(a) − mean(b)| < margin; ``p`` is the larger one-sided p-value."""

    a: str
    b: str
    n_a: int
    n_b: int
    diff: float
    margin: float
    p_lower: float
    p_upper: float
    p: float
    df: float
    ci_low: float
    ci_high: float
    equivalent: bool


def tost(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05, names: tuple[str, str] = ("a", "b")) -> Tost:
    """Welch two one-sided tests (TOST) for the equivalence of two means within an absolute margin.

    Hypotheses, with δ = μ_a − μ_b and the margin ε fixed in advance:

    .. math:: H_0: \\delta \\le -\\varepsilon \\ \\text{or}\\ \\delta \\ge \\varepsilon
              \\quad\\text{vs}\\quad H_1: -\\varepsilon < \\delta < \\varepsilon

    Each side is a one-sided Welch t-test, ``t_1 = (d + ε)/se`` (upper tail) and
    ``t_2 = (d − ε)/se`` (lower tail), with ``se² = s_a²/n_a + s_b²/n_b`` and Welch–Satterthwaite
    degrees of freedom; ``ci_low``/``ci_high`` bound the (1 − 2·alpha) Welch interval of δ. The
    pair is declared equivalent when ``p = max(p_1, p_2) < alpha``, which is the same as that
    interval lying inside (−ε, ε) (Schuirmann 1987).
    Computed by ``statsmodels.stats.weightstats.ttost_ind(usevar="unequal")``.

    Assumptions: the values of each cell (one per seed) are independent draws from a normal
    distribution; variances may differ. ``margin`` is absolute (nDCG points) and must not be
    derived from the data being tested — a margin computed from the observed means or spreads
    changes with the sample and voids the test's error rate. With two identical, zero-variance
    cells the t statistics are undefined; then the decision is exact (p = 0 when |d| < ε, else 1).

    Raises:
        StatsError: when a cell has fewer than 2 values (no variance estimate, no test).

    References:
        Schuirmann, "A comparison of the two one-sided tests procedure and the power approach for
        assessing the equivalence of average bioavailability", J. Pharmacokinet. Biopharm. 15 (1987).
    """
    if margin <= 0 or not math.isfinite(margin):
        raise StatsError(f"equivalence margin must be a positive number, got {margin}")
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, v in zip(names, (x, y)):
        if len(v) < 2:
            raise StatsError(f"TOST needs at least 2 seeds per cell; {name!r} has {len(v)}")
    d = float(x.mean() - y.mean())
    se2 = x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)
    if se2 == 0:
        p = 0.0 if abs(d) < margin else 1.0
        return Tost(names[0], names[1], len(x), len(y), d, margin, p, p, p, math.inf, d, d, p < alpha)
    from scipy import stats
    from statsmodels.stats.weightstats import ttost_ind

    p, (_, p1, df), (_, p2, _) = ttost_ind(x, y, -margin, margin, usevar="unequal")
    half = float(stats.t.ppf(1 - alpha, df)) * math.sqrt(se2)
    return Tost(names[0], names[1], len(x), len(y), d, margin, float(p1), float(p2), float(p), float(df), d - half, d + half,
                bool(p < alpha))


@dataclass
class Equivalence:
    """Every pair of cells tested, and the cells equivalent to the best one."""

    metric: str
    margin: float
    alpha: float
    best: str
    best_mean: float
    pairs: list[Tost]
    to_best: list[Tost]
    holm: dict[str, float]

    @property
    def equivalent_to_best(self) -> list[str]:
        return [t.b for t in self.to_best if t.equivalent]

    def as_dict(self) -> dict:
        return {"metric": self.metric, "margin": self.margin, "alpha": self.alpha, "best": self.best,
                "best_mean": self.best_mean, "equivalent_to_best": self.equivalent_to_best,
                "to_best": [t.as_dict() | {"p_holm": self.holm.get(t.b)} for t in self.to_best],
                "pairs": [t.as_dict() for t in self.pairs]}


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (``statsmodels.stats.multitest.multipletests``, method ``holm``)."""
    from statsmodels.stats.multitest import multipletests

    if not pvalues:
        return {}
    keys = list(pvalues)
    adjusted = multipletests([pvalues[k] for k in keys], method="holm")[1]
    return {k: float(p) for k, p in zip(keys, adjusted)}


def equivalence(cells: Mapping[str, Sequence[float]], metric: str, margin: float = 0.01, alpha: float = 0.05,
                mode: str = "max") -> Equivalence:
    """TOST between every pair of cells, and which cells are equivalent to the best.

    ``cells`` maps a cell's name to its per-seed values. The best cell has the highest mean
    (lowest with ``mode="min"``). Each comparison with the best is its own equivalence claim at
    level ``alpha``; Holm-adjusted p-values for the family of comparisons with the best are
    given too, for readers who want the whole set's error controlled.

    Raises:
        StatsError: naming every cell with fewer than 2 seeds, or when fewer than 2 cells are given.
    """
    short = {k: len(v) for k, v in cells.items() if len(v) < 2}
    if short:
        listed = ", ".join(f"{k} ({n} seed{'s' if n != 1 else ''})" for k, n in sorted(short.items()))
        raise StatsError(f"equivalence tests need at least 2 seeds per cell; too few: {listed}. "
                         "Run the sweep with seeds: 2 or more (or leave these cells out)")
    if len(cells) < 2:
        raise StatsError(f"equivalence tests need at least 2 cells, got {len(cells)}")
    means = {k: float(np.mean(v)) for k, v in cells.items()}
    best = (max if mode == "max" else min)(means, key=means.get)
    pairs = [tost(cells[a], cells[b], margin, alpha, (a, b)) for a, b in itertools.combinations(sorted(cells), 2)]
    to_best = [tost(cells[best], cells[k], margin, alpha, (best, k)) for k in sorted(cells, key=means.get, reverse=mode == "max")
               if k != best]
    return Equivalence(metric, margin, alpha, best, means[best], pairs, to_best, holm({t.b: t.p for t in to_best}))


def marginal(values_by_level: Mapping[object, Sequence[float]], level: float = 0.95) -> dict[object, Interval]:
    """``mean_ci`` of each level of an axis (its runs pooled over the other axes and seeds)."""
    return {k: mean_ci(v, level) for k, v in values_by_level.items()}


def finite(values: Sequence[Optional[float]]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


# -- power: what a sweep of this many seeds could have seen ---------------------------------------------

@dataclass(frozen=True)
class Noise(Record):
    """Seed noise of a metric: the pooled within-cell standard deviation over cells with 2+ seeds."""

    sd: float
    df: int  # degrees of freedom of the pooled estimate (values minus cells)
    cells: int  # cells that contributed


def seed_noise(cells: Mapping[str, Sequence[float]]) -> Noise:
    """``sqrt(Σ_c Σ_i (x_ci − x̄_c)² / Σ_c (n_c − 1))`` over the cells with at least 2 finite values (NaN without any)."""
    groups = [np.asarray(finite(v), dtype=np.float64) for v in cells.values()]
    groups = [g for g in groups if len(g) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if df == 0:
        return Noise(math.nan, 0, 0)
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    return Noise(math.sqrt(ss / df), df, len(groups))


def detectable_difference(sd: float, n_a: int, n_b: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference of two means (in the metric's units) that a two-sided two-sample
    t-test at ``alpha`` detects with probability ``power``, given ``n_a`` and ``n_b`` values of
    standard deviation ``sd`` (statsmodels' ``TTestIndPower``; Cohen 1988: d = Δ/σ). NaN when it
    cannot be computed (no noise estimate, fewer than 2 values on a side)."""
    if not math.isfinite(sd) or n_a < 2 or n_b < 2:
        return math.nan
    if sd == 0:
        return 0.0
    from statsmodels.stats.power import TTestIndPower

    d = TTestIndPower().solve_power(effect_size=None, nobs1=n_a, alpha=alpha, power=power, ratio=n_b / n_a, alternative="two-sided")
    return float(np.asarray(d).item()) * sd


def tost_power(margin: float, sd: float, n_a: int, n_b: int, alpha: float = 0.05, diff: float = 0.0) -> float:
    """Probability that TOST (pooled variance, ``n_a + n_b − 2`` degrees of freedom) declares two cells
    equivalent within ±``margin`` when their true means differ by ``diff`` (default: equal means).

    Exact: with ``σ_d = σ·√(1/n_a + 1/n_b)``, the estimated difference is ``N(diff, σ_d²)`` and its
    standard error ``σ_d·√(U/df)`` with ``U ~ χ²_df`` independent of it; TOST accepts when
    ``|d̂| < ε − t_{1−α,df}·se``, so the power is ``E_U[Φ((ε − t·se − diff)/σ_d) − Φ((−ε + t·se − diff)/σ_d)]⁺``,
    integrated over ``U`` (Schuirmann 1987; Phillips 1990, J. Pharmacokinet. Biopharm. 18)."""
    if not math.isfinite(sd) or n_a < 2 or n_b < 2:
        return math.nan
    if sd == 0:
        return 1.0 if abs(diff) < margin else 0.0
    from scipy import integrate, stats

    df = n_a + n_b - 2
    sd_d = sd * math.sqrt(1 / n_a + 1 / n_b)
    t = float(stats.t.ppf(1 - alpha, df))
    u_max = min(df * (margin / (t * sd_d)) ** 2, float(stats.chi2.ppf(1 - 1e-12, df)))  # beyond: an empty interval, or no mass

    def accept(u: float) -> float:
        half = margin - t * sd_d * math.sqrt(u / df)
        return (stats.norm.cdf((half - diff) / sd_d) - stats.norm.cdf((-half - diff) / sd_d)) * stats.chi2.pdf(u, df)

    return float(min(1.0, max(0.0, integrate.quad(accept, 0, u_max, limit=200)[0])))


def equivalence_margin(sd: float, n_a: int, n_b: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest margin within which TOST shows two cells of equal true means equivalent with
    probability ``power`` (``tost_power`` solved for the margin)."""
    if not math.isfinite(sd) or n_a < 2 or n_b < 2:
        return math.nan
    if sd == 0:
        return 0.0
    from scipy import optimize

    sd_d = sd * math.sqrt(1 / n_a + 1 / n_b)
    return float(optimize.brentq(lambda m: tost_power(m, sd, n_a, n_b, alpha) - power, 1e-9, 200 * sd_d, xtol=1e-10 * sd_d))
