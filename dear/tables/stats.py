"""Small statistics for the tables: mean ± std over seeds and paired t-intervals, stdlib only.

A method's difference from the baseline is paired by seed: ``d_s = x_s − b_s`` over the seeds both
have, and its 95% interval is ``mean(d) ± t_{0.975, n−1} · sd(d) / √n`` (Student's t).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz; Numerical Recipes §6.4)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """``t`` with ``t_cdf(t, df) = p`` (bisection to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class Paired:
    """A paired difference over ``n`` seeds: mean, sd and the 95% t-interval ``[low, high]`` (NaN if n < 2)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def paired(x: dict[int, float], base: dict[int, float], level: float = 0.95) -> Paired:
    """``x − base`` paired by seed (the keys both have, values not None/NaN) with its t-interval."""
    seeds = sorted(s for s in x.keys() & base.keys() if _ok(x[s]) and _ok(base[s]))
    d = [x[s] - base[s] for s in seeds]
    if not d:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(d)
    if len(d) < 2:
        return Paired(1, mean, math.nan, math.nan, math.nan)
    sd = statistics.stdev(d)
    half = t_quantile(0.5 + level / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return Paired(len(d), mean, sd, mean - half, mean + half)


def mean_std(values: list) -> tuple[float, float, int]:
    """(mean, sample std, n) of the values that are numbers (std NaN below 2 values)."""
    v = [float(x) for x in values if _ok(x)]
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else math.nan), len(v)


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))
