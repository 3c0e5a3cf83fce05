"""Paired significance of a method against a baseline on the same items.

- :func:`paired_bootstrap`: the difference of a (weighted) mean metric between two methods
  scored on the same items, with a seeded percentile bootstrap confidence interval
  (items resampled with replacement, both methods together). Bits per byte is the mean
  of per-window bits per byte weighted by each window's bytes.
- :func:`stratified_bootstrap`: the same for the mean over several tasks (items resampled
  within each task).
- :func:`mcnemar_exact`: McNemar's exact test for two accuracies on the same items (a
  two-sided binomial test on the items where exactly one of the two is right).

Example:
    >>> d = paired_bootstrap([1, 1, 0, 1], [1, 0, 0, 0], resamples=2000, seed=0)
    >>> d.difference
    0.5
    >>> mcnemar_exact([1, 1, 1, 1, 1], [0, 0, 0, 0, 0]).p_value
    0.0625
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["Difference", "McNemar", "paired_bootstrap", "stratified_bootstrap", "mcnemar_exact", "weighted_mean"]


@dataclass(frozen=True)
class Difference:
    """``a - b`` of a metric on the same items, with its bootstrap confidence interval.

    ``significant`` is True when the interval excludes zero.
    """

    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "difference": self.difference,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "significant": self.significant,
        }


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: ``only_a`` items right for a only, ``only_b`` for b only.

    >>> McNemar(0, 0, 1.0).p_value
    1.0
    """

    only_a: int
    only_b: int
    p_value: float

    def to_dict(self) -> dict[str, float | int]:
        return {"only_a": self.only_a, "only_b": self.only_b, "p_value": self.p_value}


def _values(name: str, values: Sequence[float]) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(name, values, "a list of numbers") from None
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise ConfigError(
            name, values if len(values) < 8 else f"<{len(values)} values>", "a non-empty list of finite numbers"
        )
    return array


def _check(
    a: np.ndarray, b: np.ndarray, weights: Sequence[float] | None, confidence: float, resamples: int
) -> np.ndarray:
    if a.shape != b.shape:
        raise ConfigError("b", f"<{b.size} values>", f"{a.size} values, one per item of a (paired)")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ConfigError("resamples", resamples, "an integer >= 100")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ConfigError("confidence", confidence, "a number in (0, 1), e.g. 0.95")
    w = np.ones_like(a) if weights is None else _values("weights", weights)
    if w.shape != a.shape or np.any(w < 0) or not w.sum() > 0:
        raise ConfigError("weights", weights, f"{a.size} numbers >= 0 with a positive sum, one per item")
    return w


def weighted_mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """The mean of ``values`` (weighted: ``sum(w * x) / sum(w)``).

    >>> weighted_mean([1.0, 0.5], [1, 3])
    0.625
    """
    x = _values("values", values)
    w = np.ones_like(x) if weights is None else _values("weights", weights)
    return float((w * x).sum() / w.sum())


def _draws(n: int, resamples: int, rng: np.random.Generator, chunk: int) -> list[np.ndarray]:
    """Resampled item indices, ``chunk`` resamples at a time (bounded memory)."""
    out, left = [], resamples
    while left:
        size = min(chunk, left)
        out.append(rng.integers(0, n, size=(size, n)))
        left -= size
    return out


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Difference:
    """The difference ``mean(a) - mean(b)`` over the same items, with a percentile bootstrap interval.

    Args:
        a, b: each item's value under the two methods (0/1 for accuracy, bits per byte of a
            window...), in the same item order.
        weights: each item's weight (bytes of a window for bits per byte); None: equal.
        resamples: bootstrap resamples (seeded: the same inputs give the same interval).
        confidence: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
        seed: the generator's seed.

    >>> d = paired_bootstrap([0.9, 1.0, 1.1], [1.0, 1.0, 1.0], weights=[10, 10, 10], seed=1)
    >>> round(d.difference, 12), d.low <= d.difference <= d.high
    (0.0, True)
    """
    x, y = _values("a", a), _values("b", b)
    w = _check(x, y, weights, confidence, resamples)
    diff = float((w * x).sum() / w.sum() - (w * y).sum() / w.sum())
    rng = np.random.default_rng(seed)
    stats = []
    for idx in _draws(x.size, resamples, rng, max(1, 2_000_000 // x.size)):
        ww = w[idx]
        total = ww.sum(axis=1)
        total[total == 0] = 1.0  # a resample of only zero-weight items: difference 0
        stats.append(((ww * x[idx]).sum(axis=1) - (ww * y[idx]).sum(axis=1)) / total)
    dist = np.concatenate(stats)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(dist, [tail, 100 - tail])
    return Difference(diff, float(low), float(high), float(confidence), resamples, seed)


def stratified_bootstrap(
    pairs: Sequence[tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Difference:
    """The mean over tasks of ``mean(a) - mean(b)``, items resampled within each task.

    ``pairs`` holds one ``(a, b, weights)`` per task (see :func:`paired_bootstrap`).

    >>> d = stratified_bootstrap([([1, 1], [0, 0], None), ([0, 1], [0, 1], None)], resamples=500)
    >>> d.difference, d.low, d.high
    (0.5, 0.5, 0.5)
    """
    if not pairs:
        raise ConfigError("pairs", [], "at least one task's (a, b, weights)")
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    diff = 0.0
    for a, b, weights in pairs:
        x, y = _values("a", a), _values("b", b)
        w = _check(x, y, weights, confidence, resamples)
        diff += float((w * x).sum() / w.sum() - (w * y).sum() / w.sum())
        parts = []
        for idx in _draws(x.size, resamples, rng, max(1, 2_000_000 // x.size)):
            ww = w[idx]
            s = ww.sum(axis=1)
            s[s == 0] = 1.0
            parts.append(((ww * x[idx]).sum(axis=1) - (ww * y[idx]).sum(axis=1)) / s)
        total += np.concatenate(parts)
    total /= len(pairs)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(total, [tail, 100 - tail])
    return Difference(diff / len(pairs), float(low), float(high), float(confidence), resamples, seed)


def mcnemar_exact(a: Sequence[int | bool], b: Sequence[int | bool]) -> McNemar:
    """McNemar's exact test of two methods' right/wrong answers on the same items.

    Only discordant items count: ``only_a`` (a right, b wrong) and ``only_b``. Under the
    null hypothesis each discordant item is a fair coin, so the two-sided p-value is
    ``min(1, 2 * P(X <= min(only_a, only_b)))`` for X ~ Binomial(only_a + only_b, 1/2),
    computed exactly (1.0 when no item is discordant).

    >>> mcnemar_exact([1, 0, 1, 0, 1, 1], [0, 1, 0, 0, 0, 1])
    McNemar(only_a=3, only_b=1, p_value=0.625)
    """
    if len(a) != len(b) or not len(a):
        raise ConfigError("b", f"<{len(b)} answers>", f"{len(a)} right/wrong answers, one per item of a")
    for name, values in (("a", a), ("b", b)):
        if any(v not in (0, 1) for v in values):
            raise ConfigError(name, list(values)[:8], "right/wrong answers as 0/1 or booleans")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return McNemar(0, 0, 1.0)
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return McNemar(only_a, only_b, min(1.0, 2 * tail / 2**n))
