"""Remote-member specs, and what a remote member makes of servers that answer badly.

The servers here are real HTTP servers (the standard library's, on 127.0.0.1) that answer
``/v1/models`` properly and ``/v1/completions`` with what a broken server sends: an error
status, a body that is not JSON, JSON without the log-probabilities. A real llama.cpp
server is in ``tests/integration/test_remote_real.py``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from packllm_integrations import BackendError, ConfigError, MemberError, MemberSpec, ModelLoadError, PackEngine
from packllm_integrations.backends.remote import RemoteMember
from packllm_integrations.loading import parse_spec
from tests import tiny


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


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client that hung up early (a failed request)
        pass


@pytest.fixture
def broken_server():
    server = _QuietServer(("127.0.0.1", 0), type("Handler", (_Handler,), {}))
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
