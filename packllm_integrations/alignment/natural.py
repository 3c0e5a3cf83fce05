"""Natural alignment: every member reads its own tokenization of the same text.

With ``alignment="mined"`` (the authors' way) a member whose tokenizer differs from the
reference's reads the reference's tokens translated one-for-one through the vocabulary
map, an unnatural sequence. With ``alignment="natural"`` it reads the text the way its own
tokenizer cuts it. Two pieces do that, on any backend (they only use its interface):

- :class:`BatchReader` (generation): one member on a batch of texts that grow a token at a
  time. Each step the text is re-tokenized; the ids that stayed the same keep their cache,
  the changed tail is rolled back (:meth:`~..backends.base.MemberBackend.crop`) and fed
  again (usually one new token; two or three when a merge across the old boundary changed).
- :func:`natural_states` (scoring): the member's state after reading its own tokenization
  of each prefix ``text[:end]`` of a text, for many ends at once: one forward pass over the
  whole text serves every prefix whose tokenization is a prefix of the whole text's, and
  the others (a reference token ending inside one of the member's tokens) get a short
  forward of their own tail after the tokens they share with it, all of them in one
  batch where the backend can (:meth:`~..backends.base.MemberBackend.branch`).

The member's next-token distribution is then mapped into the reference vocabulary by a
:class:`~.projection.Projection`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..backends.base import MemberBackend, Prefill
from ..errors import PackLLMError, PromptTooLongError
from .projection import NaturalStates, Projection, _logits
from .vocabulary import common_prefix

__all__ = ["BatchReader", "natural_states", "token_ends", "common_prefix", "start_ids", "check_window"]

_ENCODE_CHUNK = 256  # prefixes tokenized per batched tokenizer call


def start_ids(member: MemberBackend) -> list[int]:
    """What a member reads before any text: its encoding of "" (BOS), else its EOS token.

    A member whose tokenizer adds no BOS (Qwen, SmolLM2) has no state before the first token;
    its end-of-text token is the document separator it was trained with.
    """
    ids = member.encode("")
    if ids:
        return ids
    eos = member.tokenizer.eos_token_id
    if eos is None:
        eos = min(member.eos_token_ids) if member.eos_token_ids else None
    if eos is None:
        raise PackLLMError(f"member {member.name!r} has neither a BOS nor an EOS token to start an empty text with")
    return [int(eos)]


def check_window(member: MemberBackend, n: int) -> None:
    """Raise :class:`PromptTooLongError` when ``n`` ids do not fit the member's context window."""
    if n >= member.context_window:
        raise PromptTooLongError(
            "prompt", f"<{n} tokens>", f"at most {member.context_window - 1} tokens for member {member.name!r}"
        )


class BatchReader:
    """One member reading B growing texts at once, in one batched cache.

    Each step every row is made to hold its new tokenization: the ids that changed are
    rolled back (:meth:`~..backends.base.MemberBackend.crop`) and the new tail is fed
    (:meth:`~..backends.base.MemberBackend.extend`). With the transformers backend, a row of
    several rolls back by masking (see :mod:`..backends.transformers`): with a sliding-window
    layer, the window then reaches a few fewer live tokens than when decoding the row alone.

    Build it from a batched prefill with :meth:`from_prefill`, or :meth:`start` one row.

    Example:
        >>> reader = BatchReader.start(member, member.encode("The cat"))  # doctest: +SKIP
        >>> reader.advance({0: member.encode("The cats")})  # rolls back " cat", feeds " cats"  # doctest: +SKIP
    """

    def __init__(
        self,
        member: MemberBackend,
        ids: Sequence[Sequence[int]],
        cache: Any,
        last: list[torch.Tensor],
        prev: list[torch.Tensor | None],
    ) -> None:
        self.member = member
        self.ids = [list(r) for r in ids]
        self.cache = cache
        self.state = last
        self.prev = prev
        self.last_logprobs: list[torch.Tensor | None] = [None] * len(self.ids)
        self._prev_logprobs: list[torch.Tensor | None] = [None] * len(self.ids)
        self.fed = 0
        self.rolled_back = 0

    @classmethod
    def from_prefill(cls, member: MemberBackend, ids: Sequence[Sequence[int]], prefill: Prefill) -> BatchReader:
        """From a batched prefill made with ``rollback=True``."""
        last = [prefill.last[b] for b in range(len(ids))]
        prev = [prefill.states[b, -2] if len(ids[b]) >= 2 else None for b in range(len(ids))]
        return cls(member, ids, prefill.cache, last, prev)

    @classmethod
    @torch.inference_mode()
    def start(cls, member: MemberBackend, ids: Sequence[int]) -> BatchReader:
        """One row, prefilled on ``ids``."""
        ids = list(ids) or start_ids(member)
        check_window(member, len(ids))
        return cls.from_prefill(member, [ids], member.prefill([ids], rollback=True))

    @torch.inference_mode()
    def advance(self, targets: dict[int, Sequence[int]]) -> None:
        """Make row b have read ``targets[b]`` (rows not named stay as they are)."""
        plan: dict[int, tuple[int, list[int]]] = {}
        for b, target in targets.items():
            target = list(target) or start_ids(self.member)
            ids = self.ids[b]
            if target == ids:
                continue
            check_window(self.member, len(target))
            same = common_prefix(ids, target)
            self.rolled_back += len(ids) - min(same, len(target) - 1)
            self.fed += len(target) - min(same, len(target) - 1)
            keep = same if same == len(ids) < len(target) else max(0, min(same, len(target) - 2))
            self.member.crop(self.cache, b, keep)
            plan[b] = (keep, target)
        if not plan:
            return
        states = self.member.extend(self.cache, {b: target[keep:] for b, (keep, target) in plan.items()})
        for b, (keep, target) in plan.items():
            n = len(target) - keep
            one_new = keep == len(self.ids[b]) and n == 1
            self.prev[b] = self.state[b] if one_new else (states[b][n - 2] if n >= 2 else None)
            self._prev_logprobs[b] = self.last_logprobs[b] if one_new else None
            self.last_logprobs[b] = None
            self.state[b] = states[b][n - 1]
            self.ids[b] = target

    def rescored(self, b: int, state: torch.Tensor, prev: torch.Tensor | None = None) -> None:
        """Row b's states (after its last token and, given, before it) as scored again (a served
        member's set with named tokens added): what was derived from the old ones goes."""
        self.state[b] = state
        self.last_logprobs[b] = None
        if prev is not None:
            self.prev[b] = prev
            self._prev_logprobs[b] = None

    def view(self, b: int, projection: Projection | None) -> NaturalStates:
        """Row b's current position as a one-row :class:`NaturalStates`."""
        return NaturalStates.one(
            self.member, self.ids[b], self.state[b], self.prev[b], projection, self._prev_logprobs[b]
        )

    def views(self, rows: Sequence[int], projection: Projection | None) -> NaturalStates:
        """Rows ``rows``' current positions as one :class:`NaturalStates` (its row i is ``rows[i]``),
        for one projection call over all of them. Log-probabilities before the last token that
        a row kept from its last step are reused; the others are computed, all in one call."""
        parts = [self.view(b, projection) for b in rows]
        if len(parts) == 1:
            return parts[0]
        prev = torch.cat([p.prev for p in parts])
        has_prev = torch.cat([p.has_prev for p in parts])
        known = [p.prev_logprobs for p in parts]
        prev_logprobs = None
        if any(lp is not None for lp in known) and projection is not None and projection.heal:
            missing = [i for i, lp in enumerate(known) if lp is None and bool(has_prev[i])]
            fresh = torch.log_softmax(_logits(self.member, prev[missing]), dim=-1) if missing else None
            first = next(lp for lp in known if lp is not None)
            prev_logprobs = first.new_zeros(len(parts), first.shape[-1])  # rows with no prev: never read
            for i, lp in enumerate(known):
                if lp is not None:
                    prev_logprobs[i] = lp[0]
            if fresh is not None:
                prev_logprobs[missing] = fresh
        return NaturalStates(
            last=torch.cat([p.last for p in parts]),
            prev=prev,
            last_ids=torch.cat([p.last_ids for p in parts]),
            has_prev=has_prev,
            projection=projection,
            prev_logprobs=prev_logprobs,
        )


def token_ends(member: MemberBackend, text: str, ids: Sequence[int] | None = None) -> list[int]:
    """For each token of ``member.encode(text)``, how many characters of ``text`` the tokens up
    to and including it cover completely.

    A character split over several byte tokens counts only once its last byte is in (so a
    prefix never ends inside a character). Special tokens (BOS) cover nothing.
    """
    ids = member.encode(text) if ids is None else list(ids)
    try:
        encoded, offsets = member.offsets(text)
    except NotImplementedError:  # a tokenizer without character offsets (not a "fast" one)
        raise PackLLMError(
            f"member {member.name!r}: its tokenizer gives no character offsets, which natural alignment needs; "
            "use alignment='mined'"
        ) from None
    if encoded != ids:
        raise PackLLMError(f"member {member.name!r}: its tokenizer encodes the text differently with offsets")
    special = member.special_ids
    n = len(offsets)
    starts = [len(text)] * (n + 1)  # starts[i]: smallest start of a text token at or after i
    for i in range(n - 1, -1, -1):
        s, e = offsets[i]
        real = ids[i] not in special and e > s
        starts[i] = min(starts[i + 1], s) if real else starts[i + 1]
    ends, covered = [], 0
    for i, (s, e) in enumerate(offsets):
        if ids[i] not in special and e > s:
            covered = max(covered, e)
        ends.append(min(covered, starts[i + 1]))
    return ends


@torch.inference_mode()
def natural_states(
    member: MemberBackend,
    text: str,
    ends: Sequence[int],
    prefilled: tuple[torch.Tensor, Any] | None = None,
    projection: Projection | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> NaturalStates:
    """The member's states after reading its own tokenization of ``text[:e]``, for each ``e``
    in ``ends`` (and before its last token of it, for :class:`Projection`).

    ``prefilled``: the member's states [T, S] and a one-row cache over ``member.encode(text)``
    (made with ``rollback=True`` or :meth:`~..backends.base.MemberBackend.fork`), if already
    computed (the cache may be cropped here: pass one nobody else uses). ``checkpoint`` is
    called before each forward pass (it raises to stop the request).
    """
    full = member.encode(text)
    if prefilled is None:
        check_window(member, len(full))
        if checkpoint is not None:
            checkpoint()
        prefill = member.prefill([full], rollback=True, checkpoint=checkpoint)
        states, cache = prefill.row(0), prefill.cache
    else:
        states, cache = prefilled
    distinct = sorted(set(ends))
    index = {e: i for i, e in enumerate(distinct)}
    last: list[torch.Tensor | None] = [None] * len(distinct)
    prev: list[torch.Tensor | None] = [None] * len(distinct)
    last_ids = [0] * len(distinct)
    lengths = [0] * len(distinct)
    fixups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for start in range(0, len(distinct), _ENCODE_CHUNK):
        chunk = distinct[start : start + _ENCODE_CHUNK]
        for j, ids in enumerate(member.encode_batch([text[:e] for e in chunk])):
            slot = start + j
            ids = list(ids) or start_ids(member)
            last_ids[slot], lengths[slot] = ids[-1], len(ids)
            p = common_prefix(ids, full)
            if p == len(ids):
                last[slot] = states[p - 1]
                prev[slot] = states[p - 2] if p >= 2 else None
            else:
                fixups.setdefault((p, tuple(ids[p:])), []).append(slot)
                if len(ids) - p == 1 and p >= 1:
                    prev[slot] = states[p - 1]
    # The prefixes whose tokens end differently from the whole text's: their tails, read after
    # the shared tokens, all at once where the backend can (MemberBackend.branch).
    for p, tail in fixups:
        check_window(member, p + len(tail))
    if fixups and checkpoint is not None:
        checkpoint()
    fed = member.branch(cache, 0, list(fixups)) if fixups else []
    for ((_, tail), slots), out in zip(fixups.items(), fed, strict=True):
        for slot in slots:
            last[slot] = out[-1]
            if len(tail) >= 2:
                prev[slot] = out[-2]
    order = [index[e] for e in ends]
    zero = torch.zeros_like(last[0])  # type: ignore[arg-type]
    return NaturalStates(
        last=torch.stack([last[i] for i in order]),  # type: ignore[misc]
        prev=torch.stack([prev[i] if prev[i] is not None else zero for i in order]),
        last_ids=torch.tensor([last_ids[i] for i in order]),
        has_prev=torch.tensor(
            [prev[i] is not None and lengths[i] >= 2 and last_ids[i] not in member.special_ids for i in order]
        ),
        projection=projection,
    )
