from __future__ import annotations

from pathlib import Path

import pytest

from packllm_integrations import CATALOG, ConfigError, MemberSpec, ModelNotFoundError, load_member
from packllm_integrations.catalog import is_installed
from packllm_integrations.loading import cache_dir, parse_spec


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
