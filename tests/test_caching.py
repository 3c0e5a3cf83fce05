"""The cache folders' checksums, checks and atomic writes, on real files (safetensors, JSON)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from packllm_integrations import ConfigError
from packllm_integrations.loading import caching


def _folder(path: Path, weights_bytes: int) -> Path:
    """A finished (not yet installed) cache folder: a safetensors file of about ``weights_bytes`` and a config."""
    path.mkdir(parents=True)
    save_file({"w": torch.arange(weights_bytes // 4, dtype=torch.float32)}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed folder whose weights are over 64 MiB, so the default check samples their chunks."""
    root = tmp_path_factory.mktemp("large")
    target = root / "large"
    caching.install(_folder(root / ".staging", 70 * caching.CHUNK), target, "large.gguf")
    return target


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / folder.name
    shutil.copytree(folder, out)
    return out


def test_install_writes_the_manifest_and_leaves_no_staging(tmp_path: Path) -> None:
    staging = _folder(tmp_path / ".staging-x", 4096)
    target = caching.install(staging, tmp_path / "x", "x.gguf")
    manifest = json.loads((target / caching.MARKER).read_text())
    assert manifest["format"] == caching.FORMAT and manifest["source"] == "x.gguf"
    assert set(manifest["files"]) == {"model.safetensors", "config.json"}
    assert manifest["files"]["model.safetensors"]["size"] == (target / "model.safetensors").stat().st_size
    assert not staging.exists() and caching.damage(target) is None
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


@pytest.mark.parametrize("mode", ["sample", "full"])
def test_the_first_and_last_chunks_are_always_checked(large: Path, tmp_path: Path, mode: str) -> None:
    assert caching.damage(large, mode) is None
    for offset in (0, (large / "model.safetensors").stat().st_size - 10):
        folder = _copy(large, tmp_path / str(offset))
        _overwrite(folder / "model.safetensors", offset, b"\0" * 10)
        problem = caching.damage(folder, mode)
        assert problem is not None and "model.safetensors" in problem and "bytes" in problem


def test_a_full_check_finds_one_flipped_bit_anywhere(large: Path, tmp_path: Path, monkeypatch) -> None:
    folder = _copy(large, tmp_path)
    weights = folder / "model.safetensors"
    offset = 33 * caching.CHUNK + 12345
    with weights.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))
    monkeypatch.setenv("PACKLLM_VERIFY_CACHE", "full")
    problem = caching.damage(folder)
    assert problem is not None and f"bytes {33 * caching.CHUNK}..{34 * caching.CHUNK - 1}" in problem


def test_a_zeroed_region_is_found_by_the_sampled_check(large: Path, tmp_path: Path) -> None:
    folder = _copy(large, tmp_path)
    _overwrite(folder / "model.safetensors", 2 * caching.CHUNK, b"\0" * (60 * caching.CHUNK))  # 60 of 71 chunks
    # 62 chunks of 69 are drawn: no draw can miss all 60 damaged ones
    assert "model.safetensors" in (caching.damage(folder, "sample") or "")


@pytest.mark.parametrize(
    "harm",
    [
        lambda f: (f / "config.json").write_text("{}"),
        lambda f: (f / "config.json").unlink(),
        lambda f: _overwrite(f / caching.MARKER, 0, b"\0" * 8),
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-1]),
    ],
    ids=["changed-config", "missing-file", "damaged-marker", "truncated"],
)
def test_small_changes_are_found_by_the_default_check(tmp_path: Path, harm) -> None:
    target = caching.install(_folder(tmp_path / ".s", 4096), tmp_path / "t", "t.gguf")
    harm(target)
    assert caching.damage(target) is not None


def test_an_earlier_versions_folder_is_adopted_once(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "old", 4096)
    (folder / caching.MARKER).write_text("old.gguf\n")  # what the previous version wrote
    assert caching.damage(folder) is None
    manifest = json.loads((folder / caching.MARKER).read_text())
    assert manifest["source"] == "old.gguf" and "model.safetensors" in manifest["files"]
    _overwrite(folder / "model.safetensors", 100, b"\1")
    assert caching.damage(folder) is not None  # checked against the recorded manifest from now on


@pytest.mark.parametrize(
    "harm, found",
    [
        (lambda f: _overwrite(f / "model.safetensors", 0, b"\0" * 8), "no safetensors header"),
        (lambda f: _overwrite(f / "model.safetensors", 9, b"\0\0"), "damaged safetensors header"),
        (lambda f: _overwrite(f / "model.safetensors", (f / "model.safetensors").stat().st_size, b"x"), "accounts"),
        (lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
    ],
)
def test_an_earlier_versions_damaged_folder_is_not_adopted(tmp_path: Path, harm, found: str) -> None:
    folder = _folder(tmp_path / "old", 4096)
    (folder / caching.MARKER).write_text("old.gguf\n")
    harm(folder)
    assert found in (caching.damage(folder) or "")
    assert (folder / caching.MARKER).read_text() == "old.gguf\n"


def test_install_keeps_a_sound_folder_another_process_installed(tmp_path: Path) -> None:
    first = caching.install(_folder(tmp_path / ".a", 4096), tmp_path / "t", "t.gguf")
    marker = (first / caching.MARKER).read_text()
    second = caching.install(_folder(tmp_path / ".b", 8192), tmp_path / "t", "t.gguf")
    assert second == first and (first / caching.MARKER).read_text() == marker
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


@pytest.mark.parametrize("damaged", ["folder", "file"])
def test_install_replaces_a_damaged_folder_or_a_file_in_its_place(tmp_path: Path, damaged: str) -> None:
    target = tmp_path / "t"
    if damaged == "folder":
        caching.install(_folder(tmp_path / ".a", 4096), target, "t.gguf")
        (target / "config.json").write_text("{}")
    else:
        target.write_text("not a folder")
    caching.install(_folder(tmp_path / ".b", 8192), target, "t.gguf")
    assert caching.damage(target) is None and (target / "model.safetensors").stat().st_size > 8192
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_an_atomic_file_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "map.pt"
    with caching.atomic_file(path) as out:
        out.write(b"one")
        assert not path.exists()
    with pytest.raises(RuntimeError), caching.atomic_file(path) as out:
        out.write(b"two, half")
        raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["map.pt"]


def test_the_verify_mode_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("PACKLLM_VERIFY_CACHE", raising=False)
    assert caching.verify_mode() == "sample"
    monkeypatch.setenv("PACKLLM_VERIFY_CACHE", "full")
    assert caching.verify_mode() == "full"
    monkeypatch.setenv("PACKLLM_VERIFY_CACHE", "thorough")
    with pytest.raises(ConfigError, match="PACKLLM_VERIFY_CACHE='thorough'"):
        caching.verify_mode()
