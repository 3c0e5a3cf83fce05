"""Remote members against a real llama.cpp server (llama-cpp-python's), started here on 127.0.0.1.

SmolLM2-135M is served (a small vocabulary keeps the server's per-position logits small);
faults are real: a port nothing listens on, a server killed mid-generation, a server
paused (SIGSTOP) so that it accepts requests and never answers, a wrong API key, and a
local tokenizer whose vocabulary is not the served model's.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import torch

from packllm_integrations import (
    CATALOG,
    MemberError,
    ModelLoadError,
    PackEngine,
    TextEvent,
    load_member,
)
from packllm_integrations.backends import SparseScores, dense
from tests.integration.models import need as _need
from tests.servers import LlamaServer, free_port

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")

PROMPT = "The three most important ideas in computer science are"
CODE = "import numpy as np\n\ndef mean(values):\n"
KEY = "sk-test-7f3a9c1e5b"


def _gguf(name: str):
    from packllm_integrations.loading import cache_dir
    from packllm_integrations.loading.gguf_files import catalog_gguf

    return catalog_gguf(CATALOG[name], cache_dir() / "gguf", progress=False)


@contextlib.contextmanager
def _served(name: str, timeout: float = 10):
    """A fresh server of SmolLM2 (for tests that kill or pause it) and a member on it."""
    _need("smollm2-135m")
    with LlamaServer(_gguf("smollm2-135m")) as srv:
        member = load_member(f"openai:{srv.url},tokenizer=smollm2-135m,name={name},timeout={timeout}", progress=False)
        try:
            yield srv, member
        finally:
            member.close()


@pytest.fixture(scope="module")
def server():
    _need("smollm2-135m")
    with LlamaServer(_gguf("smollm2-135m"), alias="smollm2") as srv:
        yield srv


@pytest.fixture(scope="module")
def remote(server):
    member = load_member(f"openai:{server.url},model=smollm2,tokenizer=smollm2-135m,name=remote", progress=False)
    yield member
    member.close()


@pytest.fixture(scope="module")
def local_smollm2():
    return load_member("smollm2-135m,backend=llama.cpp,name=local", progress=False)


NEAR_TIE = 0.5
"""How far (nats) the served and in-process log-probabilities of one token may be apart. The
same GGUF gives up to 0.09-0.31 nats apart over 16 steps (5 runs measured here): llama.cpp's
quantized kernels round differently for the server's batches and cached prefixes."""


def test_a_remote_member_reads_as_the_local_llama_cpp_member(remote, local_smollm2) -> None:
    """The same GGUF served and in process, fed the same tokens: the server's top-20 hold the
    local argmax with nearly the same log-probability, and where the two argmaxes differ it is
    a near tie. (Exact greedy texts, compared before, differed now and then at a near tie.)"""
    width = local_smollm2.logits_width
    with torch.inference_mode():
        ids = local_smollm2.encode(PROMPT)
        here, there = local_smollm2.prefill([ids]), remote.prefill([ids])
        mine, served = local_smollm2.scores(here.last), remote.scores(there.last)
        ties = 0
        for _ in range(16):
            local_lp = torch.log_softmax(dense(mine, width)[0].float(), dim=-1)
            assert isinstance(served, SparseScores)
            top, top_served = int(local_lp.argmax()), int(served.ids[0, served.logprobs[0].argmax()])
            assert top in served.ids[0].tolist(), "the server's top-20 miss the local argmax"
            at = served.ids[0].tolist().index(top)
            assert abs(float(served.logprobs[0, at]) - float(local_lp[top])) < NEAR_TIE
            if top_served != top:
                ties += 1
                assert float(local_lp[top] - local_lp[top_served]) < NEAR_TIE
            mine, served = local_smollm2.step(here.cache, [top]), remote.step(there.cache, [top])
    assert ties <= 2  # measured: 0 or 1 of 16
    alone = PackEngine([remote], progress=False, max_new_tokens=16).generate(PROMPT)
    assert alone.text.strip() and alone.finish_reason == "length" and alone.usage.completion_tokens == 16


def test_an_end_token_the_server_would_sample_is_seen(remote, local_smollm2) -> None:
    """Where the end token is the most likely next token, the server still sends the distribution."""
    chat = [{"role": "user", "content": "Say hi"}]
    prompt = local_smollm2.render_chat(chat) + "Hi! How can I help you today?"
    served = PackEngine([remote], progress=False, max_new_tokens=8).generate(prompt)
    here = PackEngine([local_smollm2], progress=False, max_new_tokens=8).generate(prompt)
    assert (served.text, served.finish_reason) == (here.text, here.finish_reason) == ("", "eos")


def test_a_mixed_pack_generates_streams_batches_and_scores(remote) -> None:
    """One llama.cpp member, one served member, one transformers member: three backends, two tokenizers."""
    _need("qwen2.5-coder-0.5b", "gemma3-270m")
    qwen = load_member("qwen2.5-coder-0.5b,backend=llama.cpp", progress=False)
    gemma = load_member("gemma3-270m,backend=transformers", progress=False)
    engine = PackEngine([qwen, remote, gemma], progress=False, max_new_tokens=12)
    result = engine.generate(CODE)
    assert result.text.strip() and set(result.weights) == {"qwen2.5-coder-0.5b", "remote", "gemma3-270m"}
    assert sum(result.weights.values()) == pytest.approx(1.0) and all(v > 0 for v in result.weights.values())
    streamed = "".join(e.text for e in engine.stream(CODE) if isinstance(e, TextEvent))
    assert streamed == result.text
    batch = engine.generate_batch([CODE, PROMPT])
    assert batch[0].text == result.text and batch[1].text.strip()
    good, bad = engine.score([(CODE, "    return sum(values) / len(values)\n"), (CODE, "    purple elephant\n")])
    assert good.logprob > bad.logprob


def test_a_remote_and_a_local_member_decode_together(remote, local_smollm2) -> None:
    """The remote member steps in a thread while the local one steps here (timings: bench_backends.py)."""
    engine = PackEngine([remote, local_smollm2], progress=False, max_new_tokens=24)
    result = engine.generate(PROMPT)
    assert result.usage.completion_tokens == 24 and not result.dropped


def test_connection_refused_at_load_names_the_member_and_server() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match=rf"member 'gone' at {url}.*cannot list"):
        load_member(f"openai:{url},tokenizer=smollm2-135m,name=gone,timeout=5", progress=False)
    assert time.monotonic() - start < 5


def test_a_tokenizer_with_another_vocabulary_is_refused(server) -> None:
    _need("qwen2.5-coder-0.5b")
    with pytest.raises(ModelLoadError, match="vocabulary"):
        load_member(f"openai:{server.url},tokenizer=qwen2.5-coder-0.5b", progress=False)


def test_an_unknown_model_name_lists_the_servers_models(server) -> None:
    with pytest.raises(ModelLoadError, match=r"no model 'nope'.*smollm2"):
        load_member(f"openai:{server.url},model=nope,tokenizer=smollm2-135m", progress=False)


def test_an_api_key_is_sent_and_never_shown(monkeypatch) -> None:
    _need("smollm2-135m")
    with LlamaServer(_gguf("smollm2-135m"), api_key=KEY) as srv:
        monkeypatch.setenv("PACK_TEST_KEY", KEY)
        member = load_member(f"openai:{srv.url},tokenizer=smollm2-135m,api_key_env=PACK_TEST_KEY", progress=False)
        text = PackEngine([member], progress=False, max_new_tokens=4).generate(PROMPT).text
        assert text and KEY not in repr(member.identity) and KEY not in str(vars(member))
        monkeypatch.setenv("PACK_TEST_KEY", "sk-wrong-key-0000")
        with pytest.raises(ModelLoadError) as caught:
            load_member(f"openai:{srv.url},tokenizer=smollm2-135m,api_key_env=PACK_TEST_KEY", progress=False)
        assert "401" in str(caught.value) and "sk-wrong" not in str(caught.value)
        member.close()


def test_a_server_killed_mid_generation_fails_the_request_with_the_text_so_far() -> None:
    with _served("doomed") as (srv, member):
        engine = PackEngine([member], progress=False, max_new_tokens=64)
        seen = []
        with pytest.raises(MemberError, match=rf"'doomed'.*{srv.url}") as caught:
            for event in engine.stream(PROMPT):
                if isinstance(event, TextEvent):
                    seen.append(event.text)
                    if len(seen) == 3:
                        srv.kill()
        assert len(seen) >= 3 and caught.value.partial[0].startswith("".join(seen[:3]))


def test_a_dropped_member_leaves_the_others_going(local_smollm2) -> None:
    with _served("flaky") as (srv, member):
        engine = PackEngine([local_smollm2, member], progress=False, max_new_tokens=20, on_member_error="drop")
        pieces = 0
        for event in engine.stream(PROMPT):
            if isinstance(event, TextEvent):
                pieces += 1
                if pieces == 2:
                    srv.kill()
            last = event
        result = last.result  # type: ignore[attr-defined]
        assert result.usage.completion_tokens == 20 and "flaky" in result.dropped
        assert "local" not in result.dropped


def test_a_server_that_stops_answering_times_out_instead_of_hanging() -> None:
    with _served("slow", timeout=2) as (srv, member):
        engine = PackEngine([member], progress=False, max_new_tokens=32)
        start = time.monotonic()
        with pytest.raises(MemberError, match=r"'slow'.*timeout=2"):
            for event in engine.stream(PROMPT):
                if isinstance(event, TextEvent):
                    srv.pause()
        assert time.monotonic() - start < 30
        srv.resume()
