"""Every method against the best member alone: paired intervals, McNemar's test and cost, per task and on the mean.

Example:
    >>> from packllm_integrations.eval import EvalReport
    >>> report = EvalReport.load("benchmarks/results/suite-default/suite.json")  # doctest: +SKIP
    >>> [(c.task, c.method, c.verdict) for c in compare(report)]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .results import EvalReport, TaskResult
from .stats import Difference, McNemar, mcnemar_exact, paired_bootstrap, stratified_bootstrap

__all__ = ["Comparison", "item_values", "best_member", "compare", "compare_means"]


def item_values(result: TaskResult, method: str) -> tuple[list[float], list[float] | None]:
    """Each item's value under ``method`` and the items' weights (None: equal).

    Multiple choice: 1.0 for a right answer, else 0.0; bits per byte: each window's bits per
    byte, weighted by its bytes; run tasks: the value each item scored.
    """
    if method not in result.per_item:
        raise ConfigError("method", method, f"a method of task {result.task!r} ({', '.join(result.per_item)})")
    values = result.per_item[method]
    if result.kind == "multiple_choice":
        return [1.0 if p == a else 0.0 for p, a in zip(values, result.answers, strict=True)], None
    weights = [float(w) for w in result.item_weights] if result.item_weights else None
    return [float(v) for v in values], weights


@dataclass(frozen=True)
class Comparison:
    """One method against a baseline (the best member alone) on one task's items."""

    task: str
    metric: str
    higher_is_better: bool
    method: str
    baseline: str
    score: float
    baseline_score: float
    difference: Difference
    """``score - baseline_score``, with its bootstrap interval."""
    mcnemar: McNemar | None
    """For right/wrong items: ``only_a`` items the method alone got right, ``only_b`` the baseline alone."""
    seconds: float | None
    cost: float | None
    """The method's wall time over the baseline's on this task."""

    @property
    def verdict(self) -> str:
        """``"better"``, ``"worse"`` or ``"no significant difference"`` (by the interval)."""
        if not self.difference.significant:
            return "no significant difference"
        up = self.difference.low > 0
        return "better" if up == self.higher_is_better else "worse"

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "method": self.method,
            "baseline": self.baseline,
            "score": self.score,
            "baseline_score": self.baseline_score,
            "difference": self.difference.to_dict(),
            "mcnemar": self.mcnemar.to_dict() if self.mcnemar else None,
            "seconds": self.seconds,
            "cost": self.cost,
            "verdict": self.verdict,
        }


def _member_names(report: EvalReport) -> list[str]:
    return [m["name"] for m in report.methods if m.get("kind") == "member"]


def best_member(result: TaskResult, members: Sequence[str]) -> str | None:
    """The member alone with the best score on ``result`` (ties: the first), None without members."""
    present = [m for m in members if m in result.scores]
    if not present:
        return None
    sign = -1.0 if result.higher_is_better else 1.0
    return min(present, key=lambda m: sign * result.scores[m])


def _binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def compare(
    report: EvalReport,
    *,
    baseline: str | None = None,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Comparison]:
    """Every method against the baseline on every task: a paired bootstrap interval of the
    difference (seeded) and McNemar's exact test where items are right or wrong.

    ``baseline`` names a method; default: per task, the best member alone on that task.
    """
    if baseline is not None and baseline not in report.method_names:
        raise ConfigError("baseline", baseline, f"a method of the report ({', '.join(report.method_names)})")
    members = _member_names(report)
    out: list[Comparison] = []
    for result in report.tasks:
        base = baseline or best_member(result, members)
        if base is None or base not in result.per_item:
            continue
        b, weights = item_values(result, base)
        for method in report.method_names:
            if method == base or method not in result.per_item:
                continue
            a, _ = item_values(result, method)
            diff = paired_bootstrap(a, b, weights, resamples=resamples, confidence=confidence, seed=seed)
            test = mcnemar_exact([int(x) for x in a], [int(y) for y in b]) if _binary(a) and _binary(b) else None
            seconds = result.method_seconds.get(method)
            base_seconds = result.method_seconds.get(base)
            cost = seconds / base_seconds if seconds is not None and base_seconds else None
            out.append(
                Comparison(
                    result.task,
                    result.metric,
                    result.higher_is_better,
                    method,
                    base,
                    result.scores[method],
                    result.scores[base],
                    diff,
                    test,
                    seconds,
                    cost,
                )
            )
    return out


def compare_means(
    report: EvalReport,
    *,
    baseline: str | None = None,
    tasks: Sequence[str] | None = None,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[str | None, list[str], dict[str, tuple[float, Difference]]]:
    """The mean over the tasks where higher is better (accuracy, pass@1, exact match...):
    every method that ran them all against ``baseline`` (default: the member alone with the
    best such mean), items resampled within each task
    (:func:`~packllm_integrations.eval.stats.stratified_bootstrap`). ``tasks`` keeps only the
    tasks named (default: every task where higher is better).

    Returns the baseline, the tasks averaged, and method -> (mean, difference).
    """
    tasks = [t for t in report.tasks if t.higher_is_better and (tasks is None or t.task in tasks)]
    if not tasks:
        return None, [], {}
    methods = [m for m in report.method_names if all(m in t.per_item for t in tasks)]
    means = {m: sum(t.scores[m] for t in tasks) / len(tasks) for m in methods}
    members = [m for m in _member_names(report) if m in means]
    if baseline is not None:
        if baseline not in means:
            return None, [t.task for t in tasks], {}
        base = baseline
    elif not members:
        return None, [t.task for t in tasks], {}
    else:
        base = max(members, key=lambda m: (means[m], -members.index(m)))
    out = {}
    for m in methods:
        pairs = []
        for t in tasks:
            a, w = item_values(t, m)
            b, _ = item_values(t, base)
            pairs.append((a, b, w))
        out[m] = (means[m], stratified_bootstrap(pairs, resamples=resamples, confidence=confidence, seed=seed))
    return base, [t.task for t in tasks], out
