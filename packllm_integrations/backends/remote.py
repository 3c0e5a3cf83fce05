"""Remote members: a model on an OpenAI-compatible server, fused over its top-k candidates.

The server computes; this process keeps, per row, the token ids the member has read, and
asks the server for the top-k log-probabilities of the next token (``/v1/completions`` with
``logprobs=k`` and ``max_tokens=1``). The member's tokenizer is loaded here (the same
vocabulary as the served model, checked at connection), so the engine aligns ids as for
any member; its scores are :class:`~.base.SparseScores`, densified with the floor
documented there (the mass the set leaves, spread over the missing tokens, so the
distribution sums to one). Each packed set has ``top_k + 1`` slots: the top k, and room for
the prompt token's own entry.

Two dialects, detected from ``/v1/models``:

- **vLLM** (``owned_by == "vllm"``): token-id prompts, exact prompt scores, named tokens and
  the server's limits checked at connection (:mod:`.vllm`).
- **generic** (llama.cpp's servers, others): prompts go as text (llama-cpp-python's server
  refuses id prompts), the server re-tokenizes it; returned token strings are mapped back
  to ids through the local tokenizer (an empty string, which is how llama-cpp-python shows
  every special token, is taken as the end token). Special tokens get a logit bias of
  -100: a sampled end token would end the completion with no log-probabilities at all,
  and the bias only touches the sampling (the log-probabilities returned are the raw ones).
  Prompt log-probabilities are not read from ``echo`` (llama-cpp-python's are shifted by
  one position and slow); each prompt position is one next-token request, which the
  server's prompt cache makes cheap (it reuses the longest common prefix of consecutive
  prompts). A prompt token outside a position's top-k set is scored at the floor, so a
  remote member's prompt perplexity is higher than the same model's in process (by how
  much: ``benchmarks/results/backends.md``); vLLM's ``prompt_logprobs`` include the prompt
  token itself and have no such cost (``benchmarks/results/vllm.md``).

Requests for several rows go out concurrently through one connection pool per server;
the session steps remote members in threads, so one step costs about the slowest
member's round trip. Requests go through a :class:`~.server_client.ServerClient`: the
``timeout`` bounds each whole request, every failure (an HTTP error, an answer that is not
what the protocol says, at any level of its JSON) is a
:class:`~packllm_integrations.errors.BackendError` naming the member and the server, and
no text shows the API key (read from ``api_key_env``) or the URL's credentials.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from functools import cached_property
from typing import Any, TypeVar

import torch

from ..errors import BackendError, ModelLoadError
from .base import MemberBackend, Prefill, SparseScores
from .server_client import ServerClient, reason
from .vllm import VllmDialect

__all__ = ["RemoteMember"]

_MAX_WORKERS = 8
T, R = TypeVar("T"), TypeVar("R")
_LEAST = -1e4  # the least log-probability kept (exp() of it is 0 in float64)


class RemoteMember(VllmDialect, MemberBackend):
    """A member served by an OpenAI-compatible server (see the module docstring).

    Use :meth:`connect` (what ``load_member("openai:URL,...")`` calls): it reaches the
    server, picks the model, detects the dialect and checks the vocabulary.
    """

    concurrent = True  # the session steps it in a thread: the server does the work
    sparse = True  # top-k sets

    def __init__(
        self,
        name: str,
        client: ServerClient,
        model: str,
        tokenizer: Any,
        top_k: int = 20,
        dialect: str = "generic",
        context_window: int = 2048,
    ) -> None:
        self.name, self.model, self.tokenizer, self._client = name, model, tokenizer, client
        self.url, self.timeout = client.url, client.timeout  # the URL without credentials
        self.k, self.dialect, self.context_window = top_k, dialect, context_window
        self.width = top_k + 1  # slots of a packed set: the top k and a scored token's own entry
        self._pool = ThreadPoolExecutor(_MAX_WORKERS, thread_name_prefix=f"packllm-{name}")
        eos = tokenizer.eos_token_id
        self.eos_token_ids = frozenset() if eos is None else frozenset({int(eos)})
        self.server_adds_bos = False  # learnt by check_vocabulary
        self.names_tokens = False  # learnt by check_limits

    @property
    def requests(self) -> int:
        """Requests sent to the server so far."""
        return self._client.requests

    # ---- connecting ------------------------------------------------------------------------

    @classmethod
    def connect(cls, spec: Any, tokenizer: Any) -> RemoteMember:
        """Reach ``spec.url``, choose the model, detect the dialect, check the vocabulary."""
        api_key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        client = ServerClient(spec.name or spec.display_name, spec.url, api_key, spec.timeout, _MAX_WORKERS)
        try:
            member = cls._connect(client, spec, tokenizer)
        except BaseException:
            client.close()  # a failed connection leaves nothing open
            raise
        return member

    @classmethod
    def _connect(cls, client: ServerClient, spec: Any, tokenizer: Any) -> RemoteMember:
        where = f"member {spec.display_name!r} at {client.url}"
        try:
            models = client.get("models").get("data")
        except BackendError as exc:
            raise ModelLoadError(f"{where}: cannot list the server's models ({exc.reason})") from None
        if not isinstance(models, list) or not all(isinstance(m, dict) and "id" in m for m in models):
            raise ModelLoadError(f"{where}: the server's model list is malformed ({client.redact(repr(models))[:120]})")
        ids = [str(m["id"]) for m in models]
        if spec.model:
            if spec.model not in ids:
                raise ModelLoadError(f"{where}: the server has no model {spec.model!r} (it has {ids[:20]})")
            chosen = models[ids.index(spec.model)]
        elif len(models) == 1:
            chosen = models[0]
        else:
            raise ModelLoadError(f"{where}: the server has {len(ids)} models {ids[:20]}; name one with ',model=NAME'")
        dialect = "vllm" if chosen.get("owned_by") == "vllm" else "generic"
        stated = chosen.get("max_model_len")
        if stated is not None and (isinstance(stated, bool) or not isinstance(stated, int) or stated < 2):
            raise ModelLoadError(f"{where}: the server states max_model_len={stated!r:.40}, not a whole number >= 2")
        window = stated or min(int(getattr(tokenizer, "model_max_length", 0) or 0), 8192)
        name = client.member = spec.name or str(chosen["id"])  # error texts name the member as it is named
        member = cls(name, client, str(chosen["id"]), tokenizer, spec.top_k, dialect, window or 2048)
        member.check_vocabulary()
        member.check_limits()
        return member

    def check_vocabulary(self) -> None:
        """Raise :class:`ModelLoadError` when the server tokenizes a probe text otherwise than the local tokenizer."""
        probe = "Vocabulary check: def f(x):\n    return x * 42  # ünïcode"
        local = self.encode(probe)
        # without a tokenize endpoint (HTTP 404), the vocabulary is checked by use
        if self.dialect == "vllm":
            asked = self._client.post("/tokenize", {"model": self.model, "prompt": probe}, missing_ok=True)
        else:
            asked = self._client.post("/extras/tokenize", {"input": probe}, missing_ok=True)
        got = asked.get("tokens")
        if got is not None and (not isinstance(got, list) or not all(type(t) is int for t in got)):
            raise self._client.error(f"a malformed tokenize response (tokens {got!r:.80})")
        bos = self.tokenizer.bos_token_id
        sample = list(got) if got is not None else local  # without a tokenize endpoint: as the local tokenizer
        self.server_adds_bos = bos is not None and bool(sample) and sample[0] == bos

        def text_ids(ids: Sequence[int]) -> list[int]:  # servers differ in adding the BOS
            return list(ids[1:] if ids and ids[0] == bos else ids)

        if got is not None and text_ids(got) != text_ids(local):
            raise ModelLoadError(
                f"member {self.name!r} at {self.url}: the served model's vocabulary is not the local tokenizer's "
                f"(a probe text gives ids {list(got)[:8]}... there, {local[:8]}... here); give ',tokenizer=' the "
                "served model's own files"
            )

    # ---- facts -----------------------------------------------------------------------------

    @property
    def logits_width(self) -> int:
        return len(self.tokenizer)

    @cached_property
    def identity(self) -> dict[str, str]:
        return {"name": self.name, "model": f"{self.url}#{self.model}", "dtype": "remote"}

    @cached_property
    def _no_special_tokens(self) -> dict[str, float]:
        """A logit bias that keeps the server from sampling special tokens (its log-probabilities stay raw)."""
        return {str(i): -100.0 for i in sorted(set(self.tokenizer.all_special_ids))[:300]}

    @cached_property
    def _ids_of_pieces(self) -> dict[str, int]:
        """Token text -> id, for servers that key top-k sets by text (ordinary tokens win ties)."""
        table: dict[str, int] = {}
        special = set(self.tokenizer.all_special_ids)
        for i in range(len(self.tokenizer)):
            piece = self.tokenizer.decode([i], skip_special_tokens=False)
            if piece not in table or (table[piece] in special and i not in special):
                table[piece] = i
        return table

    # ---- operations --------------------------------------------------------------------------

    def prefill(
        self, rows: Sequence[Sequence[int]], rollback: bool = False, checkpoint: Callable[[], None] | None = None
    ) -> Prefill:
        """Every position's top-k set of every row (one request per row with vLLM, per position otherwise)."""
        rows = [[int(t) for t in r] for r in rows]
        width = max(len(r) for r in rows)
        if self.dialect == "vllm":
            per_row = self._each(self._prompt_sets, rows)
        else:
            per_row = []
            for row in rows:
                if checkpoint is not None:
                    checkpoint()
                per_row.append(torch.stack(self._each(self._next_set, [row[: t + 1] for t in range(len(row))])))
        states = torch.zeros(len(rows), width, 2 * self.width)
        pads = [width - len(r) for r in rows]
        for b, sets in enumerate(per_row):
            states[b, pads[b] :] = sets
        return Prefill(states=states, pads=pads, cache=[list(r) for r in rows])

    def scores(self, states: torch.Tensor) -> SparseScores:
        """The packed sets of ``states`` [N, 2(k + 1)] (ids, then log-probabilities)."""
        n = states.shape[-1] // 2
        return SparseScores(states[..., :n].long(), states[..., n:].float())

    def step(self, cache: list[list[int]], ids: Sequence[int]) -> SparseScores:
        for row, t in zip(cache, ids, strict=True):
            row.append(int(t))
        return self.scores(torch.stack(self._each(self._next_set, [list(r) for r in cache])))

    def extend(self, cache: list[list[int]], feeds: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        out = {}
        for b, fed in feeds.items():
            start = len(cache[b])
            cache[b].extend(int(t) for t in fed)
            prefixes = [cache[b][: start + i + 1] for i in range(len(fed))]
            out[b] = torch.stack(self._each(self._next_set, prefixes))
        return out

    def crop(self, cache: list[list[int]], row: int, length: int) -> None:
        del cache[row][length:]

    def fork(self, cache: list[list[int]], row: int) -> list[list[int]]:
        return [list(cache[row])]

    # ---- requests ----------------------------------------------------------------------------

    def _each(self, ask: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[ask(x) for x in items]``, concurrently. At the first failure the requests not yet sent
        are cancelled, the ones under way end (each within ``timeout``), and the failure is
        raised: a failed operation leaves no work behind."""
        futures = [self._pool.submit(ask, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures)
            raise

    def _prompt_text(self, ids: Sequence[int]) -> str:
        """The text a generic server reads for ``ids`` (a leading BOS is left to a server that adds its own)."""
        lead = 1 if self.server_adds_bos and ids and ids[0] == self.tokenizer.bos_token_id else 0
        return str(self.tokenizer.decode(list(ids[lead:]), skip_special_tokens=False))

    def _top(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        """The first ``top_logprobs`` set of a completion response."""
        try:
            top = data["choices"][0]["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise self._client.error(f"a malformed completion response ({reason(exc)})") from None
        if not isinstance(top, Mapping):
            raise self._client.error(f"a malformed completion response (top_logprobs {top!r:.80})")
        return top

    def _next_set(self, ids: Sequence[int]) -> torch.Tensor:
        """The packed top-k set [2(k + 1)] of the token after ``ids``."""
        if self.dialect == "vllm":
            body = self._body({"prompt": list(ids)})
        else:  # a sampled end token would end the completion before its log-probabilities are sent
            body = {"model": self.model, "max_tokens": 1, "logprobs": self.k, "temperature": 0.0}
            body.update(prompt=self._prompt_text(ids), logit_bias=self._no_special_tokens)
        top = self._top(self._client.post("completions", body))
        try:
            return self._pack(top)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._client.error(f"a malformed completion response ({reason(exc)})") from None

    def _found(self, top: Mapping[str, Any]) -> dict[int, float]:
        """A server's {token: logprob} as {id: logprob}, tokens it names that are not ours left out."""
        found: dict[int, float] = {}
        try:
            for key, value in top.items():
                token, value = self._token_id(str(key)), float(value)
                if value > 1e-3:
                    raise ValueError(f"a log-probability above 0 ({value:g})")
                if token is not None and math.isfinite(value):  # a probability of 0 stays finite in float32
                    found[token] = max(value, _LEAST, found.get(token, -math.inf))
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._client.error(f"a malformed log-probability set ({reason(exc)}: {dict(top)!r:.80})") from None
        return found

    def _pack(self, top: Mapping[str, Any], own: int | None = None) -> torch.Tensor:
        """A server's {token: logprob} as [ids(k + 1), logprobs(k + 1)]: its k best, and ``own``
        (a prompt token, which must be there), padded by repeating the best entry."""
        found = self._found(top)
        best = sorted(found.items(), key=lambda item: -item[1])[: self.k]
        if own is not None:
            if own not in found:
                raise ValueError(f"no log-probability for the prompt token {own}")
            if own not in dict(best):
                best.append((own, found[own]))
        if not best:
            raise ValueError("no known token in the top log-probabilities")
        best += best[:1] * (self.width - len(best))
        return torch.tensor([[float(i) for i, _ in best], [v for _, v in best]], dtype=torch.float64).flatten().float()

    def _token_id(self, key: str) -> int | None:
        if key.startswith("token_id:"):
            token = int(key[len("token_id:") :])
        elif self.dialect == "vllm" and key.lstrip("-").isdigit():
            token = int(key)
        elif key == "" and self.tokenizer.eos_token_id is not None:
            return int(self.tokenizer.eos_token_id)  # llama.cpp's servers show special tokens as ""
        else:
            return self._ids_of_pieces.get(key)
        return token if 0 <= token < self.logits_width else None

    def close(self) -> None:
        """Close the connections and the request threads."""
        self._client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
