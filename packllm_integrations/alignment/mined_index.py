"""The exact nearest-token search behind MinED maps (used by :mod:`.mined`).

The nearest member token of every reference token that has no exact match, by byte-level
Levenshtein distance (ties: the lowest member id). Exact, in two stages:

1. Distance 0 and 1 are decided by look-ups of 64-bit hashes: of the member tokens, and of
   each of their single-deletion variants tagged with the deleted position (equal tagged keys
   mean "the two strings differ by one substitution at that position", or, looking up the
   query with every tag, "the member token is the query plus one inserted byte"). Each answer
   is checked on the strings themselves, so a hash collision costs time, never exactness.
2. Every other query gets an upper bound U from a few likely neighbours (sorted by prefix, by
   suffix and by byte content), then a lower bound on the distance to every member token within
   the length window |len(c) - len(q)| <= U: distance >= max(len(q), len(c)) - m, where m is
   the size of the multiset intersection of the two strings' bytes (an alignment with d edits
   leaves at least max(len) - d matched bytes, all shared). The bound is computed down a
   hierarchy of blocks of 512, 64, 8 and 1 member tokens (the tokens sorted by length, then so
   that similar byte contents are neighbours; a block holds the per-byte maximum counts and the
   minimum length of its members), eight blocks at a time in the 8-bit lanes of a 64-bit word,
   descending only into the blocks whose bound is <= U. The tokens that pass are compared
   exactly, in order of (bound, id), stopping once no remaining token can beat or tie the best.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["MemberIndex", "MAX_QUERY", "BATCH"]

_LEVELS = 4  # levels of 8-lane words: a top-level word spans 8**4 member tokens
_UNIT = 8**_LEVELS
MAX_QUERY = 126  # longer queries (none in practice) are compared with every member token
BATCH = 256  # queries searched together in stage 2
_HI = np.uint64(0x8080808080808080)  # the top bit of each of the eight byte lanes
_ONE = np.uint64(0x0101010101010101)  # 1 in each lane
_SEVEN = np.uint64(7)


def _lanes_min(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Lane-wise minimum of two arrays of eight 7-bit lanes per uint64."""
    ge = ((x | _HI) - k) & _HI  # top bit set where x >= k
    mask = ge - (ge >> _SEVEN)  # 0x7f in those lanes
    return (x & ~mask) | (k & mask)


def _row_sum(rows: np.ndarray) -> np.ndarray:
    """The sum of the rows of a [rows, n] uint64 array (lane-wise, as no lane overflows)."""
    total = rows[0].copy() if len(rows) else np.zeros(rows.shape[1], np.uint64)
    for row in rows[1:]:
        total += row
    return total


def _lanes_reach(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Top bit set in each lane where x >= k (7-bit lanes)."""
    return ((x | _HI) - k) & _HI


def _byte_rank(choices: Sequence[str]) -> str:
    """A translation table sending each byte (latin-1 character) to its frequency rank among ``choices``."""
    counts = np.bincount(np.frombuffer("".join(choices).encode("latin-1"), np.uint8), minlength=256)
    ranks = np.empty(256, np.int64)
    ranks[np.argsort(-counts, kind="stable")] = np.arange(256)
    return "".join(chr(int(r)) for r in ranks)


class MemberIndex:
    """A member vocabulary prepared for exact nearest-neighbour queries (see the notes above)."""

    def __init__(self, choices: Sequence[str], choice_ids: np.ndarray) -> None:
        n = len(choices)
        ids = np.asarray(choice_ids, dtype=np.int64)
        # Stage 1: hashes of the tokens and of their tagged single deletions, each key with its lowest id.
        self.by_id = dict(zip(ids.tolist(), choices, strict=True))
        whole, owner, position, deleted = _hashes(choices)
        self.exact_keys, self.exact_ids = _lowest_per_key(whole, ids)
        self.tagged_keys, self.tagged_ids = _lowest_per_key(deleted ^ _tags(position), ids[owner])

        # Stage 2: tokens sorted by length, then by their set of bytes (most frequent bytes first),
        # so that each block gathers similar byte contents.
        rank = _byte_rank(choices)
        sort_key = [chr(len(w)) + "".join(sorted(set(w.translate(rank)))) for w in choices]
        order = sorted(range(n), key=sort_key.__getitem__)
        self.strings = [choices[i] for i in order]
        self.ids = ids[order]
        lengths = np.fromiter(map(len, self.strings), np.int64, n)
        self.lengths = lengths
        self.length_start = np.searchsorted(lengths, np.arange(int(lengths.max(initial=0)) + 2))
        self.size = n
        npad = max(1, -(-n // _UNIT)) * _UNIT
        data = np.frombuffer("".join(self.strings).encode("latin-1"), np.uint8).astype(np.int64)
        cells, counts = np.unique(data * npad + np.repeat(np.arange(n), lengths), return_counts=True)
        count = np.zeros((257, npad), np.uint8)  # row 256 stays zero (padding rows of a query)
        count.ravel()[cells] = np.minimum(counts, 127)
        length = np.full(npad, 127, np.uint8)  # padding tokens can never pass the bound
        length[:n] = np.minimum(lengths, 127)
        # levels[0] is the coarsest; each level: (presence rows, count rows, minimum lengths) as 8-lane words
        self.levels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for level in range(_LEVELS):
            present = (count > 0).view(np.uint8)
            self.levels.append((present.view(np.uint64), count.view(np.uint64), length.view(np.uint64)))
            if level < _LEVELS - 1:
                count = np.ascontiguousarray(count.reshape(257, -1, 8).max(axis=2))
                length = np.ascontiguousarray(length.reshape(-1, 8).min(axis=1))
        self.levels.reverse()

        # Neighbours that give the upper bound: sorted by prefix, by suffix, by byte multiset.
        self.shortest = self.strings[0] if n else ""
        self.by_prefix = sorted(self.strings)
        self.by_suffix = sorted(w[::-1] for w in self.strings)
        self.by_bytes = sorted(self.strings, key=_sorted_bytes)
        self.bytes_keys = [_sorted_bytes(w) for w in self.by_bytes]

    def within_one(self, queries: Sequence[str]) -> list[int]:
        """Per query, the lowest id at distance 0, else at distance 1; -1 where there is none.

        Keys are 64-bit hashes, so every answer is checked against the strings; a query whose answer
        fails the check (a hash collision) is compared with every member token instead.
        """
        from rapidfuzz.distance import Levenshtein

        nq = len(queries)
        whole, owner, position, deleted = _hashes(queries)
        same = _lookup(self.exact_keys, self.exact_ids, whole)
        best = np.full(nq, np.iinfo(np.int64).max)
        lengths = np.fromiter(map(len, queries), np.int64, nq)
        grown = np.repeat(np.arange(nq), lengths + 1)  # the query with one byte inserted at each place
        slot = np.arange(len(grown)) - np.repeat(np.cumsum(lengths + 1) - lengths - 1, lengths + 1)
        for who, hits in (
            (owner, _lookup(self.exact_keys, self.exact_ids, deleted)),  # one byte deleted from the query
            (owner, _lookup(self.tagged_keys, self.tagged_ids, deleted ^ _tags(position))),  # one substituted
            (grown, _lookup(self.tagged_keys, self.tagged_ids, whole[grown] ^ _tags(slot))),  # one inserted
        ):
            found = hits >= 0
            np.minimum.at(best, who[found], hits[found])
        answer = np.where(same >= 0, same, np.where(best < np.iinfo(np.int64).max, best, -1)).tolist()
        distance = Levenshtein.distance
        for qi, hit in enumerate(answer):
            if hit >= 0 and distance(queries[qi], self.by_id[hit], score_cutoff=1) != (0 if same[qi] >= 0 else 1):
                answer[qi] = self.brute_force(queries[qi])
        return answer

    def upper_bound(self, query: str, near: int = 3) -> int:
        """The smallest distance from ``query`` to a few likely neighbours (an upper bound of the minimum)."""
        from rapidfuzz.distance import Levenshtein

        distance = Levenshtein.distance
        bound = distance(query, self.shortest)
        i = bisect.bisect_left(self.by_prefix, query)
        j = bisect.bisect_left(self.by_suffix, query[::-1])
        k = bisect.bisect_left(self.bytes_keys, _sorted_bytes(query))
        near_ones = self.by_prefix[max(0, i - near) : i + near] + self.by_bytes[max(0, k - near - 1) : k + near + 1]
        near_ones += [w[::-1] for w in self.by_suffix[max(0, j - near) : j + near]]
        for word in near_ones:
            bound = min(bound, distance(query, word, score_cutoff=bound))
        return bound

    def search(self, queries: Sequence[str], bound: int) -> list[int]:
        """The nearest ids for queries (1..``MAX_QUERY`` bytes) whose minimum distance is at most ``bound``."""
        from rapidfuzz.distance import Levenshtein

        nq = len(queries)
        qlen = np.fromiter(map(len, queries), np.int64, nq)
        # A token passes when shared >= max(len(c), len(q)) - bound, i.e. when shared reaches both
        # (len(q) - bound)+ and (len(c) - bound)+.
        bound_lanes = np.uint64(bound) * _ONE
        query_need = np.maximum(qlen - bound, 0).astype(np.uint64) * _ONE
        # each query's bytes: those seen once (presence rows) and those seen more often (count rows)
        singles: list[list[int]] = []
        repeats: list[list[tuple[int, int]]] = []
        for query in queries:
            seen = Counter(query.encode("latin-1"))
            singles.append([b for b, k in seen.items() if k == 1])
            repeats.append([(b, k) for b, k in seen.items() if k > 1])
        # row indices of the byte tables, one row per (byte of the query, query): shape [rows, nq]
        single_rows = np.full((max(map(len, singles)), nq), 256, np.int32)
        repeat_rows = np.full((max(map(len, repeats)), nq), 256, np.int32)
        repeat_caps = np.zeros(repeat_rows.shape, np.uint64)
        for i, (ones, more) in enumerate(zip(singles, repeats, strict=True)):
            single_rows[: len(ones), i] = ones
            for r, (b, k) in enumerate(more):
                repeat_rows[r, i] = b
                repeat_caps[r, i] = k
        repeat_caps *= _ONE

        # top-level words covering each query's length window
        last = len(self.length_start) - 1
        lo = self.length_start[np.clip(qlen - bound, 0, last)] // _UNIT
        hi = np.maximum(-(-self.length_start[np.minimum(qlen + bound + 1, last)] // _UNIT), lo)
        span = hi - lo
        owner = np.repeat(np.arange(nq, dtype=np.int32), span)
        word = (np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span - lo, span)).astype(np.int32)
        for level, (present, count, length) in enumerate(self.levels):
            token_need = length - _lanes_min(length, bound_lanes)
            width = present.shape[1]
            at = (single_rows * width)[:, owner]
            at += word
            shared = _row_sum(present.ravel()[at])
            if len(repeat_rows):
                at = (repeat_rows * width)[:, owner]
                at += word
                shared += _row_sum(_lanes_min(count.ravel()[at], repeat_caps[:, owner]))
            passed = _lanes_reach(shared, token_need[word]) & _lanes_reach(shared, query_need[owner])
            pair = np.flatnonzero(passed)
            sub, lane = np.nonzero(passed[pair].view(np.uint8).reshape(-1, 8))
            pair = pair[sub]
            if level < _LEVELS - 1:
                owner, word = owner[pair], (word[pair] * 8 + lane).astype(np.int32)
        position = word[pair].astype(np.int64) * 8 + lane
        common = shared.view(np.uint8).reshape(-1, 8)[pair, lane].astype(np.int64)
        owner = owner[pair].astype(np.int64)
        real = position < self.size
        owner, position, common = owner[real], position[real], common[real]
        cand_bound = np.maximum(self.lengths[position], qlen[owner]) - common
        cand_id = self.ids[position]

        # Tighten each query's bound with its most promising candidate (lowest (bound, id)), drop what
        # cannot pass, and order the rest by (query, bound, id). Candidates come grouped by query.
        distance = Levenshtein.distance
        key = (cand_bound << 32) | cand_id
        starts = np.searchsorted(owner, np.arange(nq + 1))
        some = np.flatnonzero(starts[1:] > starts[:-1])
        lowest = np.full(nq, -1, np.int64)
        lowest[some] = np.minimum.reduceat(key, starts[some])
        best_bound = np.full(nq, bound, np.int64)
        for p in np.flatnonzero(key == lowest[owner]).tolist():
            i = int(owner[p])
            best_bound[i] = min(bound, distance(queries[i], self.strings[position[p]], score_cutoff=bound))
        keep = np.flatnonzero(cand_bound <= best_bound[owner])
        keep = keep[np.argsort((owner[keep] << 40) | key[keep])]
        owner, position, cand_bound, cand_id = owner[keep], position[keep], cand_bound[keep], cand_id[keep]
        starts = np.searchsorted(owner, np.arange(nq + 1))

        result: list[int] = []
        strings = self.strings
        for i, query in enumerate(queries):
            best, best_id = bound + 1, -1
            s, e = int(starts[i]), int(starts[i + 1])
            while s < e:  # candidates in (bound, id) order, a slice at a time
                stop = min(e, s + 32)
                done = False
                for low, cid, pos in zip(
                    cand_bound[s:stop].tolist(), cand_id[s:stop].tolist(), position[s:stop].tolist(), strict=True
                ):
                    if low > best or (low == best and cid > best_id):
                        done = True
                        break
                    d = distance(query, strings[pos], score_cutoff=best)
                    if d < best or (d == best and cid < best_id):
                        best, best_id = d, cid
                if done:
                    break
                s = stop
            result.append(best_id)
        return result

    def brute_force(self, query: str) -> int:
        """The nearest id by comparing ``query`` with every member token."""
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import cdist

        dist = cdist([query], self.strings, scorer=Levenshtein.distance, dtype=np.int32)[0]
        return int(self.ids[dist == dist.min()].min())


_HASH_BASE = np.uint64(0x100000001B3)
_HASH_TAG = np.uint64(0x9E3779B97F4A7C15)


def _tags(position: np.ndarray) -> np.ndarray:
    """Hash tags of deletion positions (a key carries the place its byte was deleted from)."""
    return (position.astype(np.uint64) + np.uint64(1)) * _HASH_TAG


def _hashes(words: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Polynomial hashes (mod 2**64) of ``words`` and of all their single-byte deletions.

    Returns ``(whole, owner, position, deleted)``: ``whole[i]`` hashes ``words[i]``, and
    ``deleted[t]`` hashes ``words[owner[t]]`` without its byte at ``position[t]``.
    """
    n = len(words)
    lengths = np.fromiter(map(len, words), np.int64, n)
    data = np.frombuffer("".join(words).encode("latin-1"), np.uint8)
    offsets = np.cumsum(lengths) - lengths
    longest = int(lengths.max(initial=0))
    powers = np.cumprod(np.r_[np.uint64(1), np.full(longest, _HASH_BASE)])
    whole = np.zeros(n, np.uint64)
    owner = np.repeat(np.arange(n), lengths)
    position = np.arange(len(owner)) - np.repeat(offsets, lengths)
    deleted = np.zeros(len(owner), np.uint64)
    for size in np.unique(lengths[lengths > 0]).tolist():
        rows = np.flatnonzero(lengths == size)
        digits = data[offsets[rows][:, None] + np.arange(size)].astype(np.uint64) + np.uint64(1)
        prefix = np.zeros((len(rows), size + 1), np.uint64)
        for k in range(size):
            prefix[:, k + 1] = prefix[:, k] * _HASH_BASE + digits[:, k]
        whole[rows] = prefix[:, size]
        # hash(w[:j] + w[j+1:]) = hash(w) + (prefix_j - prefix_{j+1}) * base**(size-1-j)
        variants = prefix[:, size, None] + (prefix[:, :-1] - prefix[:, 1:]) * powers[size - 1 :: -1][:size]
        deleted[(offsets[rows][:, None] + np.arange(size)).ravel()] = variants.ravel()
    return whole, owner, position, deleted


def _lowest_per_key(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys, each with the lowest id it occurs with."""
    order = np.lexsort((ids, keys))
    keys, ids = keys[order], ids[order]
    first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    return keys[first], ids[first]


def _lookup(keys: np.ndarray, ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The id stored under each wanted key (sorted ``keys``), or -1."""
    if not len(keys):
        return np.full(len(wanted), -1, np.int64)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, ids[at], -1)


def _sorted_bytes(word: str) -> str:
    return "".join(sorted(word, reverse=True))
