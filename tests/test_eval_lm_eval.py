"""The lm-evaluation-harness adapter on tiny models and local task files (no hub)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")
yaml = pytest.importorskip("yaml")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model, model_registry  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from packllm_integrations import PackEngine  # noqa: E402
from packllm_integrations.errors import ConfigError  # noqa: E402
from packllm_integrations.eval.lm_eval_adapter import PackLM  # noqa: E402
from packllm_integrations.eval.tasks import rolling_windows  # noqa: E402

DATA = Path(__file__).parent / "data" / "lm_eval"
TASKS = ["packllm_demo_mc", "packllm_demo_rolling", "packllm_demo_gen"]


@pytest.fixture(scope="module")
def engine(bl, sp):
    return PackEngine([bl, sp], progress=False)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """The example task files, pointed at their data by absolute path, with a private dataset cache."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    for name in TASKS:
        config = yaml.safe_load((DATA / f"{name}.yaml").read_text())
        data = Path(config["dataset_kwargs"]["data_files"]["test"]).name
        config["dataset_kwargs"] = {"data_files": {"test": str(DATA / data)}, "cache_dir": str(folder / "hf")}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return folder


def _docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def _instance(kind: str, args: tuple) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_registered_beside_lm_evals_own_models():
    assert get_model("packllm") is PackLM
    assert "hf" in model_registry and "dummy" in model_registry  # the built-in models are still found


def test_loglikelihood_is_the_engines_score(engine):
    lm = PackLM(engine=engine, weighting="opt", batch_size=2, progress=False)
    pairs = [("Question: 2 + 2 =\nAnswer:", " 4"), ("The sky is", " blue"), ("def f(x):", "\n    return x")]
    got = lm.loglikelihood([_instance("loglikelihood", p) for p in pairs])
    expected = engine.score(pairs, weighting="opt")  # one batch here, two there: padding moves the last digits
    assert [g[1] for g in got] == [r.is_greedy for r in expected]
    assert [g[0] for g in got] == pytest.approx([r.logprob for r in expected], rel=1e-5)
    assert len(lm.weights_seen) == 3 and all(math.isclose(sum(w.values()), 1.0) for w in lm.weights_seen)


def test_rolling_loglikelihood_sums_windows(engine):
    text = _docs("demo_text.jsonl")[0]["text"]
    lm = PackLM(engine=engine, window_chars=60, context_chars=30, progress=False)
    (total,) = lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))])
    windows = rolling_windows(text, 60, 30)
    assert len(windows) > 2 and "".join(c for _, c in windows) == text
    assert total == pytest.approx(sum(r.logprob for r in engine.score(windows)), rel=1e-5)
    assert lm.loglikelihood_rolling([_instance("loglikelihood_rolling", ("",))]) == [0.0]


def test_rolling_loglikelihood_of_one_window_matches_a_direct_forward_pass(sp):
    """A member with a BOS token scores every token of the text (window larger than the text)."""
    text = "The river rises in the hills above the town."
    lm = PackLM(engine=PackEngine([sp], progress=False), progress=False)
    (total,) = lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))])
    ids = sp.tokenizer(text)["input_ids"]
    assert ids[0] == sp.tokenizer.bos_token_id
    with torch.no_grad():
        logp = torch.log_softmax(sp.model(torch.tensor([ids])).logits[0].double(), dim=-1)
    assert total == pytest.approx(sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))), rel=1e-5)


def test_generate_until_stops_and_matches_the_engine(engine):
    lm = PackLM(engine=engine, batch_size=2, progress=False)
    prompts = ["Q: What is 2 + 2?\nA:", "The function returns", "Once upon a time"]
    kwargs = {"until": ["\n", "."], "max_gen_toks": 12, "do_sample": False}
    got = lm.generate_until([_instance("generate_until", (p, kwargs)) for p in prompts])
    expected = engine.generate_batch(prompts, max_new_tokens=12, stop=["\n", "."], temperature=0.0)
    assert got == [r.text for r in expected]
    assert all("\n" not in t and "." not in t for t in got)
    with pytest.raises(ConfigError, match="num_beams"):
        lm.generate_until([_instance("generate_until", (prompts[0], {"num_beams": 4}))])


def test_bad_model_arguments_raise(engine):
    with pytest.raises(ConfigError, match="pretrained"):
        PackLM(engine=engine, pretrained="gpt2")
    with pytest.raises(ConfigError, match="weights_on"):
        PackLM(engine=engine, weights_on="prompt")
    with pytest.raises(ConfigError, match="weights"):
        PackLM(engine=engine, weights="0.5:x")
    with pytest.raises(ConfigError, match="batch_size"):
        PackLM(engine=engine, batch_size=0)
    assert PackLM(engine=engine, weights="1:3", batch_size="auto", max_batch_size=None).config.weights == (1.0, 3.0)
    assert PackLM(engine=engine, scoring="own").config.scoring == "own"
    with pytest.raises(ConfigError, match="scoring"):
        PackLM(engine=engine, scoring="translated")


def test_simple_evaluate_on_local_tasks(engine, task_dir):
    """lm-eval's own metrics equal the ones recomputed from the engine's scores."""
    lm = PackLM(engine=engine, weighting="sim", batch_size=4, window_chars=80, context_chars=40, progress=False)
    manager = TaskManager(include_path=str(task_dir))
    out = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=manager, bootstrap_iters=0)
    results = out["results"]

    docs = _docs("demo_mc.jsonl")
    correct = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = engine.score([(context, " " + c) for c in doc["choices"]], weighting="sim")
        best = max(range(len(scores)), key=lambda j: scores[j].logprob)
        correct += best == doc["answer"]
    assert results["packllm_demo_mc"]["acc,none"] == pytest.approx(correct / len(docs))

    texts = [d["text"] for d in _docs("demo_text.jsonl")]
    nll = -sum(r.logprob for t in texts for r in engine.score(rolling_windows(t, 80, 40), weighting="sim"))
    size = sum(len(t.encode("utf-8")) for t in texts)
    assert results["packllm_demo_rolling"]["bits_per_byte,none"] == pytest.approx(nll / size / math.log(2), rel=1e-6)

    docs = _docs("demo_gen.jsonl")
    prompts = [f"Q: {d['question']}\nA:" for d in docs]
    texts = [r.text for r in engine.generate_batch(prompts, max_new_tokens=8, stop=["\n"], weighting="sim")]
    matches = sum(t == " " + d["answer"] for t, d in zip(texts, docs, strict=True))
    assert results["packllm_demo_gen"]["exact_match,none"] == pytest.approx(matches / len(docs))


def test_command_line_entry_point(tiny_pack_folders, task_dir, tmp_path, monkeypatch):
    """``python -m packllm_integrations.eval.lm_eval_cli`` registers the model, then runs lm-eval's CLI."""
    from packllm_integrations.eval.lm_eval_cli import main

    out = tmp_path / "out"
    argv = ["run", "--model", "packllm", "--model_args", f"models={'+'.join(tiny_pack_folders)},weighting=opt"]
    argv += ["--tasks", "packllm_demo_mc", "--include_path", str(task_dir), "--output_path", str(out)]
    argv += ["--batch_size", "4"]
    monkeypatch.setattr(sys, "argv", ["lm_eval_cli"])
    main(argv)
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert 0.0 <= saved["results"]["packllm_demo_mc"]["acc,none"] <= 1.0
    assert saved["config"]["model"] == "packllm"
    assert saved["config"]["packllm_weighting"] == "opt"


def test_spec_options_may_be_joined_with_semicolons(tiny_pack_folders):
    """lm-eval splits ``--model_args`` at commas, so a spec's options may use ``;``."""
    first, second = tiny_pack_folders
    lm = PackLM(models=f"{first};name=first+{second};name=second;dtype=float32", progress=False)
    assert lm.engine.names == ["first", "second"]
