"""JSON requests to one server for one member: a deadline on the whole request, no secret in any text.

:class:`ServerClient` is what a :class:`~.remote.RemoteMember` talks to its server through:

- **credentials** come from the API key (sent as a bearer token) or else from the URL's
  user and password (``http://user:pass@host/v1``, sent as basic authentication): the URL the
  client requests, shows and logs has no credentials, and :meth:`ServerClient.redact`
  takes the key, the password (and its base64 form) out of every text the package builds
  from a server's answer (an error body that echoes the ``Authorization`` header, say);
- **the timeout bounds the whole request**, connection to last byte: a server that answers
  one byte at a time, or never, fails the request at ``timeout`` seconds (an HTTP client's
  own timeout is per read). Each request runs in a thread of its own that the caller waits
  for; a request given up on stops at the server's next byte, or at the per-read timeout;
- **every failure is a** :class:`~packllm_integrations.errors.BackendError` naming the
  member and the server: HTTP errors, answers that are not a JSON object, answers over
  :data:`MAX_ANSWER_BYTES`.

Example (a server on 127.0.0.1 that needs a key; nothing here is sent until a request)::

    >>> client = ServerClient("m", "http://user:secret@127.0.0.1:8000/v1", api_key="sk-1", timeout=5)
    >>> client.url
    'http://127.0.0.1:8000/v1'
    >>> client.redact("401: bad key Bearer sk-1 for user:secret, or http://u:p@host")
    '401: bad key Bearer *** for ***, or http://***@host'
    >>> client.close()
"""

from __future__ import annotations

import base64
import json
import re
import threading
from typing import Any

import httpx

from ..errors import BackendError

__all__ = ["MAX_ANSWER_BYTES", "ServerClient", "reason"]

MAX_ANSWER_BYTES = 256 * 2**20
"""The largest answer read (a prompt's log-probabilities at ``top_k=50`` are a few MB)."""

_HIDDEN = "***"
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class ServerClient:
    """One member's connection pool to one server (see the module docstring).

    Args:
        member: the member's name, for error texts.
        url: the server's base URL, credentials allowed (``http://user:pass@host:port/v1``).
        api_key: sent as ``Authorization: Bearer KEY`` (None: no header).
        timeout: seconds a whole request may take.
        max_connections: requests that may be open at once.
    """

    def __init__(
        self, member: str, url: str, api_key: str | None = None, timeout: float = 60.0, max_connections: int = 8
    ) -> None:
        parsed = httpx.URL(url.rstrip("/"))
        user, password = parsed.username, parsed.password
        self.member, self.timeout = member, float(timeout)
        self.url = str(parsed.copy_with(username=None, password=None))
        secrets = [api_key, password]
        if user or password:
            secrets += [f"{user}:{password}", base64.b64encode(f"{user}:{password}".encode()).decode()]
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        auth = httpx.BasicAuth(user, password or "") if (user or password) and not api_key else None
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.Client(headers=headers, auth=auth, timeout=self.timeout, limits=limits)
        self.requests = 0

    def redact(self, text: str) -> str:
        """``text`` with the key, the URL's password (and its base64 form) and any URL's credentials hidden."""
        for secret in self._secrets:
            text = text.replace(secret, _HIDDEN)
        return _URL_USERINFO.sub(f"{_HIDDEN}@", text)

    def error(self, what: str) -> BackendError:
        """A :class:`BackendError` of this member and server saying ``what`` (redacted)."""
        return BackendError(self.member, self.url, self.redact(what))

    def get(self, path: str) -> dict[str, Any]:
        """``GET url/path``'s JSON object."""
        return self._json(*self._send("GET", f"{self.url}/{path}", None))

    def post(self, path: str, body: dict[str, Any], missing_ok: bool = False) -> dict[str, Any]:
        """``POST url/path`` with the JSON ``body``: the answer's JSON object (``{}`` for an HTTP
        404 when ``missing_ok``: an endpoint the server does not have). A ``path`` that starts
        with ``/`` is the server's own (beside the base URL's ``/v1``)."""
        url = f"{self.url}/{path}"
        if path.startswith("/"):
            url = (self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url) + path
        status, raw = self._send("POST", url, body)
        if status == 404 and missing_ok:
            return {}
        return self._json(status, raw)

    def _json(self, status: int, raw: bytes) -> dict[str, Any]:
        text = self.redact(raw[:4096].decode("utf-8", "replace"))[:200]  # redacted before it is cut: no part of a key
        if status >= 400:
            raise self.error(f"HTTP {status}: {text}")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise self.error(f"a response that is not JSON: {text!r}") from None
        if not isinstance(data, dict):
            raise self.error(f"a response that is not a JSON object: {text!r}")
        return data

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        """One request, in a thread of its own: (status, body), or a BackendError at the deadline."""
        self.requests += 1
        done, given_up = threading.Event(), threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                with self._client.stream(method, url, json=body) as response:
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if given_up.is_set() or size > MAX_ANSWER_BYTES:
                            box["error"] = f"an answer of over {MAX_ANSWER_BYTES // 2**20} MB"
                            return
                        chunks.append(chunk)
                    box["answer"] = (response.status_code, b"".join(chunks))
            except httpx.TimeoutException:
                box["error"] = f"no answer within timeout={self.timeout} s"
            except Exception as exc:  # noqa: BLE001 - a closed client, a broken connection: the caller's error
                box["error"] = reason(exc)
            finally:
                done.set()

        threading.Thread(target=work, name=f"packllm-{self.member}-request", daemon=True).start()
        if not done.wait(self.timeout):
            given_up.set()
            raise self.error(f"no answer within timeout={self.timeout} s")
        if "error" in box:
            raise self.error(box["error"])
        return box["answer"]

    def close(self) -> None:
        """Close the connections (a request given up on ends with them)."""
        self._client.close()


def reason(exc: BaseException) -> str:
    """An exception's text for an error message, at most 300 characters.

    >>> reason(ValueError())
    'ValueError'
    """
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
