"""A tokenizer's vocabulary as text: the bytes each token stands for, its special ids, its fingerprint.

Token texts are compared as the bytes they stand for, so SentencePiece's "▁" and byte-level
BPE's "Ġ" both read as a space, and byte tokens such as ``<0x0A>`` and ``Ċ`` both read as a
newline. Used by the vocabulary maps (:mod:`.mined`), the natural projection
(:mod:`.projection`), the constraints' token tables and the backends' fingerprints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "common_prefix",
    "token_bytes",
    "byte_level_chars",
    "text_token_order",
    "special_ids",
    "vocabulary_fingerprint",
]


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


def byte_level_chars() -> dict[int, str]:
    """GPT-2's bytes-to-unicode table: the character byte-level BPE vocabularies spell each byte with."""
    return {b: ch for ch, b in _byte_decoder().items()}


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
        elif _is_byte_token(tok):
            try:
                out.append(bytes([int(tok[3:5], 16)]))
            except ValueError:
                out.append(tok.encode("utf-8"))
        else:
            out.append(tok.replace("▁", " ").encode("utf-8"))
    return out


def text_token_order(tokenizer: Any, special: set[int] | frozenset[int]) -> list[int]:
    """The ids of ordinary tokens, those the tokenizer writes text with first: byte-fallback
    tokens (``<0x28>``) come after every other token, so a token whose bytes a byte token
    also stands for ("(") is the one an exact match by bytes picks.
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ordinary = [i for i in range(len(tokens)) if i not in special]
    return sorted(ordinary, key=lambda i: _is_byte_token(tokens[i] or ""))


def _is_byte_token(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special and control tokens."""
    ids = {int(i) for i in tokenizer.all_special_ids}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(int(i) for i, tok in decoder.items() if getattr(tok, "special", False))
    size = len(tokenizer)  # len() of a fast tokenizer recounts its vocabulary: once, not per id
    return {i for i in ids if i < size}


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """A hash of the id -> token table and the special ids: equal means same vocabulary."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    payload = json.dumps([tokens, sorted(special_ids(tokenizer))], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
