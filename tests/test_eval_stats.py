"""The suite's statistics: McNemar's exact test on hand-computable cases, the paired bootstrap's interval."""

from __future__ import annotations

import doctest
import math
import random

import pytest

from packllm_integrations.errors import ConfigError
from packllm_integrations.eval import stats
from packllm_integrations.eval.stats import mcnemar_exact, paired_bootstrap, stratified_bootstrap, weighted_mean


def _answers(only_a: int, only_b: int, both: int = 3, neither: int = 2) -> tuple[list[int], list[int]]:
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return a, b


@pytest.mark.parametrize(
    ("only_a", "only_b", "p"),
    [
        (0, 5, 2 * 1 / 32),  # n=5: P(X<=0) = 1/32
        (1, 4, 2 * (1 + 5) / 32),  # P(X<=1) = (C(5,0)+C(5,1))/32
        (3, 1, 2 * (1 + 4) / 16),  # n=4: P(X<=1) = 5/16
        (2, 2, 1.0),  # 2 * 11/16 > 1: capped
        (10, 0, 2 / 1024),
        (0, 0, 1.0),  # no discordant item
    ],
)
def test_mcnemar_exact_matches_hand_computed_binomial_tails(only_a, only_b, p):
    a, b = _answers(only_a, only_b)
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (only_a, only_b)
    assert result.p_value == pytest.approx(p, rel=1e-12)
    swapped = mcnemar_exact(b, a)
    assert (swapped.only_a, swapped.only_b, swapped.p_value) == (only_b, only_a, result.p_value)


def test_mcnemar_exact_agrees_with_scipy_on_large_counts():
    scipy_stats = pytest.importorskip("scipy.stats")
    for only_a, only_b in ((40, 61), (300, 250), (7, 19)):
        a, b = _answers(only_a, only_b)
        expected = scipy_stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert mcnemar_exact(a, b).p_value == pytest.approx(expected, rel=1e-9)


def test_mcnemar_exact_rejects_bad_input():
    with pytest.raises(ConfigError, match="^b="):
        mcnemar_exact([1, 0], [1])
    with pytest.raises(ConfigError, match="^a="):
        mcnemar_exact([1, 2], [1, 0])


def test_bootstrap_of_a_constant_shift_is_that_shift():
    rng = random.Random(1)
    b = [rng.random() for _ in range(50)]
    a = [x + 0.25 for x in b]
    d = paired_bootstrap(a, b, resamples=500, seed=3)
    assert d.difference == pytest.approx(0.25)
    assert d.low == pytest.approx(0.25) and d.high == pytest.approx(0.25)
    assert d.significant


def test_bootstrap_is_seeded_and_pairs_items():
    rng = random.Random(2)
    a = [float(rng.random() < 0.6) for _ in range(300)]
    b = [float(rng.random() < 0.5) for _ in range(300)]
    first = paired_bootstrap(a, b, resamples=2000, seed=7)
    assert paired_bootstrap(a, b, resamples=2000, seed=7) == first
    assert paired_bootstrap(a, b, resamples=2000, seed=8) != first
    assert first.low < first.difference < first.high
    # Percentile interval close to the normal approximation of a paired mean difference.
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = 1.96 * sd / math.sqrt(len(diffs))
    assert (first.high - first.low) / 2 == pytest.approx(half, rel=0.15)
    assert first.difference == pytest.approx(mean)


def test_bootstrap_finds_a_clear_difference_and_not_a_null_one():
    a = [1.0] * 80 + [0.0] * 20
    b = [1.0] * 50 + [0.0] * 50
    assert paired_bootstrap(a, b, resamples=1000).significant
    rng = random.Random(5)
    noise = [float(rng.random() < 0.5) for _ in range(100)]
    same = paired_bootstrap(noise, list(reversed(noise)), resamples=1000)
    assert same.low <= 0 <= same.high and not same.significant


def test_weighted_bootstrap_is_pooled_bits_per_byte():
    bytes_ = [100, 300, 50]
    bits_a, bits_b = [80.0, 150.0, 60.0], [90.0, 240.0, 40.0]
    a = [x / n for x, n in zip(bits_a, bytes_, strict=True)]
    b = [x / n for x, n in zip(bits_b, bytes_, strict=True)]
    d = paired_bootstrap(a, b, bytes_, resamples=500)
    assert d.difference == pytest.approx(sum(bits_a) / sum(bytes_) - sum(bits_b) / sum(bytes_))
    assert weighted_mean(a, bytes_) == pytest.approx(sum(bits_a) / sum(bytes_))


def test_stratified_bootstrap_averages_task_differences():
    t1 = ([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], None)
    t2 = ([0.5, 0.7], [0.5, 0.9], [1.0, 3.0])
    d = stratified_bootstrap([t1, t2], resamples=1000, seed=1)
    expected = ((3 / 4 - 2 / 4) + ((0.5 + 2.1) / 4 - (0.5 + 2.7) / 4)) / 2
    assert d.difference == pytest.approx(expected)
    assert d.low <= d.difference <= d.high


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"a": [1.0, 2.0], "b": [1.0]}, "b"),
        ({"a": [], "b": []}, "a"),
        ({"a": [1.0, float("nan")], "b": [1.0, 1.0]}, "a"),
        ({"a": [1.0], "b": [1.0], "resamples": 10}, "resamples"),
        ({"a": [1.0], "b": [1.0], "confidence": 1.5}, "confidence"),
        ({"a": [1.0, 2.0], "b": [1.0, 2.0], "weights": [1.0, -1.0]}, "weights"),
    ],
)
def test_bootstrap_rejects_bad_input_naming_the_parameter(kwargs, parameter):
    with pytest.raises(ConfigError) as err:
        paired_bootstrap(**kwargs)
    assert err.value.parameter == parameter


def test_docstring_examples():
    outcome = doctest.testmod(stats)
    assert outcome.attempted > 0 and outcome.failed == 0
