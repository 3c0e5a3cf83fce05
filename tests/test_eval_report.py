"""Tables (text, Markdown, CSV) and plots (PNG) of evaluation results."""

from __future__ import annotations

import csv
import io
from dataclasses import replace

import pytest
from PIL import Image

from packllm_integrations.errors import ConfigError
from packllm_integrations.eval import EvalReport, TaskResult, plot_scores, plot_weights, render_table, render_weights
from packllm_integrations.eval.report import score_rows, write_outputs

MEMBERS = ["general", "coder"]
METHODS = [{"name": n, "kind": "member", "weighting": None} for n in MEMBERS]
METHODS += [{"name": n, "kind": "fused", "weighting": n} for n in ("uniform", "sim", "opt")]


def _result(task: str, metric: str, scores: dict[str, float], weights: list[float], refs: list[str]) -> TaskResult:
    rows = [{"general": w, "coder": 1 - w} for w in weights]
    return TaskResult(
        task=task,
        kind="multiple_choice" if metric == "accuracy" else "bits_per_byte",
        metric=metric,
        higher_is_better=metric == "accuracy",
        items=len(weights),
        pairs=len(weights) * 2,
        scores=scores,
        weights={"uniform": [{"general": 0.5, "coder": 0.5}] * len(weights), "sim": rows, "opt": rows},
        references=refs,
    )


@pytest.fixture
def report() -> EvalReport:
    tasks = [
        _result(
            "quiz",
            "accuracy",
            {"general": 0.50, "coder": 0.40, "uniform": 0.45, "sim": 0.55, "opt": 0.55},
            [0.8, 0.6],
            ["general", "general"],
        ),
        _result(
            "code-quiz",
            "accuracy",
            {"general": 0.30, "coder": 0.60, "uniform": 0.50, "sim": 0.58, "opt": 0.62},
            [0.1, 0.3],
            ["coder", "general"],
        ),
        _result(
            "prose",
            "bits_per_byte",
            {"general": 1.10, "coder": 1.40, "uniform": 1.15, "sim": 1.08, "opt": 1.09},
            [0.7, 0.9],
            ["general", "general"],
        ),
    ]
    return EvalReport(MEMBERS, METHODS, tasks)


def test_rows_mark_the_best_and_average_shared_metrics(report):
    rows = {r.task: r for r in score_rows(report)}
    assert rows["quiz"].best == ["sim", "opt"]  # a tie: both marked
    assert rows["code-quiz"].best == ["opt"]
    assert rows["prose"].best == ["sim"]  # lower is better
    mean = rows["mean (2 tasks)"]
    assert mean.metric == "accuracy" and mean.items == 4
    assert mean.scores["opt"] == pytest.approx((0.55 + 0.62) / 2) and mean.best == ["opt"]
    assert not any(r.task.startswith("mean") and r.metric == "bits_per_byte" for r in score_rows(report))


def test_a_pooled_row_is_left_out_of_its_metrics_mean(report):
    code = _result("code", "bits_per_byte", {m: 0.5 for m in report.method_names}, [0.2, 0.4], ["coder", "coder"])
    pooled = _result("prose+code", "bits_per_byte", {m: 0.9 for m in report.method_names}, [0.7, 0.9, 0.2, 0.4], [])
    pooled = replace(pooled, settings={"pooled_from": ["prose", "code"]})
    rows = {r.task: r for r in score_rows(EvalReport(MEMBERS, METHODS, [*report.tasks, code, pooled]))}
    assert "prose+code" in rows  # shown as its own row
    mean = next(r for r in rows.values() if r.task.startswith("mean") and r.metric == "bits_per_byte")
    assert mean.task == "mean (2 tasks)" and mean.items == 4  # prose and code only
    assert mean.scores["sim"] == pytest.approx((1.08 + 0.5) / 2)


def test_csv_holds_every_score(report):
    rows = list(csv.DictReader(io.StringIO(render_table(report, "csv"))))
    assert [r["task"] for r in rows] == ["quiz", "code-quiz", "prose", "mean (2 tasks)"]
    for row, task in zip(rows, report.tasks, strict=False):
        for method, value in task.scores.items():
            assert float(row[method]) == pytest.approx(value)


def test_markdown_and_text_tables(report):
    md = render_table(report, "markdown").splitlines()
    assert md[0] == "| task | metric | n | general | coder | uniform | sim | opt |"
    assert md[1].startswith("|---|---|---|---:|")
    assert md[3] == "| code-quiz | accuracy | 2 | 0.300 | 0.600 | 0.500 | 0.580 | **0.620** |"
    text = render_table(report, "text").splitlines()
    assert text[0].split() == ["task", "metric", "n", "general", "coder", "uniform", "sim", "opt"]
    assert text[3].split()[-1] == "1.0900" and "1.0800*" in text[3]
    with pytest.raises(ConfigError, match="format"):
        render_table(report, "html")


def test_weights_table(report):
    rows = list(csv.reader(io.StringIO(render_weights(report, "csv"))))
    assert rows[0] == ["task", "method", "general", "coder", "reference (share of items)"]
    quiz_sim = next(r for r in rows if r[:2] == ["quiz", "sim"])
    assert float(quiz_sim[2]) == pytest.approx(0.7) and float(quiz_sim[3]) == pytest.approx(0.3)
    assert quiz_sim[4] == "general 100%"
    code_opt = next(r for r in rows if r[:2] == ["code-quiz", "opt"])
    assert float(code_opt[3]) == pytest.approx(0.8) and code_opt[4] == "general 50%, coder 50%"
    assert "| prose | opt | 0.800 | 0.200 | general 100% |" in render_weights(report, "markdown")


def test_plots_are_png_images(tmp_path, report):
    for path in (plot_scores(report, tmp_path / "s.png", title="t"), plot_weights(report, tmp_path / "w.png")):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
    with pytest.raises(ConfigError, match="weightings present"):
        plot_weights(report, tmp_path / "x.png", methods=("top1",))


def test_write_outputs(tmp_path, report):
    paths = write_outputs(report, tmp_path / "out", prefix="run")
    assert sorted(p.name for p in paths) == ["run.csv", "run.json", "run.md", "run_scores.png", "run_weights.png"]
    assert EvalReport.load(tmp_path / "out" / "run.json").to_dict() == report.to_dict()
    md = (tmp_path / "out" / "run.md").read_text()
    assert "## Scores" in md and "## Mean weights" in md
