"""The bootstrap over images, paired comparisons and McNemar's test, against hand-computed values."""

import math

import numpy as np
import pytest

from bagnet.analysis._stats import (
    Bootstrap,
    bootstrap_interval,
    mcnemar_exact,
    pair_sums,
    paired_bootstrap,
    percentile_interval,
    rowwise_pearson,
    two_sided_p,
    weighted_mean,
    weighted_median,
    weighted_pearson,
)


def mean_of(x):
    return lambda w: weighted_mean(w, x)


def test_a_constant_sample_has_a_zero_width_interval():
    x = np.full(50, 0.7)
    iv = bootstrap_interval(mean_of(x), 50, Bootstrap(500))
    assert iv.estimate == pytest.approx(0.7) and iv.ci == pytest.approx([0.7, 0.7])


def test_a_binomial_proportion_matches_the_normal_approximation():
    """Many resamples of n Bernoulli(p) outcomes: the percentile interval of the mean is
    p +- 1.96 sqrt(p (1 - p) / n) up to Monte Carlo error and the binomial's granularity."""
    n, p = 400, 0.3
    x = np.r_[np.ones(int(n * p)), np.zeros(n - int(n * p))]
    iv = bootstrap_interval(mean_of(x), n, Bootstrap(resamples=10000, seed=1))
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # 0.0449
    assert iv.estimate == pytest.approx(p)
    assert iv.low == pytest.approx(p - half, abs=0.006) and iv.high == pytest.approx(p + half, abs=0.006)


def test_weights_are_seeded_resamples_and_keep_strata():
    boot = Bootstrap(300, seed=5)
    w = boot.weights(12)
    assert w.shape == (300, 12) and (w.sum(1) == 12).all() and (w >= 0).all()
    np.testing.assert_array_equal(w, Bootstrap(300, seed=5).weights(12))
    assert not np.array_equal(w, Bootstrap(300, seed=6).weights(12))
    assert 0.3 < (w == 0).mean() < 0.4  # each image is left out of a resample with probability (1 - 1/n)^n
    strata = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 1, 0])
    ws = boot.weights(12, strata)
    for s in (0, 1, 2):
        assert (ws[:, strata == s].sum(1) == (strata == s).sum()).all()


def test_weighted_statistics_are_those_of_the_repeated_sample():
    rng = np.random.default_rng(0)
    x = rng.normal(size=9)
    y = x + rng.normal(size=9)
    w = Bootstrap(50, seed=2).weights(9)
    for row in w:
        rep = np.repeat(np.arange(9), row.astype(int))
        assert weighted_mean(row[None], x)[0] == pytest.approx(x[rep].mean())
        assert weighted_median(row[None], x)[0] == pytest.approx(np.median(x[rep]))
        assert weighted_pearson(row[None], pair_sums(x, y))[0] == pytest.approx(np.corrcoef(x[rep], y[rep])[0, 1])
    # Several (x, y) pairs per image (rows of [n, C] arrays): r over all entries of the resample.
    a, b = rng.normal(size=(9, 4)), rng.normal(size=(9, 4))
    b += a
    row = w[0]
    rep = np.repeat(np.arange(9), row.astype(int))
    assert weighted_pearson(row[None], pair_sums(a, b))[0] == pytest.approx(
        np.corrcoef(a[rep].ravel(), b[rep].ravel())[0, 1])
    assert weighted_median(np.array([[1.0, 1.0, 1.0, 1.0]]), np.array([4.0, 1.0, 3.0, 2.0]))[0] == 2.5
    assert np.isnan(weighted_mean(np.array([[1.0, 0.0]]), np.array([np.nan, 1.0]))[0])  # NaNs are left out
    assert np.isnan(rowwise_pearson(np.ones((1, 3)), np.array([[1.0, 2.0, 3.0]]))[0])  # constant row


def test_percentile_interval_and_two_sided_p_by_hand():
    lo, hi = percentile_interval(np.arange(101.0), level=0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))
    lo, hi = percentile_interval(np.r_[np.arange(101.0), np.nan, np.inf], level=0.9)  # non-finite left out
    assert (lo, hi) == pytest.approx((5.0, 95.0))
    # 4 resamples: 0 counts on both sides; +1 correction: 2 (min(below, above) + 1) / (B + 1)
    assert two_sided_p(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(2 * 1 / 5)
    assert two_sided_p(np.array([-1.0, 2.0, 3.0, 4.0])) == pytest.approx(2 * 2 / 5)
    assert two_sided_p(np.array([-1.0, 0.0, 1.0, 2.0])) == 1.0
    np.testing.assert_allclose(two_sided_p(np.array([[1.0, -1.0], [2.0, -2.0]])), [2 / 3, 2 / 3])


def test_paired_bootstrap_p_is_one_for_identical_methods_and_small_for_a_clearly_better_one():
    rng = np.random.default_rng(3)
    a = rng.normal(size=80)
    boot = Bootstrap(1000, seed=0)
    same = paired_bootstrap(mean_of(a), mean_of(a.copy()), 80, boot)
    assert same.diff == 0 and same.ci == [0.0, 0.0] and same.p == 1.0
    better = a + 0.5 + 0.1 * rng.normal(size=80)
    c = paired_bootstrap(mean_of(better), mean_of(a), 80, boot)
    assert c.diff == pytest.approx(float((better - a).mean()))
    assert c.low > 0.4 and c.high < 0.6 and c.p == pytest.approx(2 / 1001)
    # Pairing matters: a small shift buried in large between-image variance is still clear.
    x = 10 * rng.normal(size=80)
    assert paired_bootstrap(mean_of(x + 0.2), mean_of(x), 80, boot).p < 0.01
    # Vector statistics: one p-value per entry.
    v = paired_bootstrap(mean_of(np.c_[better, a]), mean_of(np.c_[a, a]), 80, boot)
    assert v.p[0] < 0.01 and v.p[1] == 1.0 and len(v.ci) == 2


def test_mcnemar_exact_by_hand():
    a = np.r_[np.ones(10, bool), np.zeros(3, bool), np.ones(5, bool)]
    b = np.r_[np.zeros(10, bool), np.ones(3, bool), np.ones(5, bool)]
    p, only_a, only_b = mcnemar_exact(a, b)
    tail = sum(math.comb(13, i) for i in range(4)) / 2**13  # P[X <= 3], X ~ Binomial(13, 1/2)
    assert (only_a, only_b) == (10, 3) and p == pytest.approx(2 * tail)
    assert mcnemar_exact(b, a)[0] == pytest.approx(p)
    assert mcnemar_exact(a, a) == (1.0, 0, 0)
    assert mcnemar_exact(np.r_[np.ones(3000, bool)], np.r_[np.zeros(3000, bool)])[0] < 1e-300  # large n is exact


def test_bad_settings_say_what_to_do():
    with pytest.raises(ValueError, match="positive whole number"):
        Bootstrap(0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Bootstrap(100, level=95)
