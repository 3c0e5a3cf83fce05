"""The suite's report: every method and every member side by side, with confidence intervals and cost.

:func:`render_suite` writes Markdown: the scores table (a row per task, the pooled
prose+code row among them), then per task each method against the best member alone
(difference with its 95% bootstrap interval, McNemar's exact p-value for right/wrong
items, items won and lost, wall time and cost relative to the best member), then the mean
over the higher-is-better tasks, then (``against``) every pack method against a named
one. :func:`plot_differences` draws the differences with their intervals;
:func:`write_suite` writes everything.

Example:
    >>> from packllm_integrations.eval import EvalReport
    >>> report = EvalReport.load("benchmarks/results/suite-default/suite.json")  # doctest: +SKIP
    >>> print(render_suite(report))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .report import _PALETTE, _figure, _save, render_table, render_weights
from .results import EvalReport
from .stats import Difference
from .suite import Comparison, compare, compare_means

__all__ = ["render_suite", "plot_differences", "write_suite"]


def _num(value: float, metric: str, signed: bool = False) -> str:
    digits = 4 if metric == "bits_per_byte" else 3
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _verdict(d: Difference) -> str:
    """A higher-is-better difference's verdict."""
    return "no significant difference" if not d.significant else "better" if d.low > 0 else "worse"


def render_suite(
    report: EvalReport,
    comparisons: list[Comparison] | None = None,
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    against: Sequence[str] = (),
) -> str:
    """The whole report as Markdown (comparisons computed here unless given).

    Each method of ``against`` gets a section of its own: every pack method against it. The
    report ends with each member's mean weight per task under the pack methods whose weights
    vary per prompt (:func:`~.report.render_weights`).
    """
    members = set(report.members)
    for other in against:
        if other not in report.method_names:
            raise ConfigError("against", other, f"a method of the report ({', '.join(report.method_names)})")
    comparisons = (
        compare(report, resamples=resamples, confidence=confidence, seed=seed) if comparisons is None else comparisons
    )
    level = f"{confidence:.0%}"
    lines = [f"# Evaluation suite: {' + '.join(report.members)}", ""]
    configs = report.settings.get("configs", {})
    if configs:
        lines += ["Pack methods (the settings each was given; the others are GenerationConfig's defaults):", ""]
        for name, settings in configs.items():
            shown = ", ".join(f"`{k}={v}`" for k, v in settings.items()) or "the defaults"
            lines.append(f"- `{name}`: {shown}")
        lines.append("")
    lines += ["## Scores", "", render_table(report, "markdown")]
    lines += [
        f"## Against the best member alone ({level} paired bootstrap, {resamples:,} resamples, seed {seed})",
        "",
        "Difference = method minus the task's best member alone on the same items (bits per byte: lower is "
        "better). McNemar: exact two-sided p-value on the items exactly one of the two got right; won / lost: "
        "those items. Cost: the method's wall time over the best member's on the task.",
        "",
        "| task | metric | n | best member | method | score | difference [CI] | verdict | McNemar p "
        "| won / lost | seconds | cost |",
        "|---|---|---:|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    items = {t.task: t.items for t in report.tasks}
    for c in comparisons:
        d = c.difference
        ci = f"{_num(d.difference, c.metric, True)} [{_num(d.low, c.metric, True)}, {_num(d.high, c.metric, True)}]"
        test = c.mcnemar
        lines.append(
            f"| {c.task} | {c.metric} | {items[c.task]} | {c.baseline} ({_num(c.baseline_score, c.metric)}) "
            f"| {c.method} | {_num(c.score, c.metric)} | {ci} | {c.verdict} "
            f"| {_p(test.p_value) if test else '-'} | {f'{test.only_a} / {test.only_b}' if test else '-'} "
            f"| {_seconds(c.seconds)} | {'-' if c.cost is None else f'{c.cost:.2f}x'} |"
        )
    for subset in _task_sets(report):
        base, tasks, means = compare_means(report, tasks=subset, resamples=resamples, confidence=confidence, seed=seed)
        if base is None or not means:
            continue
        lines += [
            "",
            f"## Mean over {len(tasks)} tasks where higher is better ({', '.join(tasks)})",
            "",
            f"Against `{base}`, the member alone with the best mean; items resampled within each task.",
            "",
            f"| method | mean | difference [{level} CI] | verdict |",
            "|---|---:|---|---|",
        ]
        for method, (mean, d) in means.items():
            if method == base:
                lines.append(f"| {method} | {mean:.3f} | (baseline) | |")
                continue
            lines.append(
                f"| {method} | {mean:.3f} | {d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | {_verdict(d)} |"
            )
    for other in against:
        lines += ["", f"## Against `{other}` ({level} paired bootstrap, {resamples:,} resamples, seed {seed})", ""]
        lines += ["| task | method | score | difference [CI] | verdict | McNemar p | won / lost |"]
        lines += ["|---|---|---:|---|---|---:|---:|"]
        for c in compare(report, baseline=other, resamples=resamples, confidence=confidence, seed=seed):
            if c.method in members:
                continue
            d, test = c.difference, c.mcnemar
            lines.append(
                f"| {c.task} | {c.method} | {_num(c.score, c.metric)} | {_num(d.difference, c.metric, True)} "
                f"[{_num(d.low, c.metric, True)}, {_num(d.high, c.metric, True)}] | {c.verdict} "
                f"| {_p(test.p_value) if test else '-'} | {f'{test.only_a} / {test.only_b}' if test else '-'} |"
            )
        ran = {t.task for t in report.tasks if t.higher_is_better and other in t.per_item}
        shown = set(members) | {other}
        for subset in _task_sets(report):  # each method on the tasks it shares with `other`
            _, tasks, means = compare_means(
                report,
                baseline=other,
                tasks=[t for t in subset if t in ran],
                resamples=resamples,
                confidence=confidence,
                seed=seed,
            )
            for method, (mean, d) in means.items() if len(tasks) > 1 else ():
                if method not in shown:
                    shown.add(method)
                    lines.append(
                        f"| mean ({', '.join(tasks)}) | {method} | {mean:.3f} | {d.difference:+.3f} "
                        f"[{d.low:+.3f}, {d.high:+.3f}] | {_verdict(d)} | - | - |"
                    )
    weights = render_weights(report, "markdown")
    if weights.count("\n") > 2:  # a header and its rule, then at least one row
        lines += [
            "",
            "## Mean weights",
            "",
            "Each member's mean fusion weight over the task's items, for the pack methods whose weights vary "
            "per prompt (generation tasks: the weights each prompt was decoded with).",
            "",
            weights.rstrip("\n"),
        ]
    seconds = report.settings.get("seconds")
    if seconds is not None:
        lines += ["", f"Whole run: {seconds:,.0f} s wall time."]
    commands = report.settings.get("commands") or [report.settings.get("command")]
    if any(commands):
        lines += ["", "Command" + ("s:" if len(commands) > 1 else ":"), ""] + [f"    {c}" for c in commands if c]
    return "\n".join(lines) + "\n"


def _task_sets(report: EvalReport) -> list[list[str]]:
    """The sets of tasks (where higher is better, two or more) that the report's methods ran:
    one mean section each, the largest first. A method that did not run a task (one added to a
    merged report later, a scoring-only method) is still compared on the tasks it shares."""
    tasks = [t for t in report.tasks if t.higher_is_better]
    sets: list[list[str]] = []
    for method in report.method_names:
        ran = [t.task for t in tasks if method in t.per_item]
        if len(ran) > 1 and ran not in sets:
            sets.append(ran)
    return sorted(sets, key=len, reverse=True)


def plot_differences(report: EvalReport, comparisons: list[Comparison], path: str | Path) -> Path:
    """One panel per task: each method's difference to the best member alone, with its interval."""
    tasks = [t.task for t in report.tasks if any(c.task == t.task for c in comparisons)]
    cols = min(4, max(1, len(tasks)))
    rows = (len(tasks) + cols - 1) // cols
    methods = report.method_names
    fig, axes = _figure(rows, cols, 3.6 * cols, 0.35 * len(methods) * rows + 1.6 * rows)
    for i, ax in enumerate(axes.flat):
        if i >= len(tasks):
            ax.set_visible(False)
            continue
        mine = [c for c in comparisons if c.task == tasks[i]]
        for y, c in enumerate(mine):
            d = c.difference
            color = _PALETTE[methods.index(c.method) % len(_PALETTE)]
            ax.errorbar(
                d.difference, y, xerr=[[d.difference - d.low], [d.high - d.difference]], fmt="o", color=color, capsize=3
            )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(mine)), [c.method for c in mine], fontsize=8)
        ax.invert_yaxis()
        higher = mine[0].higher_is_better if mine else True
        ax.set_title(f"{tasks[i]} (against {mine[0].baseline})" if mine else tasks[i], fontsize=9)
        ax.set_xlabel(
            f"{mine[0].metric if mine else ''} difference ({'higher' if higher else 'lower'} is better)", fontsize=8
        )
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def write_suite(
    report: EvalReport,
    folder: str | Path,
    prefix: str = "suite",
    *,
    plots: bool = True,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    against: Sequence[str] = (),
) -> list[Path]:
    """Write ``{prefix}.json`` (the report and its comparisons), ``{prefix}.md`` and, with
    ``plots``, ``{prefix}_scores.png`` and ``{prefix}_differences.png``."""
    from .report import plot_scores

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    comparisons = compare(report, resamples=resamples, confidence=confidence, seed=seed)
    data: dict[str, Any] = report.to_dict()
    data["comparisons"] = [c.to_dict() for c in comparisons]
    path = folder / f"{prefix}.json"
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = folder / f"{prefix}.md"
    md.write_text(
        render_suite(report, comparisons, resamples=resamples, confidence=confidence, seed=seed, against=against),
        encoding="utf-8",
    )
    written = [path, md]
    if plots:
        written.append(plot_scores(report, folder / f"{prefix}_scores.png"))
        if comparisons:
            written.append(plot_differences(report, comparisons, folder / f"{prefix}_differences.png"))
    return written
