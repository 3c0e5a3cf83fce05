from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from packllm_integrations import CATALOG, ConfigError, Member, MemberSpec, ModelNotFoundError, load_member
from packllm_integrations.loading import cache_dir, caching, parse_spec
from packllm_integrations.loading.catalog import is_installed
from tests import tiny


def test_parse_spec_and_names() -> None:
    spec = parse_spec("/models/my-model,name=mine,device=cpu,dtype=bfloat16")
    assert spec == MemberSpec("/models/my-model", name="mine", device="cpu", dtype="bfloat16")
    assert MemberSpec("gemma3-270m").display_name == "gemma3-270m"
    assert MemberSpec("/x/y/model.gguf").display_name == "model"
    assert MemberSpec("/x/y/folder/").display_name == "folder"
    with pytest.raises(ConfigError, match="model"):
        parse_spec("gemma3-270m,colour=red")
    with pytest.raises(ConfigError, match="dtype"):
        MemberSpec("gemma3-270m", dtype="int3")
    with pytest.raises(ConfigError, match="device"):
        MemberSpec("gemma3-270m", device="toaster")


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACKLLM_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PACKLLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "packllm_integrations"


def test_missing_models_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError, match="catalog name"):
        load_member("no-such-model")
    with pytest.raises(ModelNotFoundError, match="no such GGUF"):
        load_member(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_member(str(tmp_path / "empty"))
    # a catalog model whose packages are absent: the error gives the install command
    monkeypatch.setenv("PACKLLM_CACHE_DIR", str(tmp_path / "cache"))
    entry = CATALOG["qwen2.5-coder-1.5b"]
    monkeypatch.setattr(type(entry), "part_paths", lambda self: None)
    with pytest.raises(ModelNotFoundError) as info:
        load_member("qwen2.5-coder-1.5b")
    assert entry.install in str(info.value)
    assert not is_installed("qwen2.5-coder-1.5b")


def test_load_local_folder(tiny_folder: Path) -> None:
    member = load_member(f"{tiny_folder},name=local")
    assert member.name == "local"
    assert member.encode("hello") and member.context_window == 256


# ---- the float32 copies of GGUF files (a real tiny GGUF, real cache files) ----------------------


def _cached(cache: Path) -> Path:
    (folder,) = [p for p in (cache / "models").iterdir() if not p.name.startswith(".")]
    return folder


def _logits(member) -> torch.Tensor:
    ids = torch.tensor([member.encode("def add(a, b):\n    return a + b")])
    with torch.no_grad():
        return member.model(ids).logits


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PACKLLM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_gguf_is_converted_once_with_its_checksums(cache: Path, tiny_gguf: Path, caplog) -> None:
    first = load_member(f"{tiny_gguf},backend=transformers", progress=False)
    assert torch.equal(_logits(first), _logits(tiny.bytelevel_member_b()))
    folder = _cached(cache)
    manifest = json.loads((folder / caching.MARKER).read_text())
    assert manifest["source"] == tiny_gguf.name and "model.safetensors" in manifest["files"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = load_member(f"{tiny_gguf},backend=transformers", progress=False)
    assert not caplog.records  # read from the cache, no conversion
    assert torch.equal(_logits(again), _logits(first))
    assert sorted(p.name for p in (cache / "models").iterdir()) == [folder.name]


@pytest.mark.parametrize(
    "harm",
    [
        lambda f: (f / "model.safetensors").write_bytes(bytes((f / "model.safetensors").stat().st_size)),
        lambda f: _flip(f / "model.safetensors", (f / "model.safetensors").stat().st_size // 2),
        lambda f: _flip(f / "model.safetensors", 20),  # inside the safetensors header
        lambda f: (f / "tokenizer.json").write_text("{}"),
        lambda f: (f / "config.json").unlink(),
        lambda f: (f / caching.MARKER).write_bytes(b"\0" * 16),
    ],
    ids=["zeroed-weights", "flipped-weight-bit", "flipped-header-bit", "changed-tokenizer", "missing-config", "marker"],
)
def test_a_damaged_copy_is_rebuilt_from_the_gguf_with_a_warning(cache: Path, tiny_gguf: Path, caplog, harm) -> None:
    expected = _logits(load_member(f"{tiny_gguf},backend=transformers", progress=False))
    folder = _cached(cache)
    harm(folder)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        member = load_member(f"{tiny_gguf},backend=transformers", progress=False)
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and str(folder) in damaged[0] and tiny_gguf.name in damaged[0]
    assert torch.equal(_logits(member), expected)
    assert caching.damage(folder, "full") is None
    assert sorted(p.name for p in (cache / "models").iterdir()) == [folder.name]  # nothing left behind


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def test_a_copy_written_by_the_previous_version_is_kept(cache: Path, tiny_gguf: Path, caplog) -> None:
    load_member(f"{tiny_gguf},backend=transformers", progress=False)
    folder = _cached(cache)
    (folder / caching.MARKER).write_text(tiny_gguf.name + "\n")  # the previous version's marker
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_member(f"{tiny_gguf},backend=transformers", progress=False)
    assert not caplog.records and (folder / "model.safetensors").stat().st_mtime_ns == weights  # not reconverted
    assert json.loads((folder / caching.MARKER).read_text())["format"] == caching.FORMAT


@pytest.mark.parametrize("where", ["a file", "a read-only folder"])
def test_a_cache_that_cannot_be_written_costs_a_warning(tmp_path: Path, tiny_gguf: Path, monkeypatch, caplog, where):
    cache = tmp_path / "cache"
    if where == "a file":
        cache.write_text("not a folder")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only folders")
        cache.mkdir()
        cache.chmod(0o555)
    monkeypatch.setenv("PACKLLM_CACHE_DIR", str(cache))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        member = load_member(f"{tiny_gguf},dtype=bfloat16", progress=False)
    assert any("Could not write" in r.getMessage() and str(cache) in r.getMessage() for r in caplog.records)
    assert member.model.dtype == torch.bfloat16
    reference = tiny.bytelevel_member_b()
    assert torch.equal(_logits(member), _logits(Member("b", reference.model.to(torch.bfloat16), reference.tokenizer)))
    if where == "a file":
        assert cache.read_text() == "not a folder"
    else:
        assert list(cache.iterdir()) == []


def test_a_damaged_model_folder_is_named(tmp_path: Path, tiny_folder: Path) -> None:
    import shutil

    from packllm_integrations import ModelLoadError

    folder = tmp_path / "mine"
    shutil.copytree(tiny_folder, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(weights.stat().st_size))
    with pytest.raises(ModelLoadError, match="mine"):
        load_member(str(folder), progress=False)


def test_a_vocabulary_map_cache_that_cannot_be_written_costs_a_warning(tmp_path: Path, caplog) -> None:
    from packllm_integrations.loading import load_vocab_map

    blocked = tmp_path / "maps"
    blocked.write_text("not a folder")
    a, b = tiny.bytelevel_member(), tiny.sentencepiece_member()
    with caplog.at_level(logging.WARNING):
        vmap = load_vocab_map(a.tokenizer, b.tokenizer, b.logits_width, progress=False, cache=blocked)
    assert vmap.output.numel() and any("Could not cache" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]


@pytest.mark.integration
def test_a_damaged_catalog_copy_is_rebuilt(cache: Path, caplog) -> None:
    if not is_installed("smollm2-135m"):
        pytest.skip("smollm2-135m's packages are not installed")
    expected = _logits(load_member("smollm2-135m,backend=transformers", progress=False))
    folder = _cached(cache)
    with (folder / "model.safetensors").open("r+b") as f:  # zero the header and the first weights
        f.write(bytes(caching.CHUNK))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        member = load_member("smollm2-135m,backend=transformers", progress=False)
    assert any("damaged" in r.getMessage() and "model.safetensors" in r.getMessage() for r in caplog.records)
    assert torch.equal(_logits(member), expected)
    assert caching.damage(folder, "full") is None


@pytest.mark.integration
def test_a_catalog_model_assembled_from_parts_without_a_writable_cache(tmp_path: Path, monkeypatch, caplog) -> None:
    if not is_installed("gemma3-270m"):
        pytest.skip("gemma3-270m's packages are not installed")
    blocked = tmp_path / "cache"
    blocked.write_text("not a folder")
    monkeypatch.setenv("PACKLLM_CACHE_DIR", str(blocked))
    with caplog.at_level(logging.WARNING):
        member = load_member("gemma3-270m", progress=False)
    assert any("Could not write" in r.getMessage() for r in caplog.records)
    assert member.encode("Hello") and blocked.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_backend_name_registers_once() -> None:
    from packllm_integrations.loading import backend_names, registry

    assert backend_names() == ("auto", "openai", "llama.cpp", "transformers")
    for taken in ("auto", "openai"):
        with pytest.raises(ConfigError, match="backend"):
            registry.register(taken)
    with pytest.raises(ConfigError, match="one of"):
        registry.backend_kind("vllm")
    with pytest.raises(ConfigError, match="backend"):
        MemberSpec("smollm2-135m", backend="vllm")
