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


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model saved as a Hugging Face folder (what users pass as a local member)."""
    folder = tmp_path_factory.mktemp("tiny-sp")
    member = tiny.sentencepiece_member()
    member.model.save_pretrained(folder)
    member.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_folder_bl(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny-bl")
    member = tiny.bytelevel_member()
    member.model.save_pretrained(folder)
    member.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pack_folders(tmp_path_factory: pytest.TempPathFactory, bl, sp) -> list[str]:
    """The two tiny members (byte-level, SentencePiece-style) saved as model folders named
    ``tiny-a`` and ``tiny-b`` (what ``--model`` and lm-eval's ``models=`` read)."""
    out = []
    for name, member in (("tiny-a", bl), ("tiny-b", sp)):
        folder = tmp_path_factory.mktemp("models") / name
        member.model.save_pretrained(folder)
        member.tokenizer.save_pretrained(folder)
        out.append(str(folder))
    return out


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory):
    """:func:`tiny.bytelevel_member_b` as a GGUF file (what a user's own ``.gguf`` member is)."""
    return tiny.write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")
