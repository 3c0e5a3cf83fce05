"""``packllm eval`` and ``packllm eval-report`` end to end, on tiny models saved as model folders."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from packllm_integrations.cli import main
from packllm_integrations.eval import EvalReport

DATA = Path(__file__).parent / "data"


@pytest.fixture
def folders(tiny_pack_folders: list[str]) -> list[str]:
    return tiny_pack_folders


def _models(folders: list[str]) -> list[str]:
    return [arg for f in folders for arg in ("--model", f)]


def test_eval_prints_and_writes_tables_and_plots(folders, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", str(DATA / "eval_mc.jsonl"), str(DATA / "eval_text.jsonl"), *_models(folders)]
    argv += ["--fixed", "1,3", "--window-chars", "150", "--context-chars", "80", "--quiet", "--format", "csv"]
    assert main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(printed.split("\n\n")[0])))
    report = EvalReport.load(out / "eval.json")
    assert report.members == ["tiny-a", "tiny-b"]
    assert report.method_names == ["tiny-a", "tiny-b", "uniform", "top1", "sim", "opt", "fixed"]
    assert [r["task"] for r in rows] == ["eval_mc", "eval_text"]
    for row, task in zip(rows, report.tasks, strict=True):
        assert {m: round(float(row[m]), 6) for m in report.method_names} == {
            m: round(v, 6) for m, v in task.scores.items()
        }
    assert report.task("eval_mc").weights["fixed"][0] == pytest.approx({"tiny-a": 0.25, "tiny-b": 0.75})
    assert report.settings["arguments"]["fixed"] == "1,3"
    assert {p.name for p in out.iterdir()} == {
        "eval.json",
        "eval.md",
        "eval.csv",
        "eval_scores.png",
        "eval_weights.png",
    }


def test_eval_with_fewshot_limit_and_reference(folders, tmp_path):
    out = tmp_path / "run"
    argv = ["eval", str(DATA / "eval_mc.jsonl"), *_models(folders), "--methods", "sim,opt", "--members", "none"]
    argv += ["--fewshot", "2", "--limit", "4", "--reference", "tiny-b", "--quiet", "--no-plots", "--output", str(out)]
    assert main(argv) == 0
    result = EvalReport.load(out / "eval.json").tasks[0]
    assert result.items == 4 and set(result.scores) == {"sim", "opt"}
    assert set(result.references) == {"tiny-b"} and result.settings["fewshot"] == 2
    assert not (out / "eval_scores.png").exists()


def test_eval_report_merges_runs(folders, tmp_path, capsys):
    for task in ("eval_mc", "eval_text"):
        argv = ["eval", str(DATA / f"{task}.jsonl"), *_models(folders), "--quiet", "--no-plots"]
        argv += ["--window-chars", "150", "--context-chars", "80", "--output", str(tmp_path / task)]
        assert main(argv) == 0
    capsys.readouterr()
    merged = tmp_path / "merged"
    files = [str(tmp_path / t / "eval.json") for t in ("eval_mc", "eval_text")]
    assert main(["eval-report", *files, "--format", "markdown", "--output", str(merged), "--prefix", "all"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| task | metric | n | tiny-a | tiny-b | uniform | top1 | sim | opt |")
    assert [t.task for t in EvalReport.load(merged / "all.json").tasks] == ["eval_mc", "eval_text"]
    assert (merged / "all_scores.png").is_file() and (merged / "all_weights.png").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["nothing-like-a-task"], "task='nothing-like-a-task' is invalid"),
        (["missing.jsonl"], "missing.jsonl: 'missing.jsonl' is invalid: expected an existing JSONL task file"),
        ([str(DATA / "eval_mc.jsonl"), "--fixed", "1,x"], "fixed='1,x' is invalid"),
        ([str(DATA / "eval_mc.jsonl"), "--tau", "-1"], "tau=-1.0 is invalid"),
        ([str(DATA / "eval_mc.jsonl"), "--fewshot", "9"], "eval_mc.jsonl, field 'split'"),
    ],
)
def test_bad_settings_fail_before_any_model_loads(args, needle, capsys):
    # No --model: a model load would reach for the default pack; every case fails before that.
    assert main(["eval", *args, "--quiet"]) == 2
    assert needle in capsys.readouterr().err


def test_bad_task_file_names_file_line_and_field(tmp_path, capsys):
    path = tmp_path / "quiz.jsonl"
    good = {"question": "q?", "choices": ["a", "b"], "answer": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": "Z"}) + "\n", encoding="utf-8")
    assert main(["eval", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"packllm: error: {path}, line 2, field 'answer': 'Z' is invalid" in err


def test_eval_report_rejects_a_missing_file(tmp_path, capsys):
    assert main(["eval-report", str(tmp_path / "none.json")]) == 2
    assert "results=" in capsys.readouterr().err
