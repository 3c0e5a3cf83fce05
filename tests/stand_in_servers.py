"""Stand-in OpenAI-compatible servers for the tests: real HTTP servers on 127.0.0.1 over a real
tiny model in this process, that answer as vLLM does, or as a broken or hostile server does.

:class:`VllmLike` speaks vLLM's completions protocol (token-id prompts, ``logprobs`` and
``prompt_logprobs`` with each position's top k plus the prompt token's own entry,
``logprob_token_ids``, ids as keys, HTTP 400 above ``max_logprobs``), as the real server
answers (checked against it in ``tests/integration/test_vllm_real.py``). With
``owned_by = "other"`` it is a generic server (text prompts, sets keyed by token text, an
``/extras/tokenize`` endpoint). Its hooks make it misbehave on purpose:

- ``mutate(path, payload)``: what it sends instead of a proper answer (a JSON value, or raw
  bytes);
- ``api_key``: requests without ``Bearer KEY`` get HTTP 401 with a body that echoes the
  ``Authorization`` header, as some servers do;
- ``drip``: seconds between the bytes of every answer (a slow-drip server); ``silent``:
  it never answers at all.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

__all__ = ["QuietServer", "VllmLike", "serve"]


class QuietServer(ThreadingHTTPServer):
    """A threaded HTTP server that keeps quiet about clients that hang up early (a failed request)."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        pass


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on a free port of 127.0.0.1; yields the base URL (``.../v1``)."""
    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class VllmLike(BaseHTTPRequestHandler):
    """vLLM's completions protocol over ``member`` (a tiny in-memory model); see the module docstring."""

    member: Any = None
    model_id = "tiny"
    owned_by = "vllm"
    max_logprobs = 20
    max_model_len: Any = 256
    named_requests = 0
    api_key: str | None = None
    authorization = ""  # the last request's Authorization header
    drip = 0.0
    silent = False
    mutate: Callable[[str, Any], Any] | None = None

    def log_message(self, *_: object) -> None:
        pass

    def _send(self, status: int, payload: Any) -> None:
        if type(self).mutate is not None and status == 200:
            payload = type(self).mutate(self.path, payload)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if self.silent:
            time.sleep(3600)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self.drip:
            self.wfile.write(body)
            return
        for i in range(len(body)):
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()
            time.sleep(self.drip)

    def _refused(self) -> bool:
        given = self.headers.get("Authorization", "")
        type(self).authorization = given
        if self.api_key is None or given == f"Bearer {self.api_key}":
            return False
        lead = "the key you sent is not valid. " * 4 + "(please check it) "  # the key then crosses 200 bytes
        message = f"{lead}invalid API key: {given!r}; Authorization: {given}"
        self._send(401, {"error": {"message": message, "code": 401}})
        return True

    def do_GET(self) -> None:  # noqa: N802
        if not self._refused():
            model = {"id": self.model_id, "owned_by": self.owned_by, "max_model_len": self.max_model_len}
            self._send(200, {"data": [model]})

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self._refused():
            return
        tokenizer = self.member.tokenizer
        if self.path.endswith("tokenize"):
            text = request.get("prompt", request.get("input"))
            return self._send(200, {"tokens": tokenizer(text, add_special_tokens=True)["input_ids"]})
        for field in ("logprobs", "prompt_logprobs"):
            if (request.get(field) or 0) > self.max_logprobs and not request.get("logprob_token_ids"):
                message = (
                    f"Requested {field} of {request[field]}, which is greater than max allowed: {self.max_logprobs}"
                )
                return self._send(400, {"error": {"message": message, "param": field, "code": 400}})
        prompt = request["prompt"]
        ids = list(prompt) if isinstance(prompt, list) else tokenizer(prompt, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            logits = self.member.model(torch.tensor([ids])).logits[0, :, : len(tokenizer)]
        logprobs = torch.log_softmax(logits.double(), dim=-1)  # [L, V]; row t predicts token t + 1

        def key(t: int) -> str:
            return f"token_id:{t}" if self.owned_by == "vllm" else tokenizer.decode([t])

        def entries(row: torch.Tensor, k: int, extra: list[int]) -> dict[str, float]:
            chosen = row.topk(k).indices.tolist() + extra
            return {key(t): float(row[t]) for t in chosen}

        last, sampled = logprobs[-1], int(logprobs[-1].argmax())
        named = request.get("logprob_token_ids")
        if named:
            type(self).named_requests += 1
            top = entries(last, 0, [*named, sampled])
        else:
            top = entries(last, request["logprobs"], [sampled])
        choice: dict[str, Any] = {"text": "", "logprobs": {"top_logprobs": [top]}, "prompt_logprobs": None}
        if request.get("prompt_logprobs"):
            k = request["prompt_logprobs"]
            choice["prompt_logprobs"] = [None] + [
                {name.split(":")[1]: {"logprob": v} for name, v in entries(logprobs[t], k, [ids[t + 1]]).items()}
                for t in range(len(ids) - 1)
            ]
        self._send(200, {"choices": [choice]})
