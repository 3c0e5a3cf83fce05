"""Served members against servers that misbehave on purpose: secrets, malformed answers, slow drips.

Every server here is a real HTTP server on 127.0.0.1 (:mod:`tests.stand_in_servers`) over a
real tiny model, that answers properly except where a case makes it answer otherwise: at
every level of the JSON it sends (the model list, the tokenize endpoint, a completion's
log-probabilities, a prompt's log-probabilities), with credentials it echoes, or one byte at
a time. What a member makes of each: a proper result, or a typed error naming the member and
the server (:class:`BackendError` from the member, :class:`MemberError` from a pack,
:class:`ModelLoadError` at connection); never another exception, never a secret in a text,
and never longer than its ``timeout``.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from typing import Any

import pytest
import torch

from packllm_integrations import BackendError, MemberError, MemberSpec, ModelLoadError, PackEngine, PackLLMError
from packllm_integrations.backends.remote import RemoteMember
from tests import tiny
from tests.stand_in_servers import VllmLike, serve

TEXT = "The function returns the value of the"
KEY = "sk-live-0123456789abcdef"


@pytest.fixture
def server():
    """A stand-in server (vLLM dialect) of the tiny byte-level model: (handler class, URL)."""
    handler = type("Handler", (VllmLike,), {"member": tiny.bytelevel_member()})
    with serve(handler) as url:
        yield handler, url


def _connect(url: str, **fields: Any) -> RemoteMember:
    spec = MemberSpec("", backend="openai", url=url, tokenizer="tiny", name="served", **fields)
    return RemoteMember.connect(spec, tiny.bytelevel_tokenizer())


def _use(member: RemoteMember) -> None:
    """What a pack asks of a member: a prefill, a step, named tokens, a generation, a score."""
    ids = member.encode(TEXT)
    with torch.inference_mode():
        done = member.prefill([ids])
        assert torch.isfinite(done.states).all()
        scores = member.step(done.cache, [int(member.scores(done.last).ids[0, 0])])
        member.named_scores(done.cache, scores, {0: [5, 6]})
    pack = PackEngine([member, tiny.bytelevel_member_b()], progress=False, max_new_tokens=3)
    assert math.isfinite(pack.generate(TEXT).prompt_perplexity["served"] or math.nan)
    assert math.isfinite(pack.score([(TEXT, " thing")])[0].logprob)


def _typed(caught: BaseException, url: str) -> None:
    assert isinstance(caught, PackLLMError), f"{type(caught).__name__}: {caught}"
    if isinstance(caught, BackendError | MemberError):
        assert "'served'" in str(caught) and url in str(caught), str(caught)


# ---- secrets ------------------------------------------------------------------------------


def test_an_api_key_a_server_echoes_is_in_no_error_text_and_no_log(server, monkeypatch, caplog) -> None:
    handler, url = server
    monkeypatch.setenv("PACKLLM_TEST_KEY", KEY)
    handler.api_key = "sk-the-right-one"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelLoadError, match="HTTP 401") as at_connection:
        _connect(url, api_key_env="PACKLLM_TEST_KEY")
    handler.api_key = KEY
    member = _connect(url, api_key_env="PACKLLM_TEST_KEY")
    handler.api_key = "sk-rotated"  # the server stops taking the key: every request is a 401 that echoes it
    with pytest.raises(BackendError, match="HTTP 401") as from_member:
        member.step([member.encode(TEXT)], [5])
    with pytest.raises(MemberError, match="HTTP 401") as from_pack:
        PackEngine([member, tiny.bytelevel_member_b()], progress=False, max_new_tokens=3).generate(TEXT)
    member.close()
    texts = [str(e.value) for e in (at_connection, from_member, from_pack)] + [caplog.text]
    texts += [repr(e.value) for e in (at_connection, from_member, from_pack)]
    assert all(KEY[:8] not in t for t in texts), texts  # not even the part of it that fits a cut text
    assert "Bearer ***" in str(from_member.value)  # the echo is there, the key is not


def test_credentials_in_the_url_are_sent_and_shown_nowhere(server, caplog) -> None:
    handler, url = server
    seen: list[str] = []
    handler.mutate = staticmethod(lambda path, payload: seen.append(path) or payload)
    handler.api_key = None
    password = "pw-9f8e7d"
    secret_url = url.replace("http://", f"http://alice:{password}@")
    caplog.set_level(logging.DEBUG)
    member = _connect(secret_url)
    assert member.url == url and password not in str(member.identity)
    assert handler.authorization == f"Basic {base64.b64encode(f'alice:{password}'.encode()).decode()}"
    handler.mutate = staticmethod(lambda path, payload: b"<html>" + payload_text(path) + b"</html>")
    with pytest.raises(BackendError) as caught:
        member.step([member.encode(TEXT)], [5])
    member.close()
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    for text in (str(caught.value), repr(caught.value), caplog.text):
        assert password not in text and basic not in text, text
    assert seen


def payload_text(path: str) -> bytes:
    """A body that echoes credentials, as a misconfigured proxy's error page does."""
    return f"bad gateway for {path}: Authorization: Basic {base64.b64encode(b'alice:pw-9f8e7d').decode()}".encode()


# ---- malformed answers ----------------------------------------------------------------------

NUMBERS: list[Any] = [None, "x", [1], {"a": 1}, True, 10**400, float("nan"), float("inf"), 5.0, -1e308]


def _models_cases() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = [("data", v) for v in ["tiny", {"id": "tiny"}, ["tiny"], [1], [], None]]
    cases += [("id", v) for v in [None, 5, ["x"], {"a": 1}]]
    cases += [("owned_by", v) for v in [None, 5, ["vllm"]]]
    cases += [("max_model_len", v) for v in ["abc", 1.5, -1, True, [4096], 10**30]]
    return cases + [("body", v) for v in [b"not json", b"[1]", b"null", b'"x"', b"{", b"[" * 100_000, 5]]


@pytest.mark.parametrize(("field", "value"), _models_cases(), ids=repr)
def test_a_malformed_model_list_is_a_load_error(server, field, value) -> None:
    handler, url = server

    def mutate(path: str, payload: Any) -> Any:
        if not path.endswith("/models"):
            return payload
        if field in ("data", "body"):
            return value if field == "body" else {"data": value}
        payload["data"][0][field] = value
        return payload

    handler.mutate = staticmethod(mutate)
    try:
        member = _connect(url)
    except PackLLMError as caught:
        _typed(caught, url)
        return
    _use(member)  # what the list still says is usable
    member.close()


@pytest.mark.parametrize(
    "value", [5, "abc", [1.5], [None], [-1, 10**20], {"a": 1}, [True], b"xx", b"7", None], ids=repr
)
def test_a_malformed_tokenize_answer_is_a_typed_error(server, value) -> None:
    handler, url = server
    handler.mutate = staticmethod(
        lambda path, payload: (
            payload
            if not path.endswith("tokenize")
            else value
            if isinstance(value, bytes)
            else ({"tokens": value} if value != 5 else 5)
        )
    )
    try:
        member = _connect(url)
    except PackLLMError as caught:
        _typed(caught, url)
        return
    _use(member)
    member.close()


def _set_cases() -> list[tuple[str, Any]]:
    """(where, what) for a completion: where the answer is replaced, and with what."""
    cases: list[tuple[str, Any]] = [("choices", v) for v in [None, "x", [], [None], ["x"], {"0": 1}]]
    cases += [("logprobs", v) for v in [None, "x", [1], {"top_logprobs": "abc"}, {"top_logprobs": [["a", 1]]}]]
    cases += [("logprobs", v) for v in [{"top_logprobs": []}, {"top_logprobs": [None]}, {"top_logprobs": [{}]}]]
    keys = ["token_id:abc", "token_id:-5", "token_id:99999999999999999999", "token_id:", "", "7", "\x00"]
    cases += [("key", k) for k in keys]
    return cases + [("value", v) for v in NUMBERS] + [("body", v) for v in [b"{}", b"[]", b"garbage", b""]]


@pytest.mark.parametrize("dialect", ["vllm", "generic"])
@pytest.mark.parametrize(("where", "what"), _set_cases(), ids=repr)
def test_a_malformed_completion_is_a_backend_error_or_is_read(server, where, what, dialect) -> None:
    handler, url = server
    handler.owned_by = "vllm" if dialect == "vllm" else "other"
    member = _connect(url, top_k=5)
    assert member.dialect == dialect

    def mutate(path: str, payload: Any) -> Any:
        if not path.endswith("/completions"):
            return payload
        choice = payload["choices"][0]
        if where == "body":
            return what
        if where == "choices":
            payload["choices"] = what
        elif where == "logprobs":
            choice["logprobs"] = what
        else:
            top = choice["logprobs"]["top_logprobs"][0]
            first = next(iter(top))
            top[what if where == "key" else first] = top.pop(first) if where == "key" else what
        return payload

    handler.mutate = staticmethod(mutate)
    try:
        _use(member)
    except PackLLMError as caught:
        _typed(caught, url)
    finally:
        member.close()


def _prompt_cases() -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = [("list", v) for v in ["x", [], [None], 5, {"0": None}]]
    cases += [("entry", v) for v in ["x", 5, [1], {"3": -1.0}, {"3": {"logprob": "x"}}, {"abc": {"logprob": -1}}]]
    return cases + [("entry", {"3": {"lp": -1.0}}), ("entry", {"3": {"logprob": 2.0}}), ("entry", None)]


@pytest.mark.parametrize(("where", "what"), _prompt_cases(), ids=repr)
def test_malformed_prompt_log_probabilities_are_a_backend_error(server, where, what) -> None:
    handler, url = server
    member = _connect(url, top_k=5)

    def mutate(path: str, payload: Any) -> Any:
        choice = payload["choices"][0] if path.endswith("/completions") else {}
        if choice.get("prompt_logprobs"):
            if where == "list":
                choice["prompt_logprobs"] = what
            else:
                choice["prompt_logprobs"][2] = what
        return payload

    handler.mutate = staticmethod(mutate)
    with pytest.raises(PackLLMError) as caught:
        _use(member)
    _typed(caught.value, url)
    member.close()


# ---- time ----------------------------------------------------------------------------------


def _nothing_left() -> None:
    """A request given up on ends (at the server's next byte, or its per-read timeout)."""
    deadline = time.monotonic() + 3
    while (left := [t for t in threading.enumerate() if t.name.endswith("-request")]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left


@pytest.mark.parametrize("how", ["drip", "silent"])
def test_the_timeout_bounds_a_whole_request_whatever_the_server_does(server, how) -> None:
    """A server that sends a byte every 50 ms (each read well inside the timeout), or nothing."""
    handler, url = server
    member = _connect(url, timeout=1.0)
    setattr(handler, how, 0.05 if how == "drip" else True)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"member 'served' at .*no answer within timeout=1.0 s"):
        member.step([member.encode(TEXT)], [5])
    assert time.monotonic() - start < 1.5
    start = time.monotonic()
    with pytest.raises(MemberError, match="timeout=1.0"):
        PackEngine([member, tiny.bytelevel_member_b()], progress=False, max_new_tokens=3).generate(TEXT)
    assert time.monotonic() - start < 2.5  # the prefill's request, and what the pack does besides
    member.close()
    _nothing_left()


def test_a_slow_drip_at_connection_is_a_load_error_within_the_timeout(server) -> None:
    handler, url = server
    handler.drip = 0.05
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="timeout=1.0"):
        _connect(url, timeout=1.0)
    assert time.monotonic() - start < 1.5
    _nothing_left()


def test_a_member_named_by_its_server_is_named_so_in_its_errors(server) -> None:
    handler, url = server
    handler.model_id = "qwen-served"
    spec = MemberSpec("", backend="openai", url=url, tokenizer="tiny")  # no name: the server's model id
    member = RemoteMember.connect(spec, tiny.bytelevel_tokenizer())
    handler.mutate = staticmethod(lambda path, payload: b"oops" if path.endswith("/completions") else payload)
    with pytest.raises(BackendError, match=rf"member 'qwen-served' at {url}: a response that is not JSON") as caught:
        member.step([member.encode(TEXT)], [5])
    assert member.name == caught.value.member == "qwen-served"
    member.close()
