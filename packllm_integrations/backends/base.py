"""The member-backend interface: what the engine needs of one language model of a pack.

A backend is one file (see :mod:`.transformers`); the engine, the decoding session, the
alignment and the scoring code only use what is declared here. Everything a backend keeps
between calls (a KV cache, a server connection) lives in an opaque *cache* object that the
backend creates in :meth:`MemberBackend.prefill` and the session holds for one request.

Shapes: B rows (prompts), L positions, S a backend's per-position state width, W the
member's logits width.

What a new backend implements:

- facts: ``name``, ``context_window``, ``eos_token_ids``, ``tokenizer`` (a
  :class:`Tokenizer`), ``logits_width``, ``identity``; ``vocab_size``, ``special_ids``,
  ``tokenizer_fingerprint``, ``encode``, ``render_chat`` have defaults built on the tokenizer;
- :meth:`~MemberBackend.prefill`: rows of token ids -> per-position states and a cache;
- :meth:`~MemberBackend.scores`: states -> next-token scores, dense ``[N, W]`` logits or
  :class:`SparseScores` (top-k ids and log-probabilities, as a server returns them);
- :meth:`~MemberBackend.step` (one token per row), :meth:`~MemberBackend.extend` (several
  tokens for some rows), :meth:`~MemberBackend.crop` (roll a row back) and
  :meth:`~MemberBackend.fork` (one row as a cache of its own).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import torch

from ..alignment.vocabulary import special_ids, vocabulary_fingerprint
from ..structured.chat_format import render, template_renders_tools
from ..structured.tools import Tool

__all__ = ["MemberBackend", "Prefill", "Scores", "SparseScores", "Tokenizer", "dense"]


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the engine uses (alignment, text, chat)."""

    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    all_special_ids: list[int]

    def __len__(self) -> int: ...

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str: ...


@dataclass(frozen=True)
class SparseScores:
    """Next-token scores as a top-k set: ``ids`` [N, k] and their ``logprobs`` [N, k].

    Tokens outside the set get :meth:`floor`: the probability the set leaves over, spread
    evenly over the ``width - k`` missing tokens, so the dense distribution sums to one. A set
    may hold more than a top-k (a scored token's own entry, tokens a caller named), so the
    floor may lie above its lowest entry. A set may repeat an id with the same log-probability
    (padding); what the repeats hold counts once.

    >>> s = SparseScores(torch.tensor([[2, 0]]), torch.tensor([[-0.1, -3.0]]))
    >>> round(float(s.dense(4).exp().sum()), 6)
    1.0
    """

    ids: torch.Tensor  # [N, k] long
    logprobs: torch.Tensor  # [N, k] float32

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index: Any) -> SparseScores:
        ids, logprobs = self.ids[index], self.logprobs[index]
        if ids.dim() == 1:
            ids, logprobs = ids[None], logprobs[None]
        return SparseScores(ids, logprobs)

    @classmethod
    def stacked(cls, sets: Sequence[SparseScores]) -> SparseScores:
        """Sets of several widths as one, each row padded by repeating its first entry."""
        width = max(int(s.ids.shape[-1]) for s in sets)

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t[:, :1].expand(len(t), width - t.shape[-1])], dim=-1)

        return cls(torch.cat([padded(s.ids) for s in sets]), torch.cat([padded(s.logprobs) for s in sets]))

    def floor(self, width: int) -> torch.Tensor:
        """The log-probability [N, 1] of each row's tokens outside its set."""
        lp = self.logprobs.double()
        ids, order = self.ids.sort(dim=-1)
        first = torch.ones_like(ids, dtype=torch.bool)
        first[..., 1:] = ids[..., 1:] != ids[..., :-1]  # each id counted once
        held = lp.gather(-1, order).exp().where(first, torch.zeros((), dtype=lp.dtype))
        missing = (width - first.sum(-1, keepdim=True)).clamp(min=1)
        rest = (1 - held.sum(-1, keepdim=True)).clamp(min=1e-30)
        return (rest.log() - missing.double().log()).float()

    def dense(self, width: int) -> torch.Tensor:
        """Log-probabilities [N, width]: the set's own, :meth:`floor` elsewhere."""
        out = self.floor(width).expand(len(self), width).clone()
        return out.scatter_(-1, self.ids, self.logprobs.float())


Scores = torch.Tensor | SparseScores
"""Next-token scores of N positions: dense logits [N, W], or a :class:`SparseScores` set."""


def dense(scores: Scores, width: int) -> torch.Tensor:
    """``scores`` as a dense float32 tensor [N, width] (sparse sets are filled with their floor)."""
    if isinstance(scores, SparseScores):
        return scores.dense(width)
    return scores


@dataclass
class Prefill:
    """A batched prefill: left-padded per-position states, each row's padding, and the cache."""

    states: torch.Tensor  # [B, L, S]; position t's state predicts the token after it
    pads: list[int]
    cache: Any

    def row(self, b: int, n: int | None = None) -> torch.Tensor:
        """Row b's states [n, S] (its first ``n`` positions; all of them by default)."""
        pad = self.pads[b]
        stop = self.states.shape[1] if n is None else pad + n
        return self.states[b, pad:stop]

    @property
    def last(self) -> torch.Tensor:
        """Every row's last state [B, S] (its next-token state)."""
        return self.states[:, -1]


class MemberBackend(ABC):
    """One language model of a pack, behind the interface the engine uses.

    Subclasses set ``name``, ``context_window``, ``eos_token_ids`` and ``tokenizer``, and
    implement the abstract methods. A cache is the backend's own object, made by
    :meth:`prefill`; rows are addressed by their index in the prefilled batch, and each
    row's length is the number of ids it holds.
    """

    name: str
    context_window: int
    eos_token_ids: frozenset[int]
    tokenizer: Tokenizer
    concurrent: bool = False
    """Whether the member's steps wait on something other than this process's CPU (a server,
    a GPU): the session then steps it in a thread, alongside the others."""
    sparse: bool = False
    """Whether the member's scores are top-k sets (:class:`SparseScores`) rather than logits."""
    splits_cores: bool = False
    """Whether :meth:`share_cores` sets how many cores the member's steps use (llama.cpp): the
    session then steps several such members at once, each on its share of the cores."""
    names_tokens: bool = False
    """Whether :meth:`named_scores` asks for more than the member already gave (a server that
    returns the log-probabilities of tokens the caller names); a sparse member with it is
    asked, after each step, for the candidates the other members propose."""

    # ---- facts -------------------------------------------------------------------------

    @property
    @abstractmethod
    def logits_width(self) -> int:
        """Number of columns of the member's scores (may exceed the tokenizer's length)."""

    @property
    @abstractmethod
    def identity(self) -> dict[str, str]:
        """What tells two members apart in a cache key (name, where the weights come from...)."""

    @cached_property
    def vocab_size(self) -> int:
        """Number of real tokens (the tokenizer's length; padded logit columns excluded)."""
        return min(len(self.tokenizer), self.logits_width)

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        """A hash of the vocabulary (id -> token string, special ids): equal means same tokenizer."""
        return vocabulary_fingerprint(self.tokenizer)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of special and control tokens (never treated as ordinary text)."""
        return frozenset(special_ids(self.tokenizer))

    @property
    def device(self) -> torch.device:
        """Where the member's scores live (the engine moves them to the reference's device)."""
        return torch.device("cpu")

    @property
    def pad_id(self) -> int:
        """The id that fills padded positions (never attended to)."""
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    # ---- text ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, with the tokenizer's own special tokens (BOS, if any)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for several texts in one tokenizer call."""
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of ``text`` and each one's character span (needs a "fast" tokenizer)."""
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens left out."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    @cached_property
    def renders_tools(self) -> bool:
        """Whether the chat template renders tools, calls and results (else they are written as text)."""
        return template_renders_tools(self.tokenizer)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool] = ()) -> str:
        """Render chat messages (and the tools offered) as this member expects, ready for its reply.

        Uses the tokenizer's chat template, with the tools where the template renders them
        (see :mod:`~packllm_integrations.structured.chat_format`). A member without one gets a plain format::

            System: ...
            User: ...
            Assistant: ...
            Assistant:
        """
        return render(self.tokenizer, messages, tools, self.renders_tools)

    # ---- operations ----------------------------------------------------------------------

    @abstractmethod
    def prefill(
        self, rows: Sequence[Sequence[int]], rollback: bool = False, checkpoint: Callable[[], None] | None = None
    ) -> Prefill:
        """Read ``rows`` (lists of ids) in one batch; their states and a cache holding them.

        ``rollback``: the cache must allow :meth:`crop` and :meth:`fork` anywhere (natural
        alignment); without it a backend may keep less (a sliding window's last positions).
        ``checkpoint``: called between the pieces of a long prefill (it raises to stop the
        request, e.g. at its deadline), so a backend that reads long rows in chunks calls it
        between them.
        """

    @abstractmethod
    def scores(self, states: torch.Tensor) -> Scores:
        """The next-token scores [N, W] of states [N, S] (dense logits or a sparse set)."""

    @abstractmethod
    def step(self, cache: Any, ids: Sequence[int]) -> Scores:
        """Feed one id to every row of ``cache``; the next-token scores [B, W] after it."""

    @abstractmethod
    def extend(self, cache: Any, feeds: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """Feed ``feeds[b]`` (one or more ids) to row b; the states [n_b, S] of the fed ids."""

    def share_cores(self, threads: int | None) -> None:  # noqa: B027 (most backends cannot)
        """Use ``threads`` cores for the next steps (None: the member's own number); prefill
        keeps its own. Only for a member that :attr:`splits_cores`."""

    def named_scores(self, cache: Any, scores: Scores, named: Mapping[int, Sequence[int]]) -> Scores:
        """``scores`` (the next-token scores of every row of ``cache``) with row b's set holding
        the ids ``named[b]`` too, each at the member's own log-probability.

        Dense scores already hold every id: the default returns ``scores`` as they are. A
        backend whose :attr:`names_tokens` is true asks its server (see :mod:`.remote`).
        """
        return scores

    @abstractmethod
    def crop(self, cache: Any, row: int, length: int) -> None:
        """Forget row ``row``'s ids from position ``length`` on."""

    @abstractmethod
    def fork(self, cache: Any, row: int) -> Any:
        """Row ``row`` as a new one-row cache that later calls on either cache leave alone."""

    def branch(self, cache: Any, row: int, branches: Sequence[tuple[int, Sequence[int]]]) -> list[torch.Tensor]:
        """The states [n_i, S] of each ``(p, tail)``'s ids fed after row ``row``'s first ``p``.

        Natural alignment's walk asks for these: a member's own tokenization of a prefix of
        the text can end in tokens its tokenization of the whole text does not have. Afterwards
        the row holds at most its first ``min(p)`` ids (a backend may leave it whole). This
        default feeds the branches one after another, the deepest first, cropping the row
        before each; a backend that can read them side by side in one pass overrides it.
        """
        out: list[torch.Tensor | None] = [None] * len(branches)
        for i in sorted(range(len(branches)), key=lambda i: -branches[i][0]):
            p, tail = branches[i]
            self.crop(cache, row, p)
            out[i] = self.extend(cache, {row: list(tail)})[row]
        return out  # type: ignore[return-value]
