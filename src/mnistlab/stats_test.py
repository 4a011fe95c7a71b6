"""Tests for mnistlab.stats against hand computations with tabled t quantiles."""

import math

import numpy as np
import pytest

from mnistlab import stats
from mnistlab.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Interval

# Two-sided 95% Student-t quantiles, from a printed table (t_{0.975, df}).
T95 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163}


@pytest.mark.parametrize("df", sorted(T95))
def test_t_quantile_matches_the_table(df):
    assert stats.t_quantile(df) == pytest.approx(T95[df], abs=1e-8)


def test_mean_ci_of_three_values():
    # mean 2, sd 1 (deviations -1, 0, 1: sum of squares 2 over n-1 = 2), se 1/sqrt(3)
    i = stats.mean_ci([1.0, 2.0, 3.0])
    half = T95[2] / math.sqrt(3)  # 2.4841...
    assert (i.mean, i.sd, i.n) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    assert i.low == pytest.approx(2.0 - half, abs=1e-8) and i.high == pytest.approx(2.0 + half, abs=1e-8)
    assert i.half_width == pytest.approx(half)


def test_mean_ci_of_float32_figures_is_computed_in_float64():
    # Accuracies arrive as float32 scalars; their mean and sd are figures of the float64 values.
    values = [np.float32(v) for v in (0.9712, 0.9690, 0.9733, 0.9701, 0.9688)]
    exact = [float(v) for v in values]
    mean = sum(exact) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in exact) / 4)
    i = stats.mean_ci(values)
    assert i.mean == pytest.approx(mean, rel=1e-14) and i.sd == pytest.approx(sd, rel=1e-12)
    assert i.as_dict() == {"mean": i.mean, "low": i.low, "high": i.high, "n": 5, "sd": i.sd}


def test_mean_ci_drops_non_finite_and_needs_two_values_for_an_interval():
    i = stats.mean_ci([0.5, math.nan, 0.7, math.inf])
    assert i.n == 2 and i.mean == pytest.approx(0.6)
    sd = math.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / 1)
    assert i.high == pytest.approx(0.6 + T95[1] * sd / math.sqrt(2))
    one = stats.mean_ci([0.9])
    assert one.mean == 0.9 and one.n == 1 and math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.sd)
    none = stats.mean_ci([math.nan])
    assert none.n == 0 and all(math.isnan(x) for x in (none.mean, none.low, none.high, none.sd))


def test_paired_difference_by_hand():
    variant = [0.970, 0.975, 0.972, 0.980, 0.971]
    baseline = [0.960, 0.962, 0.965, 0.970, 0.958]
    # d = [0.010, 0.013, 0.007, 0.010, 0.013]: mean 0.0106, sum of squared deviations 2.52e-5
    d = stats.paired_difference(variant, baseline)
    sd = math.sqrt(2.52e-5 / 4)
    half = T95[4] * sd / math.sqrt(5)  # 0.0031165...
    assert d.n == 5 and d.mean == pytest.approx(0.0106) and d.sd == pytest.approx(sd)
    assert d.low == pytest.approx(0.0106 - half) and d.high == pytest.approx(0.0106 + half)
    assert d.low == pytest.approx(0.0074835, abs=1e-6)
    assert stats.verdict(d, "higher") == SUPPORTED
    assert stats.verdict(d, "lower") == NOT_SUPPORTED


def test_paired_difference_keeps_only_seeds_where_both_are_finite():
    d = stats.paired_difference([1.0, math.nan, 3.0, 4.0], [0.0, 0.0, 1.0, math.inf])
    assert d.n == 2 and d.mean == pytest.approx(1.5)  # (1 - 0) and (3 - 1)
    # None (a member that never reported) on either side drops that seed
    d = stats.paired_difference([1.0, None, 3.0, 5.0, None], [0.0, 0.0, None, 4.5, None])
    assert d.n == 2 and d.mean == pytest.approx(0.75)  # (1 - 0) and (5 - 4.5)
    with pytest.raises(ValueError, match="equal lengths, got 1 and 2"):
        stats.paired_difference([1.0], [1.0, 2.0])


def test_paired_difference_at_another_level():
    # d = 1, 2, 3: mean 2, sd 1; the 90% interval uses t(0.95, 2) = 2.919986 (table)
    d = stats.paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], level=0.90)
    assert d.high - d.mean == pytest.approx(2.919986 / math.sqrt(3), abs=1e-6)


def test_verdict_inconclusive_when_the_interval_straddles_zero():
    d = stats.mean_ci([1.0, 2.0, 3.0])  # [-0.484, 4.484]
    assert d.low < 0 < d.high
    assert stats.verdict(d, "higher") == INCONCLUSIVE
    assert stats.verdict(d, "lower") == INCONCLUSIVE


def test_verdict_for_lower_is_better():
    # epochs to a target: variant 3, 4, 3 vs baseline 6, 6, 7 -> d = -3, -2, -4: [-5.484, -0.516]
    d = stats.paired_difference([3, 4, 3], [6, 6, 7])
    assert d.high == pytest.approx(-3 + T95[2] / math.sqrt(3))
    assert stats.verdict(d, "lower") == SUPPORTED
    assert stats.verdict(d, "higher") == NOT_SUPPORTED


def test_verdict_with_a_tolerance_is_a_claim_of_not_worse():
    d = stats.mean_ci([1.0, 2.0, 3.0])  # [-0.484, 4.484]
    assert stats.verdict(d, "higher", tolerance=0.5) == SUPPORTED  # -0.484 > -0.5
    assert stats.verdict(d, "higher", tolerance=0.4) == INCONCLUSIVE
    worse = stats.mean_ci([-3.0, -2.0, -1.0])  # [-4.484, 0.484]
    assert stats.verdict(worse, "higher", tolerance=0.0) == INCONCLUSIVE
    much_worse = stats.mean_ci([-0.031, -0.030, -0.029])  # [-0.0325, -0.0275]
    assert stats.verdict(much_worse, "higher", tolerance=0.01) == NOT_SUPPORTED
    assert stats.verdict(much_worse, "higher", tolerance=0.04) == SUPPORTED


def test_verdict_edge_cases():
    assert stats.verdict(stats.mean_ci([0.0, 0.0, 0.0]), "higher") == INCONCLUSIVE  # identical arms
    assert stats.verdict(stats.mean_ci([1.0, 1.0, 1.0]), "higher") == SUPPORTED  # sd 0, all above
    assert stats.verdict(stats.mean_ci([5.0]), "higher") == INCONCLUSIVE  # one seed: no interval
    assert stats.verdict(stats.mean_ci([1.0, 1.0]), "higher") == SUPPORTED  # two seeds are enough
    assert stats.verdict(Interval(math.nan, math.nan, math.nan, 0, math.nan)) == INCONCLUSIVE
    # an interval that overflowed is no evidence, even with one end on a side
    assert stats.verdict(Interval(-5.0, -math.inf, -1.0, 3, math.inf), "higher") == INCONCLUSIVE
    assert stats.verdict(Interval(5.0, 1.0, math.inf, 3, math.inf), "higher") == INCONCLUSIVE
    with pytest.raises(ValueError, match="better must be 'higher' or 'lower', got 'up'"):
        stats.verdict(stats.mean_ci([1.0, 2.0]), "up")


def test_verdict_with_a_tolerance_for_lower_is_better():
    # epochs: the variant takes 0.2 to 0.3 more (worse), within a tolerance of 0.5 -> supported;
    # within 0.25 -> the interval straddles the boundary; within 0.1 -> not supported.
    worse = Interval(0.25, 0.2, 0.3, 3, 0.02)
    assert stats.verdict(worse, "lower", tolerance=0.5) == SUPPORTED
    assert stats.verdict(worse, "lower", tolerance=0.25) == INCONCLUSIVE
    assert stats.verdict(worse, "lower", tolerance=0.1) == NOT_SUPPORTED
    # signed [-0.6, 0.2] straddles -0.5: inconclusive, not "not supported"
    assert stats.verdict(Interval(-0.2, -0.6, 0.2, 3, 0.1), "higher", tolerance=0.5) == INCONCLUSIVE


def test_fmt_interval():
    assert stats.fmt_interval(Interval(0.97, 0.96, 0.98, 3, 0.01), digits=2, scale=100, unit="%") == \
        "97.00% [96.00%, 98.00%]"
    assert stats.fmt_interval(stats.mean_ci([0.5])) == "0.5000 (1 seed)"
    assert stats.fmt_interval(Interval(0.6, 0.5, 0.7, 2, 0.1)) == "0.6000 [0.5000, 0.7000]"  # two seeds
    assert stats.fmt_interval(stats.mean_ci([])) == "n/a"
    assert stats.fmt_interval(Interval(math.nan, math.nan, math.nan, 3, math.nan)) == "n/a"


@pytest.mark.parametrize("better, tolerance", [("higher", 0.0), ("lower", 0.0), ("higher", 0.004), ("lower", 0.01)])
def test_p_value_is_the_paired_t_test_against_the_boundary(better, tolerance):
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(3)
    for _ in range(20):
        variant, baseline = rng.normal(0.97, 0.01, 5), rng.normal(0.968, 0.01, 5)
        diff = stats.paired_difference(list(variant), list(baseline))
        signed = (variant - baseline) * (1 if better == "higher" else -1)
        expected = scipy_stats.ttest_1samp(signed, -tolerance).pvalue
        assert stats.p_value(diff, better, tolerance) == pytest.approx(expected, rel=1e-9)
        # The interval the verdict reads leaves the boundary out exactly when p < 5%.
        assert (stats.verdict(diff, better, tolerance) != INCONCLUSIVE) == (expected < 0.05)


def test_p_value_edge_cases():
    assert math.isnan(stats.p_value(Interval(0.01, math.nan, math.nan, 1, math.nan)))
    assert stats.p_value(Interval(0.01, 0.01, 0.01, 3, 0.0)) == 0.0  # the same difference on every seed
    assert stats.p_value(Interval(0.0, 0.0, 0.0, 3, 0.0)) == 1.0  # both arms identical


def test_corrected_verdicts_hold_the_false_discovery_rate_by_benjamini_hochberg():
    rng = np.random.default_rng(0)
    tests = []
    for shift in (0.0, 0.0, 0.002, 0.004, 0.006, 0.01, -0.015, 0.0005):
        variant, baseline = rng.normal(0.97 + shift, 0.003, 5), rng.normal(0.97, 0.003, 5)
        tests.append((stats.paired_difference(list(variant), list(baseline)), "higher", 0.0))
    tests.append((Interval(0.01, math.nan, math.nan, 1, math.nan), "higher", 0.0))  # one seed: no test
    p = np.array([stats.p_value(*t) for t in tests[:-1]])
    # Benjamini-Hochberg by hand: sorted p's, q_(i) = min over j >= i of m p_(j) / j.
    order = np.argsort(p)
    m = len(p)
    q_sorted = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    expected = [INCONCLUSIVE if qi >= 0.05 else SUPPORTED if t[0].mean > 0 else NOT_SUPPORTED
                for qi, t in zip(q, tests)] + [INCONCLUSIVE]
    got = stats.corrected_verdicts(tests)
    assert got == expected
    assert SUPPORTED in got and NOT_SUPPORTED in got and INCONCLUSIVE in got


def with_p(p: float, n: int = 5) -> Interval:
    """A paired difference of n seeds whose t-test gives the two-sided p-value p."""
    from scipy import stats as scipy_stats

    mean = scipy_stats.t.isf(p / 2, n - 1) / math.sqrt(n)  # sd 1
    half = scipy_stats.t.ppf(0.975, n - 1) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, 1.0)


def test_the_correction_withdraws_a_verdict_that_many_statements_make_likely_by_chance():
    tests = [(with_p(p), "higher", 0.0) for p in (0.04, 0.5, 0.6)]
    assert stats.p_value(*tests[0]) == pytest.approx(0.04)
    assert [stats.verdict(*t) for t in tests] == [SUPPORTED, INCONCLUSIVE, INCONCLUSIVE]
    # 0.04 x 3 / 1 = 0.12 >= 5%: alone among three, it is no longer decided.
    assert stats.corrected_verdicts(tests) == [INCONCLUSIVE] * 3
    assert stats.corrected_verdicts(tests[:1]) == [SUPPORTED]


def sharp(mean: float, n: int = 5, sd: float = 0.0002) -> Interval:
    """A paired difference known to within a small spread: decided whichever way it points."""
    half = 2.776 * sd / math.sqrt(n)  # t(0.975, 4) = 2.776
    return Interval(mean, mean - half, mean + half, n, sd)


def test_corrected_verdicts_read_the_claimed_direction_and_the_tolerance():
    tests = [
        (sharp(+0.003), "lower", 0.004),   # worse by 0.003, within the 0.004 allowed: supported
        (sharp(-0.003), "higher", 0.004),  # the same, for higher is better
        (sharp(+0.002), "higher", 0.004),  # better: supported
        (sharp(-0.010), "lower", 0.0),     # lower, as claimed: supported
        (sharp(+0.010), "lower", 0.0),     # higher, against the claim: not supported
        (sharp(-0.006), "higher", 0.004),  # worse by more than allowed: not supported
    ]
    expected = [SUPPORTED, SUPPORTED, SUPPORTED, SUPPORTED, NOT_SUPPORTED, NOT_SUPPORTED]
    assert stats.corrected_verdicts(tests) == expected
    assert [stats.verdict(*t) for t in tests] == expected  # decided beyond doubt: the correction agrees


def test_p_value_of_two_seeds_is_the_t_test_with_one_degree_of_freedom():
    from scipy import stats as scipy_stats

    diff = stats.paired_difference([0.97, 0.975], [0.96, 0.961])
    assert diff.n == 2
    assert stats.p_value(diff) == pytest.approx(scipy_stats.ttest_1samp([0.01, 0.014], 0.0).pvalue, rel=1e-9)
    # Higher is better by default: the boundary is -tolerance on that side.
    assert stats.p_value(diff, tolerance=0.005) == pytest.approx(
        scipy_stats.ttest_1samp([0.01, 0.014], -0.005).pvalue, rel=1e-9)



def test_seeds_to_decide_is_the_first_n_whose_interval_clears_the_boundary():
    # Mean difference 0.1, sd 0.2: the interval's half-width t(n-1) x 0.2 / sqrt(n) drops
    # under 0.1 first at n = 18 (t(16) = 2.1199 -> 0.1028 at n = 17; t(17) = 2.1098 ->
    # 0.0995 at n = 18), quantiles from a table.
    d = Interval(mean=0.1, low=-0.148, high=0.348, n=5, sd=0.2)
    assert stats.seeds_to_decide(d) == 18
    assert stats.seeds_to_decide(d, "lower") == 18  # the distance to the boundary, either side
    # A tolerance moves the boundary to -0.1: distance 0.2 for "higher" (t(5) x 0.2 / sqrt(6)
    # = 0.2099, t(6) x 0.2 / sqrt(7) = 0.1850 -> n = 7), and 0 for "lower" (never).
    assert stats.seeds_to_decide(d, tolerance=0.1) == 7  # "higher" by default
    assert stats.seeds_to_decide(d, "lower", tolerance=0.1) is None
    # Few seeds: mean 1, sd 0.1 -> t(1) = 12.7062 x 0.1 / sqrt(2) = 0.8985 < 1 at n = 2.
    assert stats.seeds_to_decide(Interval(1.0, 0.1, 1.9, 2, 0.1)) == 2
    # Mean 0.8: 0.8985 is not under it, t(2) = 4.3027 x 0.1 / sqrt(3) = 0.2484 is: n = 3.
    assert stats.seeds_to_decide(Interval(0.8, -0.1, 1.7, 2, 0.1)) == 3


def test_seeds_to_decide_edge_cases():
    assert stats.seeds_to_decide(Interval(0.0, -0.1, 0.1, 5, 0.1)) is None  # a mean on the boundary
    assert stats.seeds_to_decide(Interval(0.0, 0.0, 0.0, 5, 0.0)) is None  # on it, every seed alike
    # About (1.96 x sd / mean)^2 = 38,416 seeds: more than the default most.
    assert stats.seeds_to_decide(Interval(0.001, -0.1, 0.1, 5, 0.1)) is None
    assert stats.seeds_to_decide(Interval(0.001, -0.1, 0.1, 5, 0.1), most=50_000) == 38_418
    # `most` is the largest answer: a statement needing exactly 10,001 seeds (its mean between
    # the half-widths at 10,000 and 10,001 seeds, sd 1: 1.96020 / 100 and 1.96020 / 100.005).
    just_over = Interval(0.0196015, -1.0, 1.0, 5, 1.0)
    assert stats.seeds_to_decide(just_over) is None
    assert stats.seeds_to_decide(just_over, most=10_001) == 10_001
    assert stats.seeds_to_decide(Interval(0.5, 0.5, 0.5, 3, 0.0)) == 3  # no spread: already decided
    assert stats.seeds_to_decide(Interval(1.0, math.nan, math.nan, 1, math.nan)) is None  # one seed


def test_a_statement_read_at_a_later_look_has_its_p_value_scaled_before_the_correction():
    # Two statements with p = 0.02 and 0.03 (one look: both under 0.05; Benjamini-Hochberg
    # over two: 0.03 and 0.03, both decided). Read at 97.5% (two looks of 2.5% each): 0.04 and
    # 0.06, then BH: 0.06 and 0.06, neither decided.
    def with_p(p):  # a paired difference of 3 seeds whose t-test gives p exactly
        t = stats.t_quantile(2, 1 - p)
        return Interval(mean=t * 0.01 / math.sqrt(3), low=math.nan, high=math.nan, n=3, sd=0.01)
    tests = [(with_p(0.02), "higher", 0.0), (with_p(0.03), "higher", 0.0)]
    assert [stats.p_value(*t) for t in tests] == pytest.approx([0.02, 0.03])
    assert [stats.adjusted_p_value(*t, level=0.975) for t in tests] == pytest.approx([0.04, 0.06])
    assert stats.adjusted_p_value(with_p(0.7), level=0.975) == 1.0
    # A third look's 98.75% (1.25% of the 5%): times 4. p = 0.012 there is 0.048, under 0.05
    # exactly when its 98.75% interval would leave 0 out (p < 0.0125).
    assert stats.adjusted_p_value(with_p(0.012), level=0.9875) == pytest.approx(0.048)
    assert stats.adjusted_p_value(with_p(0.013), level=0.9875) == pytest.approx(0.052)
    assert stats.adjusted_p_value(with_p(0.02)) == pytest.approx(0.02)  # one look by default
    # The direction and the tolerance are the p-value's: 2 x p_value(d, "lower", 0.01) etc.
    d = with_p(0.02)
    for better in ("higher", "lower"):
        assert stats.adjusted_p_value(d, better, 0.01, level=0.975) == pytest.approx(2 * stats.p_value(d, better, 0.01))
    assert stats.adjusted_p_value(d, tolerance=0.01, level=0.975) == pytest.approx(2 * stats.p_value(d, "higher", 0.01))
    assert stats.p_value(d, "higher", 0.01) != pytest.approx(stats.p_value(d, "lower", 0.01))
    assert math.isnan(stats.adjusted_p_value(Interval(0.01, math.nan, math.nan, 1, math.nan), level=0.975))
    assert stats.corrected_verdicts(tests) == [SUPPORTED, SUPPORTED]
    assert stats.corrected_verdicts(tests, levels=[0.975, 0.975]) == [INCONCLUSIVE, INCONCLUSIVE]
    # Each statement at its own level: 0.02 read at the first look (x2: 0.04), 0.03 at one
    # look (x1: 0.03); BH over two: 0.04 and 0.04, both decided. Swapped: 0.02 and 0.06 -> 0.04
    # and 0.06: only the first.
    assert stats.corrected_verdicts(tests, levels=[0.975, 0.95]) == [SUPPORTED, SUPPORTED]
    assert stats.corrected_verdicts(tests, levels=[0.95, 0.975]) == [SUPPORTED, INCONCLUSIVE]
    with pytest.raises(ValueError):  # a level for each statement, no fewer
        stats.corrected_verdicts(tests, levels=[0.975])
