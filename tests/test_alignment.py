from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from packllm_integrations import Member
from packllm_integrations.alignment import mined as alignment
from packllm_integrations.alignment import mined_index
from packllm_integrations.alignment.mined import _nearest, build_vocab_map
from packllm_integrations.alignment.vocabulary import token_bytes, vocabulary_fingerprint
from packllm_integrations.loading import load_vocab_map


class _Bar:
    def __init__(self) -> None:
        self.total = 0

    def update(self, n: int) -> None:
        self.total += n


def _brute_force(queries: list[str], choices: list[str], ids: np.ndarray) -> list[int]:
    """The lowest id among the choices at the smallest Levenshtein distance, by comparing everything."""
    dist = cdist(queries, choices, scorer=Levenshtein.distance, dtype=np.int32)
    return [int(ids[row == row.min()].min()) for row in dist]


def _words(rng: random.Random, alphabet: str, count: int, shortest: int, longest: int) -> list[str]:
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(shortest, longest))) for _ in range(count)]


def test_token_bytes_read_both_conventions(bl: Member, sp: Member) -> None:
    bl_bytes = token_bytes(bl.tokenizer)
    sp_bytes = token_bytes(sp.tokenizer)
    assert bl_bytes[bl.tokenizer.convert_tokens_to_ids("Ċ")] == b"\n"
    assert bl_bytes[bl.tokenizer.convert_tokens_to_ids("Ġ")] == b" "
    assert sp_bytes[sp.tokenizer.convert_tokens_to_ids("<0x0A>")] == b"\n"
    assert sp_bytes[sp.tokenizer.convert_tokens_to_ids("▁")] == b" "
    word = next(t for t in sp.tokenizer.get_vocab() if t.startswith("▁") and len(t) > 3)
    assert sp_bytes[sp.tokenizer.convert_tokens_to_ids(word)] == word.replace("▁", " ").encode()


def test_nearest_is_exact_minimum_with_lowest_id_ties() -> None:
    rng = random.Random(0)
    alphabet = "abcde "
    choices = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(300)]
    ids = np.arange(1000, 1300)[::-1].copy()  # ids not in list order: ties must go to the lowest id
    queries = ["".join(rng.choice(alphabet + "xyz") for _ in range(rng.randint(1, 12))) for _ in range(200)]
    got = _nearest(queries, choices, ids, _Bar())
    for q, g in zip(queries, got, strict=True):
        dists = [Levenshtein.distance(q, c) for c in choices]
        best = min(dists)
        assert g == min(int(ids[i]) for i, d in enumerate(dists) if d == best)


BYTES = "".join(map(chr, range(256)))  # token bytes are compared as latin-1 text: every byte value


@pytest.mark.parametrize(
    ("seed", "alphabet", "n_choices", "longest_choice", "longest_query"),
    [
        (1, "ab", 400, 6, 10),  # many ties at every distance
        (2, "abcdef ", 3000, 12, 20),
        (3, BYTES, 2000, 10, 16),  # all 256 byte values, queries far from everything
        (4, "abc", 6000, 9, 14),  # more than one top-level block of member tokens
        (5, "ab", 500, 220, 140),  # tokens longer than the lane limit, queries past the search limit
        (6, "\xe0\xa6\xa7\xb8\xe4\x80\x81 ", 1500, 15, 24),  # UTF-8-like bytes, repeated lead bytes
    ],
)
def test_nearest_matches_brute_force(
    seed: int, alphabet: str, n_choices: int, longest_choice: int, longest_query: int
) -> None:
    rng = random.Random(seed)
    choices = _words(rng, alphabet, n_choices, 1, longest_choice)
    choices += rng.sample(choices, 20)  # duplicate texts under other ids: ties go to the lowest
    ids = np.arange(10_000, 10_000 + len(choices))
    rng.shuffle(ids)
    queries = _words(rng, alphabet + "xyz", 300, 0, longest_query) + rng.sample(choices, 10)
    bar = _Bar()
    assert _nearest(queries, choices, ids, bar) == _brute_force(queries, choices, ids)
    assert bar.total == len(queries)


def test_nearest_stays_exact_when_every_hash_collides(monkeypatch: pytest.MonkeyPatch) -> None:
    real = mined_index._hashes

    def colliding(words: list[str]) -> tuple[np.ndarray, ...]:
        whole, owner, position, deleted = real(words)
        return np.zeros_like(whole), owner, np.zeros_like(position), np.zeros_like(deleted)

    monkeypatch.setattr(mined_index, "_hashes", colliding)
    rng = random.Random(7)
    choices = _words(rng, "abcd", 300, 1, 6)
    ids = np.arange(300)[::-1].copy()
    queries = _words(rng, "abcde", 100, 0, 8)
    assert _nearest(queries, choices, ids, _Bar()) == _brute_force(queries, choices, ids)


def test_lane_arithmetic_matches_bytes() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 128, 8 * 1000, dtype=np.uint8)
    k = rng.integers(0, 128, 8 * 1000, dtype=np.uint8)
    lanes_min = mined_index._lanes_min(x.view(np.uint64), k.view(np.uint64)).view(np.uint8)
    assert np.array_equal(lanes_min, np.minimum(x, k))
    reach = mined_index._lanes_reach(x.view(np.uint64), k.view(np.uint64)).view(np.uint8)
    assert np.array_equal(reach, np.where(x >= k, 0x80, 0).astype(np.uint8))


@pytest.mark.integration
def test_nearest_on_real_tokenizers_matches_brute_force() -> None:
    from transformers import AutoTokenizer

    from packllm_integrations.loading.catalog import CATALOG, is_installed
    from packllm_integrations.loading.loaders import _cached_catalog_model

    names = ("smollm2-135m", "qwen2.5-coder-0.5b")
    if not all(is_installed(n) for n in names):
        pytest.skip(f"bundled model packages not installed: {names}")
    ref, mem = (AutoTokenizer.from_pretrained(str(_cached_catalog_model(CATALOG[n], False))) for n in names)
    ref_bytes, mem_bytes = token_bytes(ref), token_bytes(mem)
    mem_special = alignment.special_ids(mem)
    ordinary = [i for i, b in enumerate(mem_bytes) if i not in mem_special and b]
    choices = [mem_bytes[i].decode("latin-1") for i in ordinary]
    known = set(choices)
    pending = [b.decode("latin-1") for b in ref_bytes if b and b.decode("latin-1") not in known]
    queries = random.Random(0).sample(pending, 300)
    ids = np.asarray(ordinary, dtype=np.int64)
    assert _nearest(queries, choices, ids, _Bar()) == _brute_force(queries, choices, ids)


def test_map_exact_matches_specials_and_floor(bl: Member, sp: Member) -> None:
    vmap = build_vocab_map(sp.tokenizer, bl.tokenizer, bl.logits_width, progress=False)
    sp_bytes, bl_bytes = token_bytes(sp.tokenizer), token_bytes(bl.tokenizer)
    out = vmap.output.tolist()
    assert len(out) == len(sp.tokenizer)
    exact = sum(1 for v, t in enumerate(out) if t < bl.logits_width and sp_bytes[v] == bl_bytes[t])
    assert exact >= vmap.exact - len(sp.special_ids)
    assert 0.3 < vmap.coverage <= 1.0
    # newline byte token maps to the byte-level newline token
    assert out[sp.tokenizer.convert_tokens_to_ids("<0x0A>")] == bl.tokenizer.convert_tokens_to_ids("Ċ")
    # specials: eos -> eos by role; never onto ordinary text
    assert out[sp.tokenizer.eos_token_id] == bl.tokenizer.eos_token_id
    for v in sp.special_ids:
        assert out[v] in bl.special_ids or out[v] == vmap.floor_index
    # ordinary tokens never map onto member special tokens or padded columns
    for v, t in enumerate(out):
        if v not in sp.special_ids:
            assert t not in bl.special_ids and t < len(bl.tokenizer)
    # floor columns take the member's lowest logit
    assert vmap.has_floor
    logits = torch.randn(2, bl.logits_width)
    mapped = vmap.member_logits(logits)
    floor_cols = (vmap.output == vmap.floor_index).nonzero().flatten()
    assert torch.equal(mapped[:, floor_cols[0]], logits.min(-1).values)


def test_map_into_padded_vocabulary(bl: Member, sp: Member) -> None:
    assert bl.logits_width > len(bl.tokenizer)  # the tiny Qwen has padded columns
    vmap = build_vocab_map(bl.tokenizer, sp.tokenizer, sp.logits_width, progress=False)
    assert vmap.output.numel() == len(bl.tokenizer)
    assert int(vmap.output.max()) <= sp.logits_width


def test_cache_round_trip_and_fingerprints(bl: Member, sp: Member, tmp_path: Path, monkeypatch) -> None:
    from packllm_integrations.loading import vocab_maps as loading

    built = load_vocab_map(sp.tokenizer, bl.tokenizer, bl.logits_width, progress=False, cache=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the map should come from the disk cache")

    monkeypatch.setattr(loading, "build_vocab_map", no_build)
    cached = load_vocab_map(sp.tokenizer, bl.tokenizer, bl.logits_width, progress=False, cache=tmp_path)
    assert torch.equal(built.output, cached.output) and torch.equal(built.input, cached.input)
    assert vocabulary_fingerprint(bl.tokenizer) != vocabulary_fingerprint(sp.tokenizer)
    assert vocabulary_fingerprint(bl.tokenizer) == bl.tokenizer_fingerprint
