from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from rapidfuzz.distance import Levenshtein

from packllm_integrations.alignment import _nearest, build_vocab_map, token_bytes, vocab_map, vocabulary_fingerprint
from packllm_integrations.members import Member


class _Bar:
    def update(self, n: int) -> None:
        pass


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
    from packllm_integrations import alignment

    alignment._memory.clear()
    built = vocab_map(sp.tokenizer, bl.tokenizer, bl.logits_width, progress=False, cache=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    alignment._memory.clear()

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the map should come from the disk cache")

    monkeypatch.setattr(alignment, "build_vocab_map", no_build)
    cached = vocab_map(sp.tokenizer, bl.tokenizer, bl.logits_width, progress=False, cache=tmp_path)
    assert torch.equal(built.output, cached.output) and torch.equal(built.input, cached.input)
    assert vocabulary_fingerprint(bl.tokenizer) != vocabulary_fingerprint(sp.tokenizer)
    assert vocabulary_fingerprint(bl.tokenizer) == bl.tokenizer_fingerprint
