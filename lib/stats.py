"""Sampling error of the numbers a verdict rests on.

A chapter measures a claim on ``n`` explained instances (digits, images); the verdict must hold up
to the sampling error of that choice. This module turns per-instance measurements into an
:class:`Estimate` (a point value with a confidence interval and its ``n``) or a :class:`TestResult`
(a one-sided test in the claimed direction and in the opposite one), which the rules of
:mod:`lib.claims` judge.

Conventions, used throughout the book:

* intervals are two-sided 95 % (``LEVEL``); a threshold is met when the whole interval is on the
  claimed side, contradicted when the whole interval is on the other side, and the verdict is
  "inconclusive" otherwise;
* tests are one-sided at ``ALPHA = 0.05`` in the claimed direction; the opposite direction is
  tested too, so that "not reproduced" means the data contradict the claim, not just fail to
  support it;
* the unit of every interval and test is the independent instance (an image), never a pixel or a
  block of one image;
* bootstrap intervals are percentile intervals over instances with ``N_BOOT`` resamples and their
  own seeded generator, so they are identical on every machine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

LEVEL = 0.95
ALPHA = 0.05
N_BOOT = 10_000
# Below this many instances a percentile bootstrap interval under-covers badly (with n = 2 it is the
# range of the two values), so bootstrap_mean widens it to at least the Student-t interval.
SMALL_N = 10


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 95 % interval over the explained instances.

    ``value`` is the point estimate, ``low``/``high`` the interval, ``n`` the number of independent
    instances it rests on (``None`` for an exact quantity without sampling error), ``method`` how the
    interval was computed.
    """

    value: float
    low: float
    high: float
    n: int | None
    method: str

    def asdict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.n is None:
            return f"{self.value:.4g} (exact)"
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n})"


@dataclass(frozen=True)
class TestResult:
    """A one-sided test of the claimed direction (``p``) and of the opposite one (``p_opposite``).

    ``effect`` is a descriptive effect size (e.g. the median paired difference), ``n`` the number of
    independent instances (pairs) tested.
    """

    p: float
    p_opposite: float
    effect: float
    n: int
    method: str

    def asdict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"p = {self.p:.3g} (opposite direction {self.p_opposite:.3g}; effect {self.effect:.4g}; n={self.n})"


def exact(value: float, note: str = "exact: no sampling error") -> Estimate:
    """A quantity without sampling error (a deterministic single example, a cross-implementation
    difference on fixed inputs)."""
    v = float(value)
    return Estimate(v, v, v, None, note)


def proportion(k: int, n: int, level: float = LEVEL) -> Estimate:
    """``k`` successes out of ``n`` instances with the exact (Clopper-Pearson) interval."""
    from scipy.stats import beta

    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"proportion needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return Estimate(k / n, low, high, n, f"{k}/{n}, exact Clopper-Pearson {level:.0%} interval")


def _as_array(values) -> np.ndarray:
    arr = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64).ravel()
    return arr


def bootstrap_mean(values: Sequence[float], seed: int = 0, level: float = LEVEL, n_boot: int = N_BOOT) -> Estimate:
    """Mean of per-instance ``values`` (NaNs dropped) with a percentile bootstrap interval over instances.

    With fewer than ``SMALL_N`` instances the interval is widened to contain the Student-t interval
    (unbounded for one instance), since the percentile bootstrap under-covers at small n.
    """
    x = _as_array(values)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "no instance")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    method = f"mean, percentile bootstrap over instances ({n_boot} resamples, {level:.0%})"
    if len(x) < SMALL_N:
        t_lo, t_hi = _t_interval(x, level)
        lo, hi = min(lo, t_lo), max(hi, t_hi)
        method += f", widened to the Student-t interval (n < {SMALL_N}: the bootstrap alone under-covers)"
    return Estimate(float(x.mean()), float(lo), float(hi), len(x), method)


def _t_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """Student-t interval for the mean; unbounded for a single value."""
    from scipy.stats import t as student_t

    if len(x) < 2:
        return -math.inf, math.inf
    half = student_t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_ratio(numerator: Sequence[float], denominator: Sequence[float], seed: int = 0, level: float = LEVEL,
                    n_boot: int = N_BOOT) -> Estimate:
    """mean(numerator) / mean(denominator) over paired instances, with a paired percentile bootstrap interval."""
    a_, b_ = _as_array(numerator), _as_array(denominator)
    if a_.shape != b_.shape:
        raise ValueError(f"paired values need equal lengths, got {a_.shape} and {b_.shape}")
    keep = ~(np.isnan(a_) | np.isnan(b_))
    a_, b_ = a_[keep], b_[keep]
    if len(a_) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "no instance")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a_), size=(n_boot, len(a_)))
    ratios = a_[idx].mean(1) / b_[idx].mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(ratios, [a, 1 - a])
    return Estimate(float(a_.mean() / b_.mean()), float(lo), float(hi), len(a_),
                    f"ratio of means, paired percentile bootstrap over instances ({n_boot} resamples, {level:.0%})")


def paired_test(a: Sequence[float], b: Sequence[float], alternative: str = "greater", method: str = "wilcoxon") -> TestResult:
    """Is ``a`` larger (``alternative="greater"``) or smaller (``"less"``) than ``b``, instance by instance?

    ``method="wilcoxon"``: Wilcoxon signed-rank test (exact for small n without ties, zero
    differences dropped); ``"sign"``: exact binomial sign test. Returns the p-value of the claimed
    direction and of the opposite one.
    """
    from scipy.stats import binomtest, wilcoxon

    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    d = _as_array(a) - _as_array(b)
    d = d[~np.isnan(d)]
    opposite = "less" if alternative == "greater" else "greater"
    nz = d[d != 0]
    if len(nz) == 0:
        return TestResult(1.0, 1.0, 0.0, len(d), f"{method}: all {len(d)} differences are zero")
    if method == "wilcoxon":
        p = float(wilcoxon(nz, alternative=alternative).pvalue)
        p_opp = float(wilcoxon(nz, alternative=opposite).pvalue)
        name = "one-sided Wilcoxon signed-rank test over instances"
    elif method == "sign":
        pos, n = int((nz > 0).sum()), len(nz)
        k = pos if alternative == "greater" else n - pos
        p = float(binomtest(k, n, 0.5, alternative="greater").pvalue)
        p_opp = float(binomtest(n - k, n, 0.5, alternative="greater").pvalue)
        name = f"one-sided exact sign test over instances ({k} of {n} in the claimed direction)"
    else:
        raise ValueError(f"method must be 'wilcoxon' or 'sign', got {method!r}")
    return TestResult(p, p_opp, float(np.median(d)), len(d), name)


def one_sample_test(values: Sequence[float], alternative: str = "greater", method: str = "wilcoxon") -> TestResult:
    """Are per-instance ``values`` (e.g. per-image correlations) above (or below) zero? See :func:`paired_test`."""
    v = _as_array(values)
    return paired_test(v, np.zeros_like(v), alternative=alternative, method=method)
