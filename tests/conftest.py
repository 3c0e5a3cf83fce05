from __future__ import annotations

import pytest

from tests import tiny


@pytest.fixture(scope="session")
def bl():
    """Tiny member, byte-level BPE tokenizer (Qwen2 architecture, padded logit columns)."""
    return tiny.bytelevel_member()


@pytest.fixture(scope="session")
def bl_b():
    """Another tiny member with the same byte-level tokenizer (Llama architecture)."""
    return tiny.bytelevel_member_b()


@pytest.fixture(scope="session")
def sp():
    """Tiny member, SentencePiece-style tokenizer with byte fallback and a BOS."""
    return tiny.sentencepiece_member()
