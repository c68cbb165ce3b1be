"""95% intervals (isara_lite.stats) against values computed independently, and the noise test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isara_lite.stats import (bootstrap_diff, bootstrap_mean, newcombe, show, stored_ci, wilson,
                              within_noise)

Z = 1.959963984540054  # the 97.5th percentile of the standard normal


def wilson_formula(k: int, n: int) -> tuple[float, float]:
    """Wilson (1927), written out: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    centre, half = p + Z**2 / (2 * n), Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return (centre - half) / (1 + Z**2 / n), (centre + half) / (1 + Z**2 / n)


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.27753),   # z²/(n+z²): the normal approximation would give [0, 0]
    (5, 10, 0.23659, 0.76341),
    (10, 10, 0.72247, 1.0),
    (1, 1, 0.20655, 1.0),
])
def test_wilson_known_values(k, n, lo, hi):
    assert wilson(k, n) == pytest.approx([lo, hi], abs=1e-5)
    assert wilson(k, n) == pytest.approx(list(wilson_formula(k, n)), abs=1e-12)


@pytest.mark.parametrize("k, n", [(3, 4), (22, 48), (89, 100), (1, 200)])
def test_wilson_matches_the_formula(k, n):
    assert wilson(k, n) == pytest.approx(list(wilson_formula(k, n)), abs=1e-12)


def test_wilson_without_items():
    assert wilson(0, 0) is None


def test_stored_ci_reads_the_key_or_recomputes_a_rate():
    assert stored_ci({"rate": 0.5, "rate_ci": [0.1, 0.9]}, "rate", 10) == [0.1, 0.9]
    assert stored_ci({"rate": 0.5}, "rate", 10) == wilson(5, 10)  # an older summary without the key
    assert stored_ci({"mc2": 0.4}, "mc2") is None                   # not a rate: nothing to recompute
    assert stored_ci({"rate": 0.0, "rate_ci": None}, "rate", 0) is None


def test_bootstrap_is_seeded_and_contains_the_mean():
    values = np.random.default_rng(1).random(200)
    a, b = bootstrap_mean(values), bootstrap_mean(values)
    assert a == b and isinstance(a, list)
    assert a[0] < values.mean() < a[1]
    assert bootstrap_mean(values, seed=1) != a
    # percentile, not "basic" (2 * mean - percentiles): an interval of non-negative values stays non-negative
    lo, hi = bootstrap_mean([0.0] * 18 + [10.0, 100.0])
    assert 0.0 <= lo < 5.5 < hi <= 100.0
    # close to the normal approximation on this many items
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert a == pytest.approx([values.mean() - half, values.mean() + half], abs=0.01)


def test_bootstrap_of_a_win_rate_with_ties():
    prefs = [1.0] * 10 + [0.5] * 20 + [0.0] * 20  # win rate 0.4
    lo, hi = bootstrap_mean(prefs)
    assert lo < 0.4 < hi and 0.25 < lo and hi < 0.55
    assert bootstrap_mean([0.5] * 50) == [0.5, 0.5]  # all ties: nothing varies
    assert bootstrap_mean([1.0]) is None and bootstrap_mean([]) is None


def test_bootstrap_diff_paired_and_unpaired():
    a = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_diff(a, [0.0] * 100, paired=True)
    assert lo > 0 and lo < 0.3 < hi
    lo, hi = bootstrap_diff(a, [0.0] * 50 + [1.0] * 50, paired=False)
    assert lo < -0.2 < hi < 0
    with pytest.raises(ValueError):
        bootstrap_diff([1.0, 0.0], [1.0, 0.0, 1.0], paired=True)


def test_newcombe_matches_the_paper():
    # Newcombe (1998), example (a): 56/70 - 48/80, method 10 gives 0.0524 to 0.3339
    assert newcombe(56, 70, 48, 80) == pytest.approx([0.0524, 0.3339], abs=5e-5)
    assert newcombe(1, 0, 1, 2) is None


def test_noise_on_a_clear_and_an_unclear_difference():
    base = [1.0] * 45 + [0.0] * 5   # 90% harmful
    clear = [1.0] * 5 + [0.0] * 45  # 10%: the same prompts, most now refused
    unclear = [0.0] + [1.0] * 44 + [0.0] * 5  # one prompt changed
    assert within_noise(clear, base, paired=True, rate=True) is False
    assert within_noise(unclear, base, paired=True, rate=True) is True
    assert within_noise(base, base, paired=True, rate=True) is True
    # without item keys: Newcombe for rates, a two-sample bootstrap for other values
    assert within_noise(clear, base, paired=False, rate=True) is False
    assert within_noise(unclear, base, paired=False, rate=True) is True
    assert within_noise([1.0] * 30 + [0.5] * 20, [0.5] * 50, paired=False, rate=False) is False
    assert within_noise([1.0] * 2 + [0.5] * 48, [0.5] * 50, paired=False, rate=False) is True
    assert within_noise([1.0], [0.0], paired=True, rate=True) is True  # one item tells nothing


def test_paired_sees_what_unpaired_cannot():
    """Twelve items each 0.1 better on a spread-out score: paired, the shift is clear; as two
    independent samples it drowns in the spread between items."""
    base = list(np.linspace(0.0, 1.0, 12))
    better = [x + 0.1 for x in base]
    assert within_noise(better, base, paired=True, rate=False) is False
    assert within_noise(better, base, paired=False, rate=False) is True


def test_show():
    assert show(0.1, "pct", [0.055, 0.174]) == "10.0% [5.5-17.4]"
    assert show(0.4583, "pct0", wilson(22, 48)) == "46% [33-60]"
    assert show(0.245, "3f", [0.2121, 0.28]) == "0.245 [0.212-0.280]"
    assert show(-1.91, "2f", [-3.8, 0.02]) == "-1.91 [-3.80, 0.02]"  # a comma: the bounds can be negative
    assert show(0.5, "pct") == "50.0%" and show(None, "pct", [0, 1]) == "-"


def test_bootstrap_f1_contains_the_f1_and_narrows_with_more_items():
    from sklearn.metrics import f1_score

    from isara_lite.stats import bootstrap_f1

    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 1600):
        truth = rng.random(n) < 0.5
        said = np.where(rng.random(n) < 0.9, truth, ~truth)
        lo, hi = bootstrap_f1(truth, said)
        assert lo < f1_score(truth, said) < hi and bootstrap_f1(truth, said) == [lo, hi]  # seeded
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(16) as wide
    assert bootstrap_f1([True, False, True], [True, False, True]) == [1.0, 1.0] and bootstrap_f1([True], [True]) is None
    assert bootstrap_f1([False] * 20, [False] * 20) is None  # no yes anywhere: F1 has no interval


def test_bootstrap_auroc_contains_the_auroc_and_narrows_with_more_items():
    from sklearn.metrics import roc_auc_score

    from isara_lite.stats import bootstrap_auroc

    rng = np.random.default_rng(2)
    widths = []
    for n in (50, 800):
        pos, neg = rng.normal(1, 1, n), rng.normal(0, 1, n)
        auc = roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[pos, neg])
        lo, hi = bootstrap_auroc(pos, neg, n_boot=500)
        assert lo < auc < hi and bootstrap_auroc(pos, neg, n_boot=500) == [lo, hi]  # seeded
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16) as wide
    assert bootstrap_auroc([1, 1], [0, 0]) == [1.0, 1.0]  # perfectly separated in every resample
    assert bootstrap_auroc([0.5, 0.5], [0.5, 0.5]) == [0.5, 0.5] and bootstrap_auroc([1], [0, 1]) is None


def test_length_controlled_win_rate_removes_what_length_explains():
    """A judge that only picks the longer answer gives ~50% at equal length; a model that wins at
    equal length keeps its advantage; checked against sklearn's unpenalized logistic fit."""
    from sklearn.linear_model import LogisticRegression

    from isara_lite.stats import length_controlled

    rng = np.random.default_rng(3)
    la, lb = rng.integers(50, 800, 400), rng.integers(50, 800, 400)
    lc, (lo, hi) = length_controlled((la > lb).astype(float), la, lb, n_boot=500)
    assert lo < 0.5 < hi and abs(lc - 0.5) < 0.05
    t = np.tanh((la - lb) / np.std(la - lb))
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.85 + 1.5 * t)))).astype(float)  # 70% at equal length
    lc, (lo, hi) = length_controlled(y, la, lb, n_boot=500)
    theta = LogisticRegression(C=np.inf, max_iter=1000).fit(t[:, None], y).intercept_[0]
    assert lc == pytest.approx(1 / (1 + math.exp(-theta)), abs=2e-3)  # the ridge is weak
    assert lo < lc < hi and length_controlled(y, la, lb, n_boot=500) == (lc, [lo, hi])  # seeded
    assert length_controlled([], [], []) == (None, None)
    with pytest.raises(ValueError, match="2 preferences, 2 and 1 lengths"):
        length_controlled([1.0, 0.0], [3, 4], [3])
    assert length_controlled([0.5, 0.5], [3, 3], [3, 3])[0] == pytest.approx(0.5)  # ties at equal length


def test_length_controlled_pools_replicates_and_resamples_them_together():
    """Seeds that answered the same items: one fit over all of them, and an interval that does not
    count a copy of an item as new evidence (flattening would narrow it by about sqrt(2))."""
    from isara_lite.stats import length_controlled

    rng = np.random.default_rng(5)
    la, lb = rng.integers(50, 800, 200), rng.integers(50, 800, 200)
    t = np.tanh((la - lb) / np.std(la - lb))
    y = (rng.random(200) < 1 / (1 + np.exp(-(0.4 + 1.5 * t)))).astype(float)
    one, (lo1, hi1) = length_controlled(y, la, lb, n_boot=1000)
    two, (lo2, hi2) = length_controlled(np.stack([y, y], 1), np.stack([la, la], 1), np.stack([lb, lb], 1), n_boot=1000)
    flat, (lo3, hi3) = length_controlled(np.r_[y, y], np.r_[la, la], np.r_[lb, lb], n_boot=1000)
    assert two == pytest.approx(one, abs=2e-3) and two == pytest.approx(flat)
    assert (hi2 - lo2) == pytest.approx(hi1 - lo1, rel=0.15) and (hi3 - lo3) < 0.8 * (hi2 - lo2)
    with pytest.raises(ValueError, match=r"preferences \(2, 2\), lengths \(2, 2\) and \(2, 1\)"):
        length_controlled([[1.0, 0.0]] * 2, [[3, 4]] * 2, [[3]] * 2)
