from __future__ import annotations

import json
from pathlib import Path

import pytest

from packllm_integrations.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json_contract(capsys, tiny_folder: Path, tiny_folder_bl: Path) -> None:
    models = ["--model", f"{tiny_folder},name=sp", "--model", f"{tiny_folder_bl},name=bl", "--quiet"]
    code, out, _ = run(capsys, "generate", *models, "--max-new-tokens", "6", "--json", "The value of")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"text", "finish_reason", "weights", "prompt_perplexity", "reference", "usage"}
    assert set(data["weights"]) == {"sp", "bl"} and sum(data["weights"].values()) == pytest.approx(1.0)
    assert set(data["prompt_perplexity"]) == {"sp", "bl"}
    assert data["reference"] in ("sp", "bl")
    assert data["usage"]["completion_tokens"] == 6 and data["usage"]["prompt_tokens"] > 0
    assert data["finish_reason"] == "length"
    # streaming prints the same text
    code, streamed, _ = run(capsys, "generate", *models, "--max-new-tokens", "6", "--stream", "The value of")
    assert streamed.rstrip("\n") == data["text"]
    code, lines, _ = run(capsys, "generate", *models, "--max-new-tokens", "6", "--stream", "--json", "The value of")
    events = [json.loads(line) for line in lines.splitlines()]
    assert events[0]["event"] == "weights" and events[-1]["event"] == "result"
    assert "".join(e["text"] for e in events if e["event"] == "text") == data["text"]


def test_weights_command_and_fixed_weights(capsys, tiny_folder: Path, tiny_folder_bl: Path) -> None:
    models = ["--model", f"{tiny_folder},name=sp", "--model", f"{tiny_folder_bl},name=bl", "--quiet"]
    code, out, _ = run(capsys, "weights", *models, "--weights", "3,1", "--json", "x = 1")
    assert code == 0 and json.loads(out)["weights"] == {"sp": 0.75, "bl": 0.25}
    code, out, _ = run(capsys, "weights", *models, "--weighting", "opt", "x = 1")
    assert code == 0 and "member" in out and "sp" in out and "bl" in out
    code, own, _ = run(capsys, "weights", *models, "--scoring", "own", "--reference", "sp", "--json", "x = 1")
    code, ref, _ = run(capsys, "weights", *models, "--reference", "sp", "--json", "x = 1")
    assert json.loads(own)["prompt_perplexity"]["sp"] == pytest.approx(json.loads(ref)["prompt_perplexity"]["sp"])
    assert json.loads(own)["prompt_perplexity"]["bl"] != json.loads(ref)["prompt_perplexity"]["bl"]


def test_bad_input_exits_2_with_a_clear_message(capsys, tiny_folder: Path) -> None:
    code, _, err = run(capsys, "generate", "--model", str(tiny_folder), "--tau", "0", "x")
    assert code == 2 and "tau=0.0" in err
    code, _, err = run(capsys, "generate", "--model", str(tiny_folder), "--weights", "a,b", "x")
    assert code == 2 and "weights" in err
    code, _, err = run(capsys, "generate", "--model", "nope-model", "x")
    assert code == 2 and "nope-model" in err
    code, _, err = run(capsys, "generate", "--model", str(tiny_folder), "--top-p", "2", "x")
    assert code == 2 and "top_p" in err


def test_models_lists_the_catalog(capsys) -> None:
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0
    assert [r["name"] for r in rows if r["default"]] == ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]
