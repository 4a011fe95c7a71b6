"""Means over seeds, Student-t confidence intervals, and the verdict rule of `mnistlab ablate`.

A claim compares a variant with a baseline on one figure (test accuracy, epochs to a
target, ...), each trained with the same seeds. Seed s of both shares the initial
weights' stream, the shuffling and the dropout masks, so the comparison is paired:

    d_s = variant_s - baseline_s                     for every seed where both are finite
    mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n)       the 95% interval of the difference

`verdict` reads the interval against the claimed direction (see its docstring); it is
the only place a verdict comes from, so a report can never state one by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
Better = Literal["higher", "lower"]
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """A mean over n values and its two-sided confidence interval (NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "sd": self.sd}


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student-t quantile: t such that P(|T_df| <= t) = level."""
    return float(scipy_stats.t.ppf(0.5 + level / 2, df))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t interval of the finite values (NaN and inf are left out).

    One value gives a mean but no interval (low = high = NaN); none gives NaN throughout.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan)
    sd = float(x.std(ddof=1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def paired_difference(variant: Sequence[float], baseline: Sequence[float], level: float = LEVEL) -> Interval:
    """Interval of the mean of variant[s] - baseline[s] over the seeds where both are finite."""
    if len(variant) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(variant)} and {len(baseline)}")
    diffs = [v - b for v, b in zip(variant, baseline)
             if v is not None and b is not None and math.isfinite(v) and math.isfinite(b)]
    return mean_ci(diffs, level)


def verdict(difference: Interval, better: Better = "higher", tolerance: float = 0.0) -> str:
    """The verdict on a claim, from the interval of (variant - baseline).

    The claim is "the variant is better than the baseline", better meaning `higher` or
    `lower` values; with `tolerance` > 0 it is "the variant is not worse than the
    baseline by more than `tolerance`" (a claim of being as good, e.g. "0 is a good
    default"). With signed = d for `higher` and -d for `lower`, and [lo, hi] the interval
    of signed:

    - supported       when lo > -tolerance   (the whole interval on the claimed side)
    - not supported   when hi < -tolerance   (the whole interval on the other side)
    - inconclusive    otherwise (the interval straddles the boundary), or with fewer
                      than two paired seeds (no interval).

    A zero-width interval exactly on the boundary (all differences equal to -tolerance,
    e.g. both arms identical) is inconclusive.
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    if difference.n < 2 or not (math.isfinite(difference.low) and math.isfinite(difference.high)):
        return INCONCLUSIVE
    sign = 1.0 if better == "higher" else -1.0
    lo, hi = sorted((sign * difference.low, sign * difference.high))
    if lo > -tolerance:
        return SUPPORTED
    if hi < -tolerance:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def p_value(difference: Interval, better: Better = "higher", tolerance: float = 0.0) -> float:
    """The two-sided p-value of the paired t-test that `verdict` reads as an interval: the
    signed mean difference against the boundary -tolerance. The interval at level L leaves
    the boundary out exactly when p < 1 - L. NaN with fewer than two seeds."""
    if difference.n < 2 or not math.isfinite(difference.mean):
        return math.nan
    sign = 1.0 if better == "higher" else -1.0
    gap = sign * difference.mean + tolerance
    if difference.sd == 0:  # every seed gave the same difference
        return 1.0 if gap == 0 else 0.0
    t = gap / (difference.sd / math.sqrt(difference.n))
    return float(2 * scipy_stats.t.sf(abs(t), difference.n - 1))


def adjusted_p_value(difference: Interval, better: Better = "higher", tolerance: float = 0.0,
                     level: float = LEVEL) -> float:
    """`p_value` on LEVEL's scale for a statement whose interval was read at `level` (at most
    1): p x (1 - LEVEL) / (1 - level). Sequential testing reads a statement at several looks,
    each at a level above LEVEL so that their misses add up to 1 - LEVEL (Bonferroni); this
    p-value is under 1 - LEVEL exactly when that look's interval leaves the boundary out.
    Taken at the last look a statement was read, it is a valid p-value over all its looks."""
    p = p_value(difference, better, tolerance)
    return p if math.isnan(p) else min(1.0, p * (1 - LEVEL) / (1 - level))  # NaN (no test) stays NaN


def seeds_to_decide(difference: Interval, better: Better = "higher", tolerance: float = 0.0,
                    level: float = LEVEL, most: int = 10_000) -> int | None:
    """How many paired seeds an undecided statement would need, were its mean difference and
    spread what this run measured: the smallest n with t(level, n-1) x sd / sqrt(n) below the
    mean's distance from the boundary -tolerance (the interval then clears the boundary).

    None when no n up to `most` would do: a mean on the boundary, or so near it that only
    an impractical number of seeds could tell its sign (a true difference near zero).
    """
    if difference.n < 2 or not math.isfinite(difference.mean) or not math.isfinite(difference.sd):
        return None
    sign = 1.0 if better == "higher" else -1.0
    gap = abs(sign * difference.mean + tolerance)
    if difference.sd == 0:
        return difference.n if gap > 0 else None
    n = np.arange(2, most + 1)
    enough = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * difference.sd / np.sqrt(n) < gap
    return int(n[np.argmax(enough)]) if enough.any() else None


def corrected_verdicts(tests: Sequence[tuple[Interval, Better, float]], rate: float = 1 - LEVEL,
                       levels: Sequence[float] | None = None) -> list[str]:
    """`verdict` for many statements at once, the false discovery rate held at `rate`.

    Each statement's p-value (`p_value`, or `adjusted_p_value` at its level in `levels`
    when sequential testing read it at a level above LEVEL) is adjusted over all of them by
    Benjamini and Hochberg's procedure (scipy's `false_discovery_control`); a statement whose
    adjusted p-value is under `rate` is decided in the direction of its mean, the others are
    inconclusive. Of the decided verdicts, at most `rate` are then expected wrong, where
    `rate` of each raw verdict's interval could be.
    """
    levels = [LEVEL] * len(tests) if levels is None else levels
    p = np.array([adjusted_p_value(*test, level=level) for test, level in zip(tests, levels, strict=True)])
    adjusted = np.full(len(p), np.nan)
    finite = np.isfinite(p)
    if finite.any():
        adjusted[finite] = scipy_stats.false_discovery_control(p[finite])  # method "bh": Benjamini-Hochberg
    out = []
    for (difference, better, tolerance), q in zip(tests, adjusted):
        sign = 1.0 if better == "higher" else -1.0
        if not q < rate:  # NaN too
            out.append(INCONCLUSIVE)
        else:
            out.append(SUPPORTED if sign * difference.mean > -tolerance else NOT_SUPPORTED)
    return out


def fmt_interval(i: Interval, digits: int = 4, scale: float = 1.0, unit: str = "") -> str:
    """'0.9712 [0.9690, 0.9733]' (n < 2: the mean alone; none: 'n/a')."""
    if i.n == 0 or not math.isfinite(i.mean):
        return "n/a"
    f = lambda v: f"{v * scale:.{digits}f}{unit}"  # noqa: E731
    if i.n < 2:
        return f"{f(i.mean)} (1 seed)"
    return f"{f(i.mean)} [{f(i.low)}, {f(i.high)}]"
