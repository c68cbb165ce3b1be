"""95% intervals for the numbers the project prints, and whether a difference is inside noise.

Rates (a share of yes/no items) get Wilson's interval, which stays inside [0, 1] and is sensible at
0/n and n/n, where the normal approximation collapses to a point. Means of other per-item values
(win rates with ties as 0.5, TruthfulQA MC2, ROUGE-L diff) get a seeded percentile bootstrap, so the
same items always print the same interval. An interval is [lo, hi] (a list: it goes into the JSON
files and reads back equal), or None when there are too few items to say anything (no items; a
bootstrap needs at least two).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest, bootstrap

CONFIDENCE = 0.95
N_BOOT = 2000


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """Wilson score interval for k successes out of n."""
    if n <= 0:
        return None
    ci = binomtest(round(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def stored_ci(summary: dict, key: str, n: int | None = None) -> list[float] | None:
    """The interval stored as KEY_ci beside summary[KEY]. Summaries written before the intervals
    have none: for a rate (n given) Wilson is recomputed from the rate and n, else None."""
    if f"{key}_ci" in summary:
        return summary[f"{key}_ci"]
    return None if n is None else wilson(round(summary[key] * n), n)


def _boot(data: tuple, statistic, n_boot: int, seed: int) -> list[float]:
    # percentile, not BCa: BCa returns NaN with a warning when every value is the same (all ties)
    res = bootstrap(data, statistic, vectorized=True, n_resamples=n_boot,
                    confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(seed))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def bootstrap_mean(values, n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """Bootstrap interval for the mean of per-item values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    return _boot((x,), np.mean, n_boot, seed)


def bootstrap_diff(a, b, paired: bool, n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """Bootstrap interval for mean(a) - mean(b). paired: a[i] and b[i] are the same item, resampled
    together, so what the items share (some are hard for every model) cancels out."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
        return bootstrap_mean(a - b, n_boot, seed)
    return _boot((a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), n_boot, seed)


def _length_controlled(y: np.ndarray, t: np.ndarray, ridge: float = 0.1, steps: int = 30) -> np.ndarray:
    """sigmoid(theta) of the fit y ~ sigmoid(theta + phi * t), for each row of y and t ([B, n]):
    Newton's method on the log loss (fractional y: a tie is half a win), a weak ridge keeping theta
    finite when every item is a win."""
    th, ph = np.zeros(len(y)), np.zeros(len(y))
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(th[:, None] + ph[:, None] * t)))
        r, w = p - y, p * (1 - p)
        g0, g1 = r.sum(1) + ridge * th, (r * t).sum(1) + ridge * ph
        h00, h01, h11 = w.sum(1) + ridge, (w * t).sum(1), (w * t * t).sum(1) + ridge
        det = h00 * h11 - h01 * h01
        th, ph = th - (h11 * g0 - h01 * g1) / det, ph - (h00 * g1 - h01 * g0) / det
    return 1 / (1 + np.exp(-th))


def length_controlled(prefs, len_a, len_b, n_boot: int = N_BOOT, seed: int = 0):
    """AlpacaEval 2.0's length-controlled win rate (Dubois et al. 2024, arXiv 2404.04475), without
    its per-instruction difficulty term: preference ~ sigmoid(theta + phi * tanh(d / sd)), d the
    length difference in characters (a - b) and sd its standard deviation over the items; the win
    rate at equal length is sigmoid(theta). Returns (it, a bootstrap interval over items), or
    (None, None) without items. Given [items, replicates] arrays (seeds that answered the same
    items), one fit pools them and the bootstrap resamples items with all their replicates."""
    y, la, lb = (np.asarray(x, dtype=float) for x in (prefs, len_a, len_b))
    if not y.shape == la.shape == lb.shape or y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
        raise ValueError(f"{len(y)} preferences, {len(la)} and {len(lb)} lengths" if y.ndim == la.ndim == lb.ndim == 1
                         else f"preferences {y.shape}, lengths {la.shape} and {lb.shape}: need [items] or "
                              f"[items, replicates] arrays of one shape")
    if y.ndim == 1:
        y, la, lb = y[:, None], la[:, None], lb[:, None]
    if len(y) == 0:
        return None, None
    d = la - lb
    t = np.tanh(d / d.std()) if d.std() > 0 else np.zeros_like(d)
    value = float(_length_controlled(y.reshape(1, -1), t.reshape(1, -1))[0])
    if len(y) < 2:
        return value, None
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    lo, hi = np.percentile(_length_controlled(y[idx].reshape(n_boot, -1), t[idx].reshape(n_boot, -1)), [2.5, 97.5])
    return value, [float(lo), float(hi)]


def bootstrap_f1(truth, said, n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """Bootstrap interval for the F1 of yes-verdicts SAID against TRUTH, items resampled together
    (F1 is not a mean of per-item values, so neither Wilson nor bootstrap_mean applies)."""
    t, s = np.asarray(truth, dtype=bool), np.asarray(said, dtype=bool)
    if len(t) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(t), (n_boot, len(t)))
    tt, ss = t[idx], s[idx]
    tp, wrong = (tt & ss).sum(1), (tt != ss).sum(1)
    # a resample without a single yes, true or said, has no F1: it is left out, not counted as 0
    f1 = np.where(2 * tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), np.nan)
    if np.isnan(f1).all():  # no yes at all, true or said: F1 is undefined
        return None
    lo, hi = np.nanpercentile(f1, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return [float(lo), float(hi)]


def bootstrap_auroc(pos, neg, n_boot: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """Bootstrap interval for the AUROC of scores POS (should rank high) against NEG, each class
    resampled on its own; the AUROC is the Mann-Whitney U over all pairs."""
    from scipy.stats import mannwhitneyu

    p, q = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    if len(p) < 2 or len(q) < 2:
        return None
    return _boot((p, q), lambda x, y, axis: mannwhitneyu(x, y, axis=axis).statistic / (len(p) * len(q)),
                 n_boot, seed)


def newcombe(k1: int, n1: int, k2: int, n2: int) -> list[float] | None:
    """Newcombe's hybrid score interval for k1/n1 - k2/n2 (independent samples), from the two
    Wilson intervals (Newcombe 1998, method 10)."""
    w1, w2 = wilson(k1, n1), wilson(k2, n2)
    if w1 is None or w2 is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return [d - math.hypot(p1 - w1[0], w2[1] - p2), d + math.hypot(w1[1] - p1, p2 - w2[0])]


def within_noise(a, b, paired: bool, rate: bool) -> bool:
    """Whether mean(a) - mean(b) is inside noise: its 95% interval contains 0.
    paired (the same items in the same order): a paired bootstrap over items. Otherwise rates (0/1
    values) use Newcombe's interval and other values a two-sample bootstrap. Too few items to
    tell a difference from noise count as inside it."""
    if paired:
        ci = bootstrap_diff(a, b, paired=True)
    elif rate:
        ci = newcombe(round(sum(a)), len(a), round(sum(b)), len(b))
    else:
        ci = bootstrap_diff(a, b, paired=False)
    return ci is None or ci[0] <= 0 <= ci[1]


_DIGITS = {"pct": 1, "pct0": 0, "3f": 3, "2f": 2}


def show_value(value: float | None, kind: str) -> str:
    """pct "10.0%", pct0 "46%", 3f "0.245", 2f "-1.91"; None "-"."""
    if value is None:
        return "-"
    d = _DIGITS[kind]
    return f"{100 * value:.{d}f}%" if kind.startswith("pct") else f"{value:.{d}f}"


def show_interval(ci, kind: str) -> str:
    """pct "[5.5-17.4]", pct0 "[33-60]", 3f "[0.212-0.280]"; 2f "[-3.80, 0.02]", a comma because
    its bounds can be negative."""
    d, scale = _DIGITS[kind], 100 if kind.startswith("pct") else 1
    return "[" + (", " if kind == "2f" else "-").join(f"{scale * x:.{d}f}" for x in ci) + "]"


def show(value: float | None, kind: str, ci=None) -> str:
    """A value and its interval as printed everywhere: "10.0% [5.5-17.4]"; the value alone without one."""
    if value is None or not ci:
        return show_value(value, kind)
    return f"{show_value(value, kind)} {show_interval(ci, kind)}"


def logistic_cv(x, y, cs, folds):
    """The logistic regression whose C (one of cs) has the best cross-validated log loss on folds,
    refitted on all of x: the seeds' refusal gate and the refusal judge are both fitted this way."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    search = GridSearchCV(LogisticRegression(max_iter=5000), {"C": list(cs)}, cv=folds, scoring="neg_log_loss")
    return search.fit(x, y).best_estimator_
