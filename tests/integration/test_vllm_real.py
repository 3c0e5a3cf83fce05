"""Members on a real vLLM server (its CPU build), started here on 127.0.0.1.

The server runs from a venv of its own (:mod:`tests.vllm_server`): these tests skip when that
venv is missing, unless ``PACKLLM_VLLM=install`` lets them make it (about 90 s, 3.5 GB). One
server serves SmolLM2-135M's cached float32 folder for the module (about 45 s to start and
5 GB of memory); the two-server test starts a second one (Qwen2.5-Coder-0.5B), and the test
that kills a server mid-request starts one of its own.
"""

from __future__ import annotations

import math
import os

import httpx
import pytest
import torch

from packllm_integrations import ConfigError, Constraint, MemberError, PackEngine, TextEvent, load_member
from packllm_integrations.decoding.fusion import nll_per_token
from tests.integration.models import need
from tests.vllm_server import OPT_IN, VllmServer, install, model_folder, venv_dir, venv_python

pytestmark = pytest.mark.integration

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "The three most important ideas in computer science are",
    "Once upon a time, in a small village,",
    "The largest planet in the solar system is",
]
CODE = "import numpy as np\n\ndef mean(values):\n"
MAX_LOGPROBS = 50


@pytest.fixture(scope="module")
def python():
    found = venv_python()
    if found is None:
        if os.environ.get(OPT_IN) != "install":
            pytest.skip(f"no vLLM venv at {venv_dir()}; run with {OPT_IN}=install to make it (about 90 s, 3.5 GB)")
        found = install()
    return found


@pytest.fixture(scope="module")
def server(python):
    need("smollm2-135m")
    with VllmServer(python, model_folder("smollm2-135m"), max_logprobs=MAX_LOGPROBS) as srv:
        yield srv


@pytest.fixture(scope="module")
def served(server):
    member = load_member(f"openai:{server.url},model=smollm2,tokenizer=smollm2-135m,name=served", progress=False)
    yield member
    member.close()


@pytest.fixture(scope="module")
def local():
    return load_member("smollm2-135m,backend=transformers,name=local", progress=False)


def test_the_vllm_dialect_and_its_limits_are_read_at_connection(server, served) -> None:
    stated = httpx.get(f"{server.url}/models").json()["data"][0]
    assert served.dialect == "vllm" and served.names_tokens
    assert served.context_window == stated["max_model_len"]
    with pytest.raises(ConfigError, match=rf"top_k=60 is invalid: expected at most {MAX_LOGPROBS} for member 'big'"):
        load_member(f"openai:{server.url},tokenizer=smollm2-135m,name=big,top_k=60", progress=False)


def test_prompt_perplexity_and_score_equal_the_in_process_member(served, local) -> None:
    """Every prompt token's own log-probability as the server gives it: no floor, no top-k cut."""
    for text in PROMPTS:
        ids = local.encode(text)
        targets = torch.tensor(ids[1:])
        with torch.inference_mode():
            here = nll_per_token(local, local.prefill([ids]).row(0)[:-1], targets, None, local.vocab_size)
            there = nll_per_token(served, served.prefill([ids]).row(0)[:-1], targets, None, served.vocab_size)
        assert math.isclose(math.exp(float(there.mean())), math.exp(float(here.mean())), rel_tol=1e-3)
    for context, continuation in [("I like to eat", " a banana"), (PROMPTS[1], "    return n")]:
        want = PackEngine([local], progress=False).score([(context, continuation)])[0].logprob
        got = PackEngine([served], progress=False).score([(context, continuation)])[0].logprob
        assert math.isclose(got, want, rel_tol=1e-3)


def test_greedy_text_agrees_with_the_in_process_member(served, local) -> None:
    """Measured 5 of 5 equal; float32 on both sides, but kernels differ, so a near tie may part them."""
    here = PackEngine([local], progress=False, max_new_tokens=16)
    there = PackEngine([served], progress=False, max_new_tokens=16)
    same = sum(here.generate(p).text == there.generate(p).text for p in PROMPTS)
    assert same >= 4


def test_a_mixed_pack_generates_streams_batches_scores_and_follows_a_grammar(served) -> None:
    """vLLM, llama.cpp and transformers members, two tokenizers."""
    need("qwen2.5-coder-0.5b", "gemma3-270m")
    pytest.importorskip("llama_cpp")
    qwen = load_member("qwen2.5-coder-0.5b,backend=llama.cpp", progress=False)
    gemma = load_member("gemma3-270m,backend=transformers", progress=False)
    engine = PackEngine([qwen, served, gemma], progress=False, max_new_tokens=12)
    result = engine.generate(CODE)
    assert result.text.strip() and set(result.weights) == {"qwen2.5-coder-0.5b", "served", "gemma3-270m"}
    assert sum(result.weights.values()) == pytest.approx(1.0) and all(v > 0 for v in result.weights.values())
    streamed = "".join(e.text for e in engine.stream(CODE) if isinstance(e, TextEvent))
    assert streamed == result.text
    batch = engine.generate_batch([CODE, PROMPTS[0]])
    assert batch[0].text == result.text and batch[1].text.strip()
    good, bad = engine.score([(CODE, "    return sum(values) / len(values)\n"), (CODE, "    purple elephant\n")])
    assert good.logprob > bad.logprob
    answer = engine.generate("The answer, yes or no:", constraint=Constraint.regex(" (yes|no)"), max_new_tokens=4)
    assert answer.text in (" yes", " no")


def test_two_members_on_two_servers_fuse_as_the_same_pack_in_process(python, served, local) -> None:
    """SmolLM2 and Qwen2.5-Coder-0.5B each on a vLLM server of their own (two tokenizers):
    with each member's prompt scored in its own tokens, the pack's weights are the in-process
    pack's, and its scores and greedy text follow them."""
    need("qwen2.5-coder-0.5b")
    with VllmServer(python, model_folder("qwen2.5-coder-0.5b"), served_name="qwen", kv_gb=1) as srv:
        qwen = load_member(f"openai:{srv.url},tokenizer=qwen2.5-coder-0.5b,name=qwen", progress=False)
        assert qwen.dialect == "vllm" and qwen.names_tokens and qwen.url == srv.url
        here = PackEngine(
            [local, load_member("qwen2.5-coder-0.5b,backend=transformers,name=qwen", progress=False)],
            progress=False,
            max_new_tokens=12,
            scoring="own",
        )
        there = PackEngine([served, qwen], progress=False, max_new_tokens=12, scoring="own")
        want, got = here.generate_batch([CODE, PROMPTS[0]]), there.generate_batch([CODE, PROMPTS[0]])
        for g, w in zip(got, want, strict=True):
            assert g.text.strip()
            for a, b in zip(g.weights.values(), w.weights.values(), strict=True):
                assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4)
        assert sum(g.text == w.text for g, w in zip(got, want, strict=True)) >= 1
        pairs = [(CODE, "    return sum(values) / len(values)\n"), (CODE, "    purple elephant\n")]
        (good, bad), (want_good, _) = there.score(pairs), here.score(pairs)
        assert good.logprob > bad.logprob
        # a fused score's normaliser holds the floor for tokens outside a member's set: close, not exact
        assert math.isclose(good.logprob, want_good.logprob, rel_tol=0.1)
        qwen.close()


def test_a_server_killed_mid_request_fails_it_with_the_text_so_far(python) -> None:
    need("smollm2-135m")
    with VllmServer(python, model_folder("smollm2-135m"), max_logprobs=20) as srv:
        member = load_member(f"openai:{srv.url},tokenizer=smollm2-135m,name=doomed,timeout=20", progress=False)
        engine = PackEngine([member], progress=False, max_new_tokens=64)
        seen: list[str] = []
        with pytest.raises(MemberError, match=rf"'doomed'.*{srv.url}") as caught:
            for event in engine.stream(PROMPTS[2]):
                if isinstance(event, TextEvent):
                    seen.append(event.text)
                    if len(seen) == 3:
                        srv.kill()
        assert len(seen) >= 3 and caught.value.partial[0].startswith("".join(seen[:3]))
        member.close()
