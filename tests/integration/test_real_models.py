"""The engine on the real bundled models (three tokenizer families)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from packllm_integrations import Member, PackEngine, TextEvent, load_member
from tests.integration.models import need as _need

pytestmark = pytest.mark.integration

CODE = "import numpy as np\nimport pandas as pd\n\ndef load(path):\n"
PROSE = "The old man walked slowly to the market, where he"


@pytest.fixture(scope="module")
def smollm2() -> Member:
    _need("smollm2-135m")
    return load_member("smollm2-135m,backend=transformers", progress=False)


@pytest.fixture(scope="module")
def qwen() -> Member:
    _need("qwen2.5-coder-0.5b")
    return load_member("qwen2.5-coder-0.5b,backend=transformers", progress=False)


def test_single_member_equals_transformers_generate(smollm2: Member) -> None:
    engine = PackEngine([Member("s", smollm2.model, smollm2.tokenizer, eos_token_ids=frozenset({-1}))])
    result = engine.generate(PROSE, max_new_tokens=24)
    ids = torch.tensor([smollm2.encode(PROSE)])
    out = smollm2.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    assert result.text == smollm2.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert result.usage.completion_tokens == 24


def test_cross_tokenizer_pair_generates_streams_and_batches(smollm2: Member, qwen: Member) -> None:
    engine = PackEngine([smollm2, qwen], progress=False)
    code = engine.weights(CODE)
    assert code.reference == "qwen2.5-coder-0.5b"
    assert code.weights["qwen2.5-coder-0.5b"] > code.weights["smollm2-135m"]
    assert sum(code.weights.values()) == pytest.approx(1.0)
    assert all(v is not None and math.isfinite(v) and v > 1 for v in code.prompt_perplexity.values())
    result = engine.generate(PROSE, max_new_tokens=16)
    assert result.usage.completion_tokens == 16 and len(result.text.split()) >= 4
    streamed = "".join(e.text for e in engine.stream(PROSE, max_new_tokens=16) if isinstance(e, TextEvent))
    assert streamed == result.text
    batch = engine.generate_batch([PROSE, CODE], max_new_tokens=16)
    assert batch[0].text == result.text
    assert batch[1].text == engine.generate(CODE, max_new_tokens=16).text


def test_reference_forced_and_opt(smollm2: Member, qwen: Member) -> None:
    engine = PackEngine([smollm2, qwen], progress=False)
    forced = engine.generate(PROSE, max_new_tokens=8, reference="smollm2-135m", weighting="opt")
    assert forced.reference == "smollm2-135m"
    assert sum(forced.weights.values()) == pytest.approx(1.0)
    assert all(round(w * 20) == pytest.approx(w * 20, abs=1e-9) for w in forced.weights.values())  # 2 members


def test_same_tokenizer_pair_weights_match_formula() -> None:
    _need("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
    # llama.cpp reads both GGUF files as they are (the 1.5B's float32 copy would be 7 GB)
    small, big = (
        load_member(f"{n},backend=llama.cpp", progress=False) for n in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
    )
    engine = PackEngine([small, big])
    assert engine.shared_vocabulary
    event = engine.weights(CODE)
    ids = small.encode(CODE)
    nll = []
    for m in (small, big):
        logp = torch.log_softmax(m.scores(m.prefill([ids]).row(0))[:-1].double(), -1)
        nll.append(float(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()))
    expected = torch.softmax(-torch.tensor(nll) / engine.config.tau, 0).tolist()
    assert [event.weights[small.name], event.weights[big.name]] == pytest.approx(expected, abs=1e-4)
    result = engine.generate(CODE, max_new_tokens=12)
    assert result.usage.completion_tokens == 12


def test_cli_main_job_on_the_default_pack() -> None:
    _need("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")
    cmd = [sys.executable, "-m", "packllm_integrations.cli", "generate", "--quiet", "--json"]
    cmd += ["--max-new-tokens", "8", "--reference", "smollm2-135m", PROSE]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True).stdout
    data = json.loads(out)
    assert set(data["weights"]) == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"}
    assert data["reference"] == "smollm2-135m"
    assert data["usage"]["completion_tokens"] <= 8 and data["text"]
