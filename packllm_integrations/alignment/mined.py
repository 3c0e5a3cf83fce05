"""Vocabulary maps between members' tokenizers (MinED): pure functions of two tokenizers.

A :class:`VocabMap` sends every token id of the *reference* vocabulary to a token id of a
member's vocabulary, as PackLLM's authors do (after FuseLLM): a token whose text the member
also has maps to it exactly; any other token maps to the member token with the smallest
edit distance (ties: the lowest id). Token texts are compared as the bytes they stand for,
so SentencePiece's "▁" and byte-level BPE's "Ġ" both read as a space, and byte tokens such
as ``<0x0A>`` and ``Ċ`` both read as a newline.

Special tokens are never mapped onto ordinary text: a reference special token maps to the
member special token with the same text or role (BOS, EOS, PAD, UNK); one with no such
counterpart is given the member's lowest logit at every step ("floor"), and is fed to the
member as its end-of-sequence token.

The edit-distance search is exact but fast: distance 0 or 1 is found by hashed look-ups, and
any other token is compared only with the member tokens that a cheap lower bound (shared bytes
and lengths) cannot rule out; see :mod:`.mined_index`. Maps are cached on disk by
:func:`packllm_integrations.loading.load_vocab_map` and in memory by the engine.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from .mined_index import BATCH, MAX_QUERY, MemberIndex
from .vocabulary import special_ids, text_token_order, token_bytes

__all__ = ["VocabMap", "MAP_VERSION", "build_vocab_map"]

MAP_VERSION = 2
"""Version of the map format and algorithm (part of the disk cache's file names)."""


@dataclass(frozen=True)
class VocabMap:
    """A map from a reference vocabulary to a member's.

    Attributes:
        output: [V_ref] member ids whose logits fill each reference column; the value
            ``floor_index`` (one past the member's logit width) means "the member's lowest logit".
        input: [V_ref] member ids fed to the member for each reference id.
        floor_index: the sentinel used in ``output``.
        exact: how many reference tokens found a member token with the same bytes.
        build_seconds: time the map took to build (0 when read from a cache).
    """

    output: torch.Tensor
    input: torch.Tensor
    floor_index: int
    exact: int
    build_seconds: float = 0.0

    @cached_property
    def has_floor(self) -> bool:
        return bool((self.output == self.floor_index).any())

    @property
    def coverage(self) -> float:
        """Share of reference tokens matched exactly."""
        return self.exact / max(1, int(self.output.numel()))

    def member_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Member logits [..., W] as reference-vocabulary logits [..., V_ref]."""
        return self.with_floor(logits).index_select(-1, self.output)

    def with_floor(self, logits: torch.Tensor) -> torch.Tensor:
        """Member logits [..., W], and where ``output`` uses it, the floor (their minimum) at ``floor_index``."""
        if not self.has_floor:
            return logits
        floor = logits.min(dim=-1, keepdim=True).values
        return torch.cat([logits[..., : self.floor_index], floor], dim=-1)


# ---- MinED ---------------------------------------------------------------------------------


def _row_shape(word: str) -> tuple[int, int]:
    """(bytes seen more than once, distinct bytes): queries searched together are padded to the same shape."""
    seen = Counter(word)
    return sum(k > 1 for k in seen.values()), len(seen)


def _nearest(queries: Sequence[str], choices: Sequence[str], choice_ids: np.ndarray, progress: Any) -> list[int]:
    """For each query, the id of the choice at the smallest edit distance (ties: lowest id).

    ``progress`` is anything with ``update(n)`` (a tqdm bar); it advances once per query.
    """
    result = [-1] * len(queries)
    if not queries:
        return result
    if not choices:
        raise ValueError("no member tokens to map onto")
    index = MemberIndex(choices, choice_ids)
    pending: list[int] = []
    for qi, hit in enumerate(index.within_one(queries)):
        if hit >= 0:
            result[qi] = hit
        elif not queries[qi] or len(queries[qi]) > MAX_QUERY:
            result[qi] = index.brute_force(queries[qi])
        else:
            pending.append(qi)
    progress.update(len(queries) - len(pending))

    groups: dict[int, list[int]] = defaultdict(list)
    for qi in sorted(pending, key=lambda qi: _row_shape(queries[qi])):
        bound = index.upper_bound(queries[qi])
        if bound > MAX_QUERY:
            result[qi] = index.brute_force(queries[qi])
            progress.update(1)
        else:
            groups[bound].append(qi)
    for bound, members in groups.items():
        for start in range(0, len(members), BATCH):
            chunk = members[start : start + BATCH]
            for qi, hit in zip(chunk, index.search([queries[qi] for qi in chunk], bound), strict=True):
                result[qi] = hit
            progress.update(len(chunk))
    return result


def build_vocab_map(reference: Any, member: Any, member_width: int | None = None, progress: bool = True) -> VocabMap:
    """Build the MinED map from ``reference``'s vocabulary to ``member``'s (both tokenizers).

    ``member_width`` is the member's logit width (its padded vocabulary size); the floor
    sentinel is that value.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    ref_bytes = token_bytes(reference)
    mem_bytes = token_bytes(member)
    ref_special = special_ids(reference)
    mem_special = special_ids(member)
    width = member_width or len(member)
    floor = width
    mem_eos = member.eos_token_id if member.eos_token_id is not None else 0

    # exact: text -> lowest member id among ordinary tokens
    exact_index: dict[bytes, int] = {}
    for i in text_token_order(member, mem_special):
        b = mem_bytes[i]
        if b and b not in exact_index:
            exact_index[b] = i
    special_by_text = {mem_bytes[i]: i for i in sorted(mem_special, reverse=True)}
    roles = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    special_by_role = {
        getattr(reference, r): getattr(member, r) for r in roles if getattr(reference, r, None) is not None
    }

    output = np.full(len(ref_bytes), floor, dtype=np.int64)
    feed = np.full(len(ref_bytes), mem_eos, dtype=np.int64)
    exact = 0
    pending: list[int] = []
    for v, b in enumerate(ref_bytes):
        if v in ref_special:
            target = special_by_text.get(b)
            if target is None:
                target = special_by_role.get(v)
            if target is not None:
                output[v] = feed[v] = target
                exact += 1
            elif v == reference.bos_token_id and member.bos_token_id is not None:
                feed[v] = member.bos_token_id
            continue
        hit = exact_index.get(b)
        if hit is not None:
            output[v] = feed[v] = hit
            exact += 1
        else:
            pending.append(v)

    if pending:
        ordinary = [i for i, b in enumerate(mem_bytes) if i not in mem_special and b]
        choices = [mem_bytes[i].decode("latin-1") for i in ordinary]
        queries = [ref_bytes[v].decode("latin-1") for v in pending]
        with tqdm(total=len(queries), desc="MinED vocabulary map", disable=not progress, leave=False) as bar:
            nearest = _nearest(queries, choices, np.asarray(ordinary, dtype=np.int64), bar)
        output[pending] = nearest
        feed[pending] = nearest
    return VocabMap(
        output=torch.from_numpy(output),
        input=torch.from_numpy(feed),
        floor_index=floor,
        exact=exact,
        build_seconds=time.perf_counter() - started,
    )
