"""Natural alignment on the real bundled models."""

from __future__ import annotations

import pydoc_data.topics

import pytest
import torch

from packllm_integrations import Member, PackEngine, TextEvent, load_member
from packllm_integrations.alignment.natural import BatchReader
from packllm_integrations.loading.catalog import is_installed

pytestmark = pytest.mark.integration

CODE = "import numpy as np\nimport pandas as pd\n\ndef load(path):\n"


def _load(name: str, backend: str = "transformers") -> Member:
    if not is_installed(name):
        pytest.skip(f"bundled model package not installed: {name} (see requirements-models.txt)")
    return load_member(f"{name},backend={backend}", progress=False)


@pytest.fixture(scope="module")
def smollm2() -> Member:
    return _load("smollm2-135m")


@pytest.fixture(scope="module")
def qwen() -> Member:
    return _load("qwen2.5-coder-0.5b")


@torch.inference_mode()
@pytest.mark.parametrize("backend", ["transformers", "llama.cpp"])
def test_reader_rolls_back_past_gemma_sliding_window(backend: str) -> None:
    """Gemma 3's sliding layers (window 512) are cropped correctly beyond the window."""
    if backend == "llama.cpp":
        pytest.importorskip("llama_cpp")
    gemma = _load("gemma3-270m", backend)
    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))[:6000]
    ids = gemma.encode(text)[:620]
    base = gemma.tokenizer.decode(ids[1:], skip_special_tokens=True)
    reader = BatchReader.start(gemma, gemma.encode(base))
    assert len(reader.ids[0]) > 600
    word = " extraordinarily"  # grows a character at a time: its tokens merge and split
    for n in range(1, len(word) + 1):
        reader.advance({0: gemma.encode(base + word[:n])})
    assert reader.rolled_back > 0
    fresh = gemma.scores(gemma.prefill([reader.ids[0]]).last)[0].float()
    rolled = gemma.scores(reader.state[0][None])[0]
    if backend == "transformers":
        torch.testing.assert_close(rolled, fresh, atol=2e-3, rtol=1e-3)
    else:  # quantized kernels group a batch's positions otherwise than one step's: KL <= 0.01 measured
        p, q = torch.log_softmax(fresh.double(), -1), torch.log_softmax(rolled.double(), -1)
        assert float((p.exp() * (p - q)).sum()) < 0.02 and int(p.argmax()) == int(q.argmax())


def test_natural_pair_generates_streams_and_scores(smollm2: Member, qwen: Member) -> None:
    engine = PackEngine([smollm2, qwen], alignment="natural", scoring="own", progress=False)
    result = engine.generate(CODE, max_new_tokens=16)
    assert result.usage.completion_tokens == 16 and result.text.strip()
    assert sum(result.weights.values()) == pytest.approx(1.0)
    streamed = "".join(e.text for e in engine.stream(CODE, max_new_tokens=16) if isinstance(e, TextEvent))
    assert streamed == result.text
    batch = engine.generate_batch([CODE, "The old man walked slowly to the"], max_new_tokens=8)
    assert batch[0].text == engine.generate(CODE, max_new_tokens=8).text
    good, bad = engine.score([(CODE, "    return pd.read_csv(path)\n"), (CODE, "    elephant purple seven\n")])
    assert good.logprob > bad.logprob


@torch.inference_mode()
def test_a_long_prompt_read_in_chunks_matches_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts longer than PREFILL_CHUNK are read chunk by chunk (so a deadline is checked in
    between); Gemma 3's sliding-window cache gives the same states as one pass."""
    from packllm_integrations.backends import transformers as backend

    gemma = _load("gemma3-270m")
    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))[:12000]
    ids = gemma.encode(text)[:1300]
    assert len(ids) > 2 * backend.PREFILL_CHUNK
    rows = [ids, ids[:700]]
    chunked = [gemma.prefill(rows, rollback) for rollback in (False, True)]
    monkeypatch.setattr(backend, "PREFILL_CHUNK", 10_000)
    whole = [gemma.prefill(rows, rollback) for rollback in (False, True)]
    for a, b in zip(whole, chunked, strict=True):
        for r in range(len(rows)):
            la, lb = gemma.scores(a.row(r)[-200:]), gemma.scores(b.row(r)[-200:])
            torch.testing.assert_close(la, lb, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(gemma.step(a.cache, [5, 6]), gemma.step(b.cache, [5, 6]), atol=2e-3, rtol=1e-3)
