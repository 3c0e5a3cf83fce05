"""Remote-member specs, and what a remote member makes of servers that answer badly.

The servers here are real HTTP servers (the standard library's, on 127.0.0.1) that answer
``/v1/models`` properly and ``/v1/completions`` with what a broken server sends: an error
status, a body that is not JSON, JSON without the log-probabilities; and one that speaks
vLLM's completions protocol over a real tiny model in this process (exact prompt scores,
named tokens, the server's limits). A real llama.cpp server is in
``tests/integration/test_remote_real.py``, a real vLLM in ``tests/integration/test_vllm_real.py``.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler

import pytest
import torch

from packllm_integrations import BackendError, ConfigError, MemberError, MemberSpec, ModelLoadError, PackEngine
from packllm_integrations.backends.remote import RemoteMember
from packllm_integrations.decoding.fusion import nll_per_token
from packllm_integrations.loading import parse_spec
from tests import tiny
from tests.stand_in_servers import QuietServer, VllmLike, serve


def test_remote_specs_parse_with_typed_numbers() -> None:
    spec = parse_spec("openai:http://127.0.0.1:8080/v1,model=qwen,name=q,tokenizer=qwen2.5-coder-0.5b,top_k=50")
    assert (spec.backend, spec.url, spec.model, spec.display_name, spec.top_k) == (
        "openai",
        "http://127.0.0.1:8080/v1",
        "qwen",
        "q",
        50,
    )
    assert parse_spec("openai:http://h:1/v1,tokenizer=t,timeout=2.5").timeout == 2.5
    assert parse_spec("openai:http://h:1/v1,tokenizer=smollm2-135m").display_name == "smollm2-135m"


@pytest.mark.parametrize(
    ("text", "parameter"),
    [
        ("openai:127.0.0.1:8080,tokenizer=t", "url"),
        ("openai:http://h:1/v1", "tokenizer"),
        ("openai:http://h:1/v1,tokenizer=t,top_k=0", "top_k"),
        ("openai:http://h:1/v1,tokenizer=t,top_k=many", "top_k"),
        ("openai:http://h:1/v1,tokenizer=t,timeout=-1", "timeout"),
        ("openai:http://h:1/v1,tokenizer=t,dtype=float32", "model"),
        ("openai:http://h:1/v1,tokenizer=t,api_key_env=PACKLLM_NO_SUCH_VARIABLE", "api_key_env"),
        ("smollm2-135m,url=http://h:1/v1", "model"),
    ],
)
def test_bad_remote_specs_name_the_parameter(text: str, parameter: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_spec(text)
    assert caught.value.parameter == parameter


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"backend": "openai", "url": "http://h:1/v1", "tokenizer": "t", "dtype": "bfloat16"}, "dtype"),
        ({"backend": "openai", "url": "http://h:1/v1", "tokenizer": "t", "threads": 2}, "threads"),
        ({"tokenizer": "smollm2-135m"}, "tokenizer"),
        ({"top_k": 50}, "top_k"),
    ],
)
def test_options_another_backend_would_ignore_are_refused(fields: dict, parameter: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MemberSpec("smollm2-135m", **fields)
    assert caught.value.parameter == parameter


def test_an_api_key_is_read_from_the_environment_and_not_kept_in_the_spec(monkeypatch) -> None:
    monkeypatch.setenv("PACKLLM_TEST_KEY", "sk-secret-123")
    spec = MemberSpec("m", backend="openai", url="http://h:1/v1", tokenizer="t", api_key_env="PACKLLM_TEST_KEY")
    assert "sk-secret" not in repr(spec)


class _Handler(BaseHTTPRequestHandler):
    completion: bytes = b"{}"
    status = 200

    def log_message(self, *_: object) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, json.dumps({"data": [{"id": "broken", "owned_by": "me"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("tokenize"):
            self._send(404, b"{}")
        else:
            self._send(self.status, self.completion)


@pytest.fixture
def broken_server():
    server = QuietServer(("127.0.0.1", 0), type("Handler", (_Handler,), {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b'{"error": "out of memory"}', "HTTP 500"),
        (200, b"<html>gateway</html>", "not JSON"),
        (200, b"[1, 2]", "not a JSON object"),
        (200, json.dumps({"choices": [{"text": "x"}]}).encode(), "malformed"),
        (200, json.dumps({"choices": [{"logprobs": {"top_logprobs": [{"\x00zz": -1.0}]}}]}).encode(), "malformed"),
    ],
)
def test_a_bad_answer_is_a_member_error_naming_member_and_server(broken_server, status, body, reason) -> None:
    handler = broken_server.RequestHandlerClass
    handler.status, handler.completion = status, body
    url = f"http://127.0.0.1:{broken_server.server_address[1]}/v1"
    spec = MemberSpec("", backend="openai", url=url, tokenizer="tiny", name="bad")
    member = RemoteMember.connect(spec, tiny.bytelevel_tokenizer())
    with pytest.raises(BackendError, match=rf"member 'bad' at {url}: .*{reason}"):
        member.step([[1, 2]], [3])
    engine = PackEngine([member, tiny.bytelevel_member()], progress=False, max_new_tokens=4)
    with pytest.raises(MemberError, match=rf"'bad'.*{reason}"):
        engine.generate("The value of the")
    member.close()


def test_a_model_the_server_does_not_have_is_a_load_error(broken_server) -> None:
    url = f"http://127.0.0.1:{broken_server.server_address[1]}/v1"
    with pytest.raises(ModelLoadError, match="no model 'other'"):
        RemoteMember.connect(
            MemberSpec("other", backend="openai", url=url, tokenizer="tiny"), tiny.bytelevel_tokenizer()
        )


@pytest.fixture
def vllm_like():
    """A stand-in vLLM server of the tiny byte-level model; yields its handler class and URL."""
    handler = type("Handler", (VllmLike,), {"member": tiny.bytelevel_member()})
    with serve(handler) as url:
        yield handler, url


def _served(url: str, top_k: int = 20, name: str = "served") -> RemoteMember:
    spec = MemberSpec("", backend="openai", url=url, tokenizer="tiny", name=name, top_k=top_k)
    return RemoteMember.connect(spec, tiny.bytelevel_tokenizer())


TEXTS = ["The function returns the value of the", "import os\nimport sys\n\ndef main(", "A class is a"]


def test_a_vllm_member_scores_prompt_tokens_outside_its_top_k_with_the_servers_own_numbers(vllm_like) -> None:
    handler, url = vllm_like
    local, served = handler.member, _served(url, top_k=5)
    outside = 0
    for text in TEXTS:
        ids = local.encode(text)
        targets = torch.tensor(ids[1:])
        with torch.inference_mode():
            here = local.prefill([ids]).row(0)[:-1]
            want = nll_per_token(local, here, targets, None, local.vocab_size)
            got = nll_per_token(served, served.prefill([ids]).row(0)[:-1], targets, None, served.vocab_size)
            ranks = local.scores(here)[:, : local.vocab_size] > local.scores(here).gather(-1, targets[:, None])
        outside += int((ranks.sum(-1) >= 5).sum())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert outside > 0  # tokens a top-5 cut would have dropped were scored
    for context, continuation in [(TEXTS[0], " result of it"), (TEXTS[2], " thing")]:
        want = PackEngine([local], progress=False).score([(context, continuation)])[0]
        got = PackEngine([served], progress=False).score([(context, continuation)])[0]
        assert math.isclose(got.logprob, want.logprob, rel_tol=1e-3)
    served.close()


def test_a_top_k_above_the_servers_max_logprobs_is_refused_at_connection(vllm_like) -> None:
    handler, url = vllm_like
    handler.max_logprobs = 10
    with pytest.raises(
        ConfigError, match=r"top_k=20 is invalid: expected at most 10 for member 'big' at .*--max-logprobs"
    ) as caught:
        _served(url, top_k=20, name="big")
    assert caught.value.parameter == "top_k" and caught.value.value == 20
    member = _served(url, top_k=10)
    assert member.k == 10 and member.names_tokens and member.context_window == 256
    member.close()


@pytest.mark.parametrize("stated", ["4096", 0, True, -5])
def test_a_context_length_the_server_states_badly_is_a_load_error(vllm_like, stated) -> None:
    handler, url = vllm_like
    handler.max_model_len = stated
    with pytest.raises(ModelLoadError, match=rf"member 'served' at {url}: the server states max_model_len="):
        _served(url)


def test_named_tokens_come_back_with_the_servers_log_probabilities(vllm_like) -> None:
    handler, url = vllm_like
    local, served = handler.member, _served(url, top_k=3)
    ids = local.encode(TEXTS[1])
    with torch.inference_mode():
        done = served.prefill([ids, ids[:-2]])
        scores = served.scores(done.last)
        named = {0: [5, 6, int(scores.ids[0, 0])], 1: list(range(10, 10 + 130))}  # 130 ids: two requests
        wider = served.named_scores(done.cache, scores, named)
        for b, row in enumerate([ids, ids[:-2]]):
            exact = torch.log_softmax(local.scores(local.prefill([row]).last)[0, : local.vocab_size].double(), -1)
            for t in named[b]:
                at = wider.ids[b].tolist().index(t)
                assert math.isclose(float(wider.logprobs[b, at]), float(exact[t]), abs_tol=1e-5)
            torch.testing.assert_close(
                wider.dense(served.logits_width)[b].double().exp().sum(),
                torch.tensor(1.0, dtype=torch.float64),
                atol=1e-4,
                rtol=0,
            )
    assert handler.named_requests == 1 + 1 + 2  # the connection probe, row 0, row 1 in two
    served.close()


def test_a_pack_with_a_served_member_fuses_over_every_members_candidates(vllm_like) -> None:
    """The served member's top-10 miss some of the other member's candidates; named, they are
    scored with the server's numbers, and the pack decodes as the same pack in process. Without
    naming them (the fusion over each member's own top-k), it does not."""
    handler, url = vllm_like
    other = tiny.bytelevel_member_b()
    want = PackEngine([handler.member, other], progress=False, max_new_tokens=12).generate_batch(TEXTS)
    assert all(w.text for w in want)
    texts = {}
    for names in (True, False):
        served = _served(url, top_k=10)
        assert served.names_tokens
        served.names_tokens = names
        got = PackEngine([served, other], progress=False, max_new_tokens=12).generate_batch(TEXTS)
        texts[names] = [g.text for g in got]
        for g, w in zip(got, want, strict=True):
            for served_value, value in zip(g.prompt_perplexity.values(), w.prompt_perplexity.values(), strict=True):
                assert served_value is not None and value is not None
                assert math.isclose(served_value, value, rel_tol=1e-3)
        served.close()
    assert texts[True] == [w.text for w in want]
    assert texts[False] != texts[True]  # measured: 2 of the 3 texts part at a candidate the top-10 missed


def test_a_prompt_token_missing_from_prompt_logprobs_is_a_backend_error(vllm_like) -> None:
    """Where a server leaves out a prompt token's own entry, no floor stands in for it."""
    _, url = vllm_like
    served = _served(url)
    answer = {"logprobs": {"top_logprobs": [{"token_id:3": -0.5}]}, "prompt_logprobs": [None, {"4": {"logprob": -1.0}}]}
    with pytest.raises(BackendError, match=rf"member 'served' at {url}: .*no log-probability for the prompt token 2"):
        served._prompt_sets_of({"choices": [answer]}, [1, 2])
    served.close()


def test_greedy_decoding_names_candidates_only_where_the_choice_could_change(vllm_like) -> None:
    """A token outside the served member's top-k scores at most its k-th best: where the fused
    pick is exact and beats every other token's bound, the second request is not sent, and the
    text is still the in-process pack's. Sampling names at every step."""
    handler, url = vllm_like
    other = tiny.bytelevel_member_b()
    want = PackEngine([handler.member, other], progress=False, max_new_tokens=12).generate_batch(TEXTS)
    served = _served(url, top_k=20)
    counts, steps = {}, {}
    for temperature in (0.0, 0.8):
        before = handler.named_requests
        engine = PackEngine([served, other], progress=False, max_new_tokens=12, temperature=temperature, seed=3)
        got = engine.generate_batch(TEXTS)
        counts[temperature] = handler.named_requests - before
        steps[temperature] = sum(g.usage.completion_tokens for g in got)
        if temperature == 0:
            assert [g.text for g in got] == [w.text for w in want]
    assert 0 < counts[0.0] < steps[0.0] - len(TEXTS)  # measured: 25 of 36 (tiny models are sure of little)
    assert counts[0.8] >= steps[0.8] - len(TEXTS)  # every step but each text's last
    served.close()


def test_a_served_member_reading_its_own_tokens_is_asked_for_the_other_members_candidates(vllm_like) -> None:
    """Natural alignment: the served member (byte-level) reads its own tokenization and the
    reference is the SentencePiece-style member. Its top-10 miss candidates the reference
    proposes; named (each as the served member's own tokens the projection sends there), they
    are scored from the server's numbers, and the pack decodes as the same pack in process.
    Without naming, the candidates take the set's floor and the texts differ (measured: 2 of
    3; with top-5 sets, naming gives 2 of 3 equal: the parting choice is then in no member's
    candidates)."""
    handler, url = vllm_like
    other = tiny.sentencepiece_member()
    settings = {
        "progress": False,
        "max_new_tokens": 12,
        "alignment": "natural",
        "reference": other.name,
        "scoring": "own",
    }
    want = PackEngine([handler.member, other], **settings).generate_batch(TEXTS)
    texts, asked, steps = {}, {}, 0
    for names in (True, False):
        served = _served(url, top_k=10)
        served.names_tokens = names
        before = handler.named_requests
        got = PackEngine([served, other], **settings).generate_batch(TEXTS)
        asked[names] = handler.named_requests - before
        texts[names] = [g.text for g in got]
        steps = sum(g.usage.completion_tokens for g in got)
        served.close()
    assert asked[True] > 0 and asked[False] == 0
    assert texts[True] == [w.text for w in want]
    assert texts[False] != texts[True]
    assert asked[True] > steps  # measured 53 for 36 steps: most steps ask both sets, after and before u
