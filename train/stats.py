"""Small, pure statistics for comparing training arms over seeds (no state, no I/O).

Intervals are Student t over seeds: for n per-seed values x_i with mean m and sample standard
deviation s (n − 1 in the denominator), the 95% interval is m ± t_{0.975, n−1} · s / √n
(e.g. Wasserman, *All of Statistics*, §10.1; the t quantile makes it exact for normal x_i, which
matters at n = 3 where the normal quantile 1.96 would give 2.2× too narrow an interval).
A paired comparison (arm B − arm A, same seed) is the same interval on the per-seed differences,
which cancels what the seed shares (problems, sampling, shuffling).

The t quantile comes from mpmath (the regularised incomplete beta function, inverted by a
bracketed root search), so no SciPy is needed.
"""

from __future__ import annotations

import math
from typing import Sequence


def mean(xs: Sequence[float]) -> float:
    """Arithmetic mean. Raises ValueError on an empty sequence."""
    if not xs:
        raise ValueError("mean of no values")
    return math.fsum(xs) / len(xs)


def sample_std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n − 1 in the denominator). Raises ValueError for n < 2."""
    if len(xs) < 2:
        raise ValueError(f"a standard deviation needs >= 2 values, got {len(xs)}")
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom:
    1 − ½·I_{df/(df+t²)}(df/2, ½) for t >= 0, by symmetry below 0."""
    import mpmath

    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    tail = 0.5 * float(mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (0 < p < 1)."""
    import mpmath

    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    hi = 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    return float(mpmath.findroot(lambda x: t_cdf(float(x), df) - p, (0.0, hi), solver="anderson"))


def mean_ci(xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student t interval over the values (see the module docstring). With one
    value the interval is (nan, nan): one seed says nothing about seed-to-seed spread."""
    m = mean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    half = t_quantile(0.5 + level / 2, len(xs) - 1) * sample_std(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def paired_diff_ci(b: Sequence[float], a: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean of b_i − a_i, lo, hi) with b and a paired by position (seed). Raises ValueError when
    the lengths differ."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(b)} and {len(a)}")
    return mean_ci([y - x for x, y in zip(a, b)], level)
