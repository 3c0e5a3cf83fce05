"""Natural alignment's output side: a member's next-token distribution, read at its own token
boundaries, as scores over the reference vocabulary.

:class:`NaturalStates` holds a member's states at some text points (after its last token
there, and before it); :class:`Projection` turns them into reference-vocabulary scores. The
engine builds one projection per (reference, member) pair and keeps it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..backends.base import MemberBackend, dense
from .mined import VocabMap
from .vocabulary import text_token_order, token_bytes

__all__ = ["NaturalStates", "Projection", "UNREACHED_SHARE"]

UNREACHED_SHARE = 0.01
"""The share of a member's probability that the reference tokens none of its tokens reach
get together (see :class:`Projection`)."""


@dataclass
class NaturalStates:
    """A member's states at N text points, each after reading its own tokenization of the text
    up to there: ``last`` after its last token (id ``last_ids``), ``prev`` before it (valid
    where ``has_prev``). With a ``projection``, :meth:`scores` gives reference-vocabulary
    scores; slicing keeps it."""

    last: torch.Tensor  # [N, S]
    prev: torch.Tensor  # [N, S]
    last_ids: torch.Tensor  # [N]
    has_prev: torch.Tensor  # [N] bool
    projection: Projection | None = None
    prev_logprobs: torch.Tensor | None = None  # [N, W] log-softmax of ``prev``'s logits, if known

    @property
    def shape(self) -> torch.Size:
        return self.last.shape

    def __len__(self) -> int:
        return int(self.last.shape[0])

    def __getitem__(self, index: slice) -> NaturalStates:
        prev = None if self.prev_logprobs is None else self.prev_logprobs[index]
        rows = (self.last[index], self.prev[index], self.last_ids[index], self.has_prev[index])
        return NaturalStates(*rows, self.projection, prev)

    @staticmethod
    def one(
        member: MemberBackend,
        ids: Sequence[int],
        state: Any,
        prev: Any,
        projection: Projection | None,
        prev_logprobs: torch.Tensor | None = None,
    ) -> NaturalStates:
        has_prev = prev is not None and len(ids) >= 2 and ids[-1] not in member.special_ids
        return NaturalStates(
            last=state[None],
            prev=(prev if prev is not None else torch.zeros_like(state))[None],
            last_ids=torch.tensor([ids[-1]]),
            has_prev=torch.tensor([has_prev]),
            projection=projection,
            prev_logprobs=None if prev_logprobs is None else prev_logprobs[None],
        )


class Projection:
    """A member's next-token distribution, read at its own token boundaries, as scores over the
    reference vocabulary (natural alignment's output side).

    - Partition: each member token's probability goes to the longest reference token its
      bytes start with (" there" -> " there", or " the" + ... when the reference lacks it), so
      the member's belief about how the text goes on lands on the reference token that text
      would start with.
    - Healing: the reference's position may end inside one of the member's tokens (the
      member's tokenization of the text so far then ends in a fragment, say " gover").
      The member's last token ``u`` is also read from the state before it: every member
      token extending ``u`` (" government") gives its probability to the reference token
      its remaining bytes start with ("nment" -> the longest reference prefix), and ``u``
      itself, followed by the next-token partition, gives the rest.
    - Two tokenizers with the same token bytes (the cross-tokenizer path forced on one
      tokenizer) cut the text at the same places: there is nothing to heal, and the
      partition is the identity.
    - Reference columns no member token reaches are not ruled out. One whose MinED token
      (the authors' map) the partition leaves unused, such as a special token, takes that
      token's probability (split evenly among the columns mapped to it). The others
      together get ``UNREACHED_SHARE`` of the member's probability, shared in proportion
      to their MinED value. Giving each its whole MinED value instead counts a member
      token's probability again in every column mapped to it: with Gemma 3's 262k tokens
      as the reference, those columns held 6 to 46 times the member's whole probability,
      and SmolLM2's prompt perplexity read about 20 times too high.

    Scores are log-probabilities up to a constant shared by all columns (they sum to
    ``1 + UNREACHED_SHARE`` times the member's reached mass); the fusion's softmax
    normalises them.
    """

    def __init__(self, reference: MemberBackend, member: MemberBackend, vmap: VocabMap) -> None:
        self.vmap = vmap
        self.vocab = reference.vocab_size
        ref_special = reference.special_ids
        by_bytes: dict[bytes, int] = {}
        reference_bytes = token_bytes(reference.tokenizer)
        for i in text_token_order(reference.tokenizer, ref_special):  # "(" before the byte token <0x28>
            b = reference_bytes[i] if i < self.vocab else b""
            if b and b not in by_bytes:
                by_bytes[b] = i
        self._ref = by_bytes
        self._prefix_memo: dict[bytes, int | None] = {}
        self._longest = max((len(b) for b in by_bytes), default=0)
        mem_special = member.special_ids
        member_bytes = token_bytes(member.tokenizer)
        self._bytes = [b if i not in mem_special else b"" for i, b in enumerate(member_bytes)]
        width = member.logits_width
        target = torch.full((width,), -1, dtype=torch.long)
        for t, b in enumerate(self._bytes[:width]):
            v = self._longest_prefix(b)
            if v is not None:
                target[t] = v
        ref_eos = sorted(i for i in reference.eos_token_ids if i < self.vocab)
        if ref_eos:
            for t in member.eos_token_ids:
                if t < width:
                    target[t] = ref_eos[0]
        keep = target >= 0
        self._src = keep.nonzero().squeeze(-1)
        self._dst = target[keep]
        order = sorted((b, t) for t, b in enumerate(self._bytes[:width]) if b)
        self._sorted = [b for b, _ in order]
        self._sorted_ids = [t for _, t in order]
        self._extensions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sources: dict[int, list[int]] | None = None
        self.heal = reference_bytes != member_bytes
        # Unreached reference columns whose MinED token the partition leaves unused (a special
        # token, say) take that token's probability, split evenly among the columns mapped to it.
        mined = vmap.output[: self.vocab]
        used = torch.zeros(width + 1, dtype=torch.bool)
        used[self._src] = True
        used[width:] = True  # the floor sentinel: no probability of its own
        reachable = torch.zeros(self.vocab, dtype=torch.bool)
        reachable[self._dst] = True
        self._free = ~reachable & ~used[mined.clamp(max=width)]
        self._free_shift = torch.bincount(mined, minlength=width + 1)[mined].float().log()

    def _longest_prefix(self, b: bytes) -> int | None:
        if b in self._prefix_memo:
            return self._prefix_memo[b]
        found = None
        for n in range(min(len(b), self._longest), 0, -1):
            found = self._ref.get(b[:n])
            if found is not None:
                break
        self._prefix_memo[b] = found
        return found

    def sources(self, columns: Sequence[int], most: int) -> list[int]:
        """Member tokens whose probability the partition sends to the reference ``columns``, at
        most ``most``: each column's shortest first, taken in turns over the columns (so every
        column's own-bytes token comes before any column's second); for a column no token
        reaches, its MinED token. A served member is asked
        for these to score the columns (the other members' candidates) from its own
        log-probabilities.
        """
        width = len(self._bytes)
        mined = self.vmap.output
        # a column no token reaches takes its share through its MinED token (see the class docstring)
        lists = [self.column_sources(int(c)) or [t for t in [int(mined[c])] if t < width] for c in columns]
        out: dict[int, None] = {}  # ordered, each token once (a MinED token may also reach a column)
        for depth in range(max((len(ids) for ids in lists), default=0)):
            for ids in lists:
                if depth < len(ids):
                    out[ids[depth]] = None
                    if len(out) == most:
                        return list(out)
        return list(out)

    def column_sources(self, column: int) -> list[int]:
        """The member tokens the partition sends to reference ``column``, shortest first."""
        if self._sources is None:
            by_column: dict[int, list[int]] = {}
            for t, v in zip(self._src.tolist(), self._dst.tolist(), strict=True):
                by_column.setdefault(v, []).append(t)
            for ids in by_column.values():
                ids.sort(key=lambda t: (len(self._bytes[t]), t))
            self._sources = by_column
        return self._sources.get(column, [])

    def extension_sources(self, token: int, columns: Sequence[int], most: int) -> list[int]:
        """Member tokens extending ``token`` whose remaining bytes the healing sends to the
        reference ``columns`` (see :meth:`extensions`), shortest first, at most ``most``."""
        src, dst = self.extensions(token)
        if not src.numel():
            return []
        hit = torch.isin(dst, torch.tensor([int(c) for c in columns], dtype=torch.long))
        found = src[hit].tolist()
        found.sort(key=lambda t: (len(self._bytes[t]), t))
        return found[:most]

    def extensions(self, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Member tokens whose bytes extend ``token``'s, and the reference token each one's
        remaining bytes start with."""
        hit = self._extensions.get(token)
        if hit is None:
            u = self._bytes[token] if token < len(self._bytes) else b""
            src, dst = [], []
            if u:
                i = bisect.bisect_right(self._sorted, u)  # u itself sorts just before its extensions
                while i < len(self._sorted) and self._sorted[i].startswith(u):
                    v = self._longest_prefix(self._sorted[i][len(u) :])
                    if v is not None:
                        src.append(self._sorted_ids[i])
                        dst.append(v)
                    i += 1
            hit = (torch.tensor(src, dtype=torch.long), torch.tensor(dst, dtype=torch.long))
            self._extensions[token] = hit
        return hit

    def scores(self, member: MemberBackend, states: NaturalStates) -> torch.Tensor:
        """Reference-vocabulary scores [N, V] (float32) of the member at each of ``states``."""
        return self.scores_and_logprobs(member, states)[0]

    def scores_and_logprobs(self, member: MemberBackend, states: NaturalStates) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`scores`, and the member's own log-probabilities after ``states.last`` [N, W]."""
        lp_last = torch.log_softmax(_logits(member, states.last), dim=-1)
        p_last = lp_last.exp()
        out = torch.zeros(len(states), self.vocab, dtype=torch.float32, device=p_last.device)
        out.index_add_(1, self._dst.to(out.device), p_last.index_select(1, self._src.to(out.device)))
        fallback = self.vmap.member_logits(lp_last)
        rows = states.has_prev.nonzero().squeeze(-1).tolist() if self.heal else []
        if rows:
            if states.prev_logprobs is not None:
                lp_prev = states.prev_logprobs[rows]
            else:
                lp_prev = torch.log_softmax(_logits(member, states.prev[rows]), dim=-1)
            p_prev = lp_prev.exp()
            for j, i in enumerate(rows):
                u = int(states.last_ids[i])
                out[i] *= p_prev[j, u]
                fallback[i] += lp_prev[j, u]
                src, dst = self.extensions(u)
                if src.numel():
                    out[i].index_add_(0, dst.to(out.device), p_prev[j].index_select(0, src.to(out.device)))
        reached = out > 0
        free = self._free.to(out.device) & ~reached
        shared = fallback.masked_fill(reached | free, -math.inf)
        share = out.sum(-1, keepdim=True).clamp(min=1e-30).log() + math.log(UNREACHED_SHARE)
        shared = shared - torch.logsumexp(shared, dim=-1, keepdim=True).clamp(min=-1e30) + share
        scores = torch.where(free, fallback - self._free_shift.to(out.device), shared)
        scores[reached] = out[reached].log()  # the log of the reached columns only (a minority)
        return scores, lp_last


def _logits(member: MemberBackend, states: torch.Tensor) -> torch.Tensor:
    """A member's dense scores [N, W] of states (a sparse set filled with its floor)."""
    return dense(member.scores(states), member.logits_width)
