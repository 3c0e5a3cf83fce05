"""Natural alignment: every member reads its own tokenization of the same text.

With ``alignment="mined"`` (the authors' way) a member whose tokenizer differs from the
reference's reads the reference's tokens translated one-for-one through the vocabulary
map, an unnatural sequence. With ``alignment="natural"`` it reads the text the way its own
tokenizer cuts it. Two pieces do that:

- :class:`BatchReader` (generation): one member on a batch of texts that grow a token at a
  time. Each step the text is re-tokenized; the ids that stayed the same keep their KV
  cache, the changed tail is dropped and fed again (usually one new token; two or three
  when a merge across the old boundary changed).
- :func:`natural_states` (scoring): the member's state after reading its own tokenization
  of each prefix ``text[:end]`` of a text, for many ends at once: one forward pass over the
  whole text serves every prefix whose tokenization is a prefix of the whole text's, and
  the others (a reference token ending inside one of the member's tokens) get a short
  forward from the cropped cache.

The member's next-token distribution is then mapped into the reference vocabulary by the
same vocabulary map as in "mined" mode (output side), so both modes fuse in one space.

Caches here are ``transformers.DynamicCache()`` objects built without a config: every
layer keeps every position, so a cache can be cropped anywhere. (The config-built cache of
sliding-window models such as Gemma 3 keeps only the last window and refuses to crop
further back; attention still applies the sliding window through the mask.)
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from .alignment import VocabMap, token_bytes
from .errors import PackLLMError, PromptTooLongError
from .members import Member

__all__ = [
    "BatchReader",
    "NaturalStates",
    "Projection",
    "projection",
    "natural_states",
    "token_ends",
    "common_prefix",
    "new_cache",
    "row_cache",
    "start_ids",
]

_ENCODE_CHUNK = 256  # prefixes tokenized per batched tokenizer call


def new_cache() -> Any:
    """An empty KV cache whose layers keep every position (croppable anywhere)."""
    return DynamicCache()


def row_cache(cache: Any, row: int, pad: int) -> Any:
    """Row ``row`` of a batched cache (``pad`` left-padding positions dropped), as a new cache.

    The tensors are shared, not copied: cropping slices and feeding concatenates, so the
    new cache never writes into the old one.
    """
    layers = []
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False):
            raise PackLLMError("a sliding-window cache layer cannot be split into rows; build it with new_cache()")
        layers.append((layer.keys[row : row + 1, :, pad:, :], layer.values[row : row + 1, :, pad:, :]))
    return DynamicCache(ddp_cache_data=layers)


def crop_to(cache: Any, length: int) -> None:
    """Drop the cached positions from ``length`` on."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def start_ids(member: Member) -> list[int]:
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


def _check_window(member: Member, n: int) -> None:
    if n >= member.context_window:
        raise PromptTooLongError(
            "prompt", f"<{n} tokens>", f"at most {member.context_window - 1} tokens for member {member.name!r}"
        )


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
        return NaturalStates(
            self.last[index], self.prev[index], self.last_ids[index], self.has_prev[index], self.projection
        )

    @staticmethod
    def one(
        member: Member,
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
    - Reference columns no member token reaches keep the authors' MinED value (the log-
      probability of the mapped member token), so no token is ruled out.

    Scores are log-probabilities up to a constant shared by all columns; the fusion's
    softmax normalises them.
    """

    def __init__(self, reference: Member, member: Member, vmap: VocabMap) -> None:
        self.vmap = vmap
        self.vocab = reference.vocab_size
        ref_special = reference.special_ids
        by_bytes: dict[bytes, int] = {}
        reference_bytes = token_bytes(reference.tokenizer)
        for i, b in enumerate(reference_bytes[: self.vocab]):
            if b and i not in ref_special and b not in by_bytes:
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
        self.heal = reference_bytes != member_bytes

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

    def scores(self, member: Member, states: NaturalStates) -> torch.Tensor:
        """Reference-vocabulary scores [N, V] (float32) of the member at each of ``states``."""
        return self.scores_and_logprobs(member, states)[0]

    def scores_and_logprobs(self, member: Member, states: NaturalStates) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`scores`, and the member's own log-probabilities after ``states.last`` [N, W]."""
        lp_last = torch.log_softmax(member.logits(states.last), dim=-1)
        p_last = lp_last.exp()
        out = torch.zeros(len(states), self.vocab, dtype=torch.float32, device=p_last.device)
        out.index_add_(1, self._dst.to(out.device), p_last.index_select(1, self._src.to(out.device)))
        fallback = self.vmap.member_logits(lp_last)
        rows = states.has_prev.nonzero().squeeze(-1).tolist() if self.heal else []
        if rows:
            if states.prev_logprobs is not None:
                lp_prev = states.prev_logprobs[rows]
            else:
                lp_prev = torch.log_softmax(member.logits(states.prev[rows]), dim=-1)
            p_prev = lp_prev.exp()
            for j, i in enumerate(rows):
                u = int(states.last_ids[i])
                out[i] *= p_prev[j, u]
                fallback[i] += lp_prev[j, u]
                src, dst = self.extensions(u)
                if src.numel():
                    out[i].index_add_(0, dst.to(out.device), p_prev[j].index_select(0, src.to(out.device)))
        return torch.where(out > 0, out.log(), fallback), lp_last


_projections: dict[tuple[str, str, int], Projection] = {}
_projection_lock = threading.Lock()


def projection(reference: Member, member: Member, vmap: VocabMap) -> Projection:
    """The :class:`Projection` of a pair, built once per process (a few seconds for 262k tokens)."""
    key = (reference.tokenizer_fingerprint, member.tokenizer_fingerprint, member.logits_width)
    with _projection_lock:
        hit = _projections.get(key)
        if hit is None:
            hit = _projections[key] = Projection(reference, member, vmap)
        return hit


class BatchReader:
    """One member reading B growing texts at once, in one batched KV cache.

    Each step every row appends the ids its new
    tokenization adds (rows needing fewer get masked padding), and ids whose tokenization
    changed are masked out of the cache rather than cropped (rows roll back by different
    amounts). Masked positions stay in the cache; position ids count only live tokens.
    A single row is cropped instead, exactly. (With several rows and a sliding-window layer,
    the window counts cache slots, so after rollbacks a row's window reaches a few fewer
    live tokens than when decoding it alone.)

    Build it from a batched prefill with :meth:`from_prefill`, or :meth:`start` one row.

    Example:
        >>> reader = BatchReader.start(member, member.encode("The cat"))  # doctest: +SKIP
        >>> reader.advance({0: member.encode("The cats")})  # crops " cat", feeds " cats"  # doctest: +SKIP
    """

    def __init__(
        self,
        member: Member,
        ids: Sequence[Sequence[int]],
        cache: Any,
        mask: torch.Tensor,
        slots: list[list[int]],
        last: list[torch.Tensor],
        prev: list[torch.Tensor | None],
    ) -> None:
        self.member = member
        self.ids = [list(r) for r in ids]
        self.cache = cache
        self.mask = mask  # [B, L] 1 where a cache slot holds a live token
        self.slots = slots  # per row: the cache slots of its ids, in order
        self.state = last
        self.prev = prev
        self.last_logprobs: list[torch.Tensor | None] = [None] * len(self.ids)
        self._prev_logprobs: list[torch.Tensor | None] = [None] * len(self.ids)
        self.fed = 0
        self.rolled_back = 0

    @classmethod
    def from_prefill(
        cls, member: Member, ids: Sequence[Sequence[int]], states: torch.Tensor, cache: Any, mask: Any, pads: list[int]
    ) -> BatchReader:
        """From a left-padded batched prefill (states [B, L, S], its cache and mask)."""
        width = states.shape[1]
        if mask is None:
            mask = torch.ones(len(ids), width, dtype=torch.long, device=states.device)
        slots = [list(range(pad, width)) for pad in pads]
        last = [states[b, width - 1] for b in range(len(ids))]
        prev = [states[b, width - 2] if len(ids[b]) >= 2 else None for b in range(len(ids))]
        return cls(member, ids, cache, mask.clone(), slots, last, prev)

    @classmethod
    @torch.inference_mode()
    def start(cls, member: Member, ids: Sequence[int]) -> BatchReader:
        """One row, prefilled on ``ids``."""
        ids = list(ids) or start_ids(member)
        _check_window(member, len(ids))
        states, cache = member.run(torch.tensor([ids], device=member.device), new_cache())
        return cls.from_prefill(member, [ids], states, cache, None, [0])

    @torch.inference_mode()
    def advance(self, targets: dict[int, Sequence[int]]) -> None:
        """Make row b have read ``targets[b]`` (rows not named stay as they are)."""
        plan: dict[int, tuple[int, list[int]]] = {}
        for b, target in targets.items():
            target = list(target) or start_ids(self.member)
            ids = self.ids[b]
            if target == ids:
                continue
            _check_window(self.member, len(target))
            same = common_prefix(ids, target)
            self.rolled_back += len(ids) - min(same, len(target) - 1)
            self.fed += len(target) - min(same, len(target) - 1)
            keep = same if same == len(ids) < len(target) else max(0, min(same, len(target) - 2))
            dropped = self.slots[b][keep:]
            if dropped and len(self.ids) == 1:  # one row: its slots are the whole cache
                crop_to(self.cache, dropped[0])
                self.mask = self.mask[:, : dropped[0]]
            elif dropped:
                self.mask[b, dropped] = 0
            self.slots[b] = self.slots[b][:keep]
            plan[b] = (keep, target)
        if not plan:
            return
        width = max(len(t) - keep for keep, t in plan.values())
        rows, start = len(self.ids), self.mask.shape[1]
        pad_id = self.member.tokenizer.pad_token_id
        block = torch.full((rows, width), 0 if pad_id is None else int(pad_id), dtype=torch.long)
        live = torch.zeros(rows, width, dtype=torch.long)
        positions = torch.zeros(rows, width, dtype=torch.long)
        for b, (keep, target) in plan.items():
            n = len(target) - keep
            block[b, :n] = torch.tensor(target[keep:])
            live[b, :n] = 1
            positions[b, :n] = torch.arange(keep, keep + n)
        device = self.member.device
        self.mask = torch.cat([self.mask, live.to(device)], dim=1)
        states, self.cache = self.member.run(block.to(device), self.cache, self.mask, positions.to(device))
        for b, (keep, target) in plan.items():
            n = len(target) - keep
            one_new = keep == len(self.ids[b]) and n == 1
            self.prev[b] = self.state[b] if one_new else (states[b, n - 2] if n >= 2 else None)
            self._prev_logprobs[b] = self.last_logprobs[b] if one_new else None
            self.last_logprobs[b] = None
            self.state[b] = states[b, n - 1]
            self.slots[b] = self.slots[b] + list(range(start, start + n))
            self.ids[b] = target

    def view(self, b: int, projection: Projection | None) -> NaturalStates:
        """Row b's current position as a one-row :class:`NaturalStates`."""
        return NaturalStates.one(
            self.member, self.ids[b], self.state[b], self.prev[b], projection, self._prev_logprobs[b]
        )


def token_ends(member: Member, text: str, ids: Sequence[int] | None = None) -> list[int]:
    """For each token of ``member.encode(text)``, how many characters of ``text`` the tokens up
    to and including it cover completely.

    A character split over several byte tokens counts only once its last byte is in (so a
    prefix never ends inside a character). Special tokens (BOS) cover nothing.
    """
    ids = member.encode(text) if ids is None else list(ids)
    try:
        enc = member.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    except NotImplementedError:  # a tokenizer without character offsets (not a "fast" one)
        raise PackLLMError(
            f"member {member.name!r}: its tokenizer gives no character offsets, which natural alignment needs; "
            "use alignment='mined'"
        ) from None
    if list(enc["input_ids"]) != ids:
        raise PackLLMError(f"member {member.name!r}: its tokenizer encodes the text differently with offsets")
    offsets = [tuple(o) for o in enc["offset_mapping"]]
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
    member: Member,
    text: str,
    ends: Sequence[int],
    prefilled: tuple[torch.Tensor, Any] | None = None,
    projection: Projection | None = None,
) -> NaturalStates:
    """The member's states after reading its own tokenization of ``text[:e]``, for each ``e``
    in ``ends`` (and before its last token of it, for :class:`Projection`).

    ``prefilled``: the member's states [T, S] and KV cache over ``member.encode(text)``, if
    already computed (the cache is cropped here: pass one nobody else uses).
    """
    full = member.encode(text)
    if prefilled is None:
        _check_window(member, len(full))
        out, cache = member.run(torch.tensor([full], device=member.device), new_cache())
        states = out[0]
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
        encoded = member.tokenizer([text[:e] for e in chunk], add_special_tokens=True)["input_ids"]
        for j, ids in enumerate(encoded):
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
    # Deepest prefix first: each fix-up only crops what the previous one fed.
    for (p, tail), slots in sorted(fixups.items(), key=lambda item: -item[0][0]):
        _check_window(member, p + len(tail))
        crop_to(cache, p)
        out, cache = member.run(torch.tensor([list(tail)], device=member.device), cache)
        for slot in slots:
            last[slot] = out[0, -1]
            if len(tail) >= 2:
                prev[slot] = out[0, -2]
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
