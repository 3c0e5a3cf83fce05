"""Vocabulary maps between members' tokenizers (MinED), built once and cached on disk.

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

The edit-distance search is exact but fast: candidates within distance 2 are found through
an index of single and double deletions (the SymSpell idea); only tokens with no candidate
that close are compared against the whole vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["VocabMap", "token_bytes", "build_vocab_map", "vocab_map", "vocabulary_fingerprint", "special_ids"]

logger = logging.getLogger(__name__)

_MAP_VERSION = 1
_lock = threading.Lock()
_memory: dict[tuple[str, str], VocabMap] = {}


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

    @property
    def has_floor(self) -> bool:
        return bool((self.output == self.floor_index).any())

    @property
    def coverage(self) -> float:
        """Share of reference tokens matched exactly."""
        return self.exact / max(1, int(self.output.numel()))

    def member_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Member logits [..., W] as reference-vocabulary logits [..., V_ref]."""
        if self.has_floor:
            floor = logits.min(dim=-1, keepdim=True).values
            logits = torch.cat([logits[..., : self.floor_index], floor], dim=-1)
        return logits.index_select(-1, self.output)


# ---- token texts -----------------------------------------------------------------------


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes-to-unicode table (byte-level BPE token strings -> bytes)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def token_bytes(tokenizer: Any) -> list[bytes]:
    """The bytes each token id of ``tokenizer`` stands for (special tokens: their literal text)."""
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    tokens = [t if t is not None else "" for t in tokens]
    byte_level = sum(t.startswith("Ġ") for t in tokens) > sum(t.startswith("▁") for t in tokens)
    decoder = _byte_decoder()
    out: list[bytes] = []
    for tok in tokens:
        if byte_level and all(ch in decoder for ch in tok):
            out.append(bytes(decoder[ch] for ch in tok))
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            try:
                out.append(bytes([int(tok[3:5], 16)]))
            except ValueError:
                out.append(tok.encode("utf-8"))
        else:
            out.append(tok.replace("▁", " ").encode("utf-8"))
    return out


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special and control tokens."""
    ids = {int(i) for i in tokenizer.all_special_ids}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(int(i) for i, tok in decoder.items() if getattr(tok, "special", False))
    return {i for i in ids if i < len(tokenizer)}


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """A hash of the id -> token table and the special ids: equal means same vocabulary."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    payload = json.dumps([tokens, sorted(special_ids(tokenizer))], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


# ---- MinED ---------------------------------------------------------------------------------


def _deletions(word: str, depth: int) -> set[str]:
    out = {word}
    frontier = {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


def _nearest(queries: Sequence[str], choices: Sequence[str], choice_ids: np.ndarray, progress: Any) -> list[int]:
    """For each query, the id of the choice at the smallest edit distance (ties: lowest id)."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    depth = 2
    index: dict[str, list[int]] = defaultdict(list)
    for pos, word in enumerate(choices):
        for variant in _deletions(word, depth):
            index[variant].append(pos)
    result: list[int] = [-1] * len(queries)
    unresolved: list[int] = []
    for qi, query in enumerate(queries):
        candidates: set[int] = set()
        for variant in _deletions(query, depth):
            hits = index.get(variant)
            if hits:
                candidates.update(hits)
        best_d, best_id = depth + 1, -1
        for pos in candidates:
            d = Levenshtein.distance(query, choices[pos], score_cutoff=best_d)
            cid = int(choice_ids[pos])
            if d < best_d or (d == best_d and d <= depth and cid < best_id):
                best_d, best_id = d, cid
        if best_d <= depth:
            result[qi] = best_id
        else:
            unresolved.append(qi)
        if qi % 2048 == 0:
            progress.update(min(2048, len(queries) - qi))
    # Tokens with nothing within distance `depth`: compare with everything, in chunks.
    order = np.argsort(choice_ids, kind="stable")
    sorted_choices = [choices[i] for i in order]
    sorted_ids = choice_ids[order]
    for start in range(0, len(unresolved), 256):
        chunk = unresolved[start : start + 256]
        dist = cdist(
            [queries[i] for i in chunk], sorted_choices, scorer=Levenshtein.distance, dtype=np.int32, workers=-1
        )
        best = dist.argmin(axis=1)  # first minimum = lowest id, since choices are sorted by id
        for qi, pos in zip(chunk, best, strict=True):
            result[qi] = int(sorted_ids[pos])
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
    for i, b in enumerate(mem_bytes):
        if i not in mem_special and b and b not in exact_index:
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


def vocab_map(
    reference: Any, member: Any, member_width: int, progress: bool = True, cache: Path | None = None
) -> VocabMap:
    """The MinED map from ``reference`` to ``member``: from memory, the disk cache, or built.

    The cache key is the pair of vocabulary fingerprints, so moving a model keeps its maps
    and changing a tokenizer rebuilds them. ``cache`` defaults to ``<cache_dir>/maps``.
    """
    from .loading import cache_dir

    key = (vocabulary_fingerprint(reference), vocabulary_fingerprint(member) + f"-{member_width}")
    with _lock:
        hit = _memory.get(key)
        if hit is not None:
            return hit
        folder = cache or cache_dir() / "maps"
        path = folder / f"v{_MAP_VERSION}-{key[0][:16]}-{key[1][:16]}-{member_width}.pt"
        if path.is_file():
            try:
                data = torch.load(path, weights_only=True)
                result = VocabMap(data["output"], data["input"], int(data["floor_index"]), int(data["exact"]))
            except Exception:  # a damaged cache file: rebuild it
                logger.warning("Ignoring unreadable vocabulary map cache %s", path)
            else:
                _memory[key] = result
                return result
        result = build_vocab_map(reference, member, member_width, progress)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        data = {"output": result.output, "input": result.input, "floor_index": result.floor_index}
        torch.save({**data, "exact": result.exact}, tmp)
        tmp.replace(path)
        _memory[key] = result
        return result
