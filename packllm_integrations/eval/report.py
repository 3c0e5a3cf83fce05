"""Results as tables (terminal text, Markdown, CSV) and plots (PNG, matplotlib).

Example:
    >>> from packllm_integrations.eval import EvalReport, render_table
    >>> report = EvalReport.load("results.json")  # doctest: +SKIP
    >>> print(render_table(report, "markdown"))  # doctest: +SKIP
    >>> plot_scores(report, "docs/eval_scores.png"); plot_weights(report, "docs/eval_weights.png")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .errors import MissingDependencyError
from .results import EvalReport, TaskResult

__all__ = [
    "FORMATS",
    "ScoreRow",
    "score_rows",
    "render_table",
    "render_weights",
    "plot_scores",
    "plot_weights",
    "write_outputs",
]

FORMATS = ("text", "markdown", "csv")

_METRIC_LABEL = {"accuracy": "accuracy (higher is better)", "bits_per_byte": "bits per byte (lower is better)"}


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if metric == "accuracy" else f"{value:.4f}"


@dataclass(frozen=True)
class ScoreRow:
    """One row of the scores table: a task (or a mean over tasks sharing a metric)."""

    task: str
    metric: str
    items: int
    scores: dict[str, float | None]
    """Method -> value (None: the method did not run on this task)."""
    best: list[str]
    """The best methods (several on a tie)."""


def score_rows(report: EvalReport) -> list[ScoreRow]:
    """One row per task, plus a mean row per metric shared by two or more tasks.

    A row pooled from other tasks' items (the suite's ``prose+code``, whose settings name
    ``pooled_from``) is shown but left out of the mean: its windows are already there."""
    methods = report.method_names
    rows: list[ScoreRow] = []
    by_metric: dict[str, list[TaskResult]] = {}
    for t in report.tasks:
        if not t.settings.get("pooled_from"):
            by_metric.setdefault(t.metric, []).append(t)
        rows.append(_row(t.task, t.metric, t.items, {m: t.scores.get(m) for m in methods}, t.higher_is_better))
    for metric, tasks in by_metric.items():
        if len(tasks) < 2:
            continue
        means: dict[str, float | None] = {}
        for m in methods:
            values = [t.scores[m] for t in tasks if m in t.scores]
            means[m] = sum(values) / len(values) if len(values) == len(tasks) else None
        total = sum(t.items for t in tasks)
        rows.append(_row(f"mean ({len(tasks)} tasks)", metric, total, means, tasks[0].higher_is_better))
    return rows


def _row(task: str, metric: str, items: int, scores: dict[str, float | None], higher: bool) -> ScoreRow:
    present = {m: v for m, v in scores.items() if v is not None}
    best: list[str] = []
    if present:
        target = max(present.values()) if higher else min(present.values())
        best = [m for m, v in present.items() if abs(v - target) < 1e-12]
    return ScoreRow(task, metric, items, scores, best)


def render_table(report: EvalReport, fmt: str = "text") -> str:
    """The scores table: a row per task (and per-metric means), a column per method.

    The best value of each row is marked: ``*`` in text, bold in Markdown (CSV: plain).
    """
    if fmt not in FORMATS:
        raise ConfigError("format", fmt, f"one of {', '.join(FORMATS)}")
    methods = report.method_names
    rows = score_rows(report)
    header = ["task", "metric", "n", *methods]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            values = ["" if r.scores[m] is None else f"{r.scores[m]:.6f}" for m in methods]
            writer.writerow([r.task, r.metric, r.items, *values])
        return out.getvalue()
    table = []
    for r in rows:
        cells = []
        for m in methods:
            text = _fmt(r.scores[m], r.metric)
            if m in r.best:
                text = f"**{text}**" if fmt == "markdown" else f"{text}*"
            cells.append(text)
        table.append([r.task, r.metric, str(r.items), *cells])
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(methods)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(lines) + "\n"
    return _aligned([header, *table], left=3) + "* best in the row\n"


def _aligned(rows: list[list[str]], left: int) -> str:
    """Rows as columns padded to width: the first ``left`` columns flush left, the rest right."""
    widths = [max(len(x) for x in col) for col in zip(*rows, strict=True)]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _varying(report: EvalReport, weightings: Sequence[str]) -> list[str]:
    """The report's pack methods whose weights vary per prompt (``sim[own]`` included), in column order."""
    return [m["name"] for m in report.methods if m.get("kind") == "fused" and m.get("weighting") in weightings]


def render_weights(report: EvalReport, fmt: str = "text") -> str:
    """Each member's mean weight per task under each weighting that varies per prompt
    (``sim``, ``opt``, ``top1``), with how often each member was the reference."""
    if fmt not in FORMATS:
        raise ConfigError("format", fmt, f"one of {', '.join(FORMATS)}")
    members = report.members
    header = ["task", "method", *members, "reference (share of items)"]
    table = []
    for t in report.tasks:
        counts = Counter(t.references)
        refs = ", ".join(f"{n} {counts[n] / max(1, len(t.references)):.0%}" for n in members if counts[n])
        for method in _varying(report, ("sim", "opt", "top1")):
            means = t.mean_weights(method)
            if means:
                table.append([t.task, method, *[f"{means[n]:.3f}" for n in members], refs])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(table)
        return out.getvalue()
    if fmt == "markdown":
        rule = "|" + "|".join(["---"] * 2 + ["---:"] * len(members) + ["---"]) + "|"
        lines = ["| " + " | ".join(header) + " |", rule]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        return "\n".join(lines) + "\n"
    if not table:
        return "(no per-prompt weighting among the methods)\n"
    return _aligned([header, *table], left=2 + len(members) + 1)


def _figure(rows: int, cols: int, width: float, height: float):  # type: ignore[no-untyped-def]
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("plots need matplotlib: pip install 'matplotlib>=3.8'") from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


_PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974"]


def plot_scores(report: EvalReport, path: str | Path, title: str | None = None) -> Path:
    """Grouped bars: each task's metric under each method (one panel per metric)."""
    metrics = [m for m in ("accuracy", "bits_per_byte") if any(t.metric == m for t in report.tasks)]
    metrics += sorted({t.metric for t in report.tasks} - set(metrics))
    methods = report.method_names
    fig, axes = _figure(1, len(metrics), max(6.0, 3.2 * len(metrics) + 0.5 * len(methods)), 4.2)
    for ax, metric in zip(axes[0], metrics, strict=True):
        tasks = [t for t in report.tasks if t.metric == metric]
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(tasks))]
            ys = [t.scores.get(m, float("nan")) for t in tasks]
            member = m in report.members
            ax.bar(xs, ys, width, label=m, color=_PALETTE[j % len(_PALETTE)], hatch="//" if member else None)
        ax.set_xticks(range(len(tasks)), [t.task for t in tasks], rotation=15, ha="right")
        ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
        values = [v for t in tasks for v in t.scores.values()]
        if values and metric == "bits_per_byte":
            ax.set_ylim(min(values) * 0.9, max(values) * 1.03)
        if metric == "accuracy":
            ax.set_ylim(0, min(1.0, max(values) * 1.15) if values else 1.0)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="method (hatched: member alone)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_weights(report: EvalReport, path: str | Path, methods: Sequence[str] | None = None) -> Path:
    """Box plots of each member's fusion weight per task, one panel per weighting.

    Shows where the weights go: toward the member that knows the task's domain, or (with
    MinED alignment) toward the reference member. ``methods`` defaults to every ``sim`` and
    ``opt`` column of the report.
    """
    methods = _varying(report, ("sim", "opt")) if methods is None else list(methods)
    shown = [m for m in methods if any(t.weights.get(m) for t in report.tasks)]
    if not shown:
        raise ConfigError("methods", list(methods), "weightings present in the report (e.g. sim, opt)")
    members = report.members
    tasks = [t for t in report.tasks if any(t.weights.get(m) for m in shown)]
    fig, axes = _figure(1, len(shown), max(6.0, 1.3 * len(tasks) * len(shown) + 1.5), 4.2)
    for ax, method in zip(axes[0], shown, strict=True):
        width = 0.8 / len(members)
        for k, name in enumerate(members):
            data = [[row[name] for row in t.weights.get(method, [])] or [float("nan")] for t in tasks]
            xs = [i + (k - (len(members) - 1) / 2) * width for i in range(len(tasks))]
            parts = ax.boxplot(
                data,
                positions=xs,
                widths=width * 0.85,
                patch_artist=True,
                showfliers=True,
                medianprops={"color": "black"},
            )
            for box in parts["boxes"]:
                box.set_facecolor(_PALETTE[k % len(_PALETTE)])
                box.set_alpha(0.8)
            for flier in parts["fliers"]:
                flier.set(marker=".", markersize=3, alpha=0.5)
            ax.plot([], [], "s", color=_PALETTE[k % len(_PALETTE)], label=name)
        ax.set_xticks(range(len(tasks)), [t.task for t in tasks], rotation=15, ha="right")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(f"{method} weight per prompt")
        ax.set_title(f"{method} weights")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="member")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:  # type: ignore[no-untyped-def]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_outputs(report: EvalReport, folder: str | Path, prefix: str = "eval", plots: bool = True) -> list[Path]:
    """Write ``{prefix}.json``, ``.md`` (both tables), ``.csv`` and, with ``plots``, the two PNGs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [report.save(folder / f"{prefix}.json")]
    md = folder / f"{prefix}.md"
    scores, weights = render_table(report, "markdown"), render_weights(report, "markdown")
    md.write_text(f"## Scores\n\n{scores}\n## Mean weights\n\n{weights}", encoding="utf-8")
    csv_path = folder / f"{prefix}.csv"
    csv_path.write_text(render_table(report, "csv"), encoding="utf-8")
    written += [md, csv_path]
    if plots:
        written.append(plot_scores(report, folder / f"{prefix}_scores.png"))
        if any(t.weights.get(m) for t in report.tasks for m in _varying(report, ("sim", "opt"))):
            written.append(plot_weights(report, folder / f"{prefix}_weights.png"))
    return written
