"""GGUF files as llama.cpp reads them: catalog models assembled once, tokenizers cached.

A catalog model shipped in one part is read where its package put it; one shipped in
parts is joined once into ``<cache_dir>/gguf/`` (its sha256 checked, written atomically).
The Hugging Face tokenizer of a GGUF file (which the engine needs for alignment and text)
is built from the file's metadata by transformers on first use and cached in
``<cache_dir>/tokenizers/``, so later loads take a fraction of a second.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, ModelNotFoundError
from . import caching
from .catalog import CatalogEntry

__all__ = ["catalog_gguf", "file_key", "gguf_tokenizer", "is_scratch"]

logger = logging.getLogger(__name__)


def file_key(path: Path) -> str:
    """A short key of a file's place, size and modification time (a changed file gets a new key)."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def catalog_gguf(entry: CatalogEntry, folder: Path, progress: bool) -> Path:
    """The whole GGUF file of a catalog model (its parts joined once into ``folder``), sha256-checked."""
    parts = entry.part_paths()
    if parts is None:
        raise ModelNotFoundError(
            f"model={entry.name!r} is a catalog model whose packages are not installed; install it with:\n"
            f"    {entry.install}"
        )
    stamp = folder / f"{entry.name}-{entry.sha256[:16]}.checked"
    if len(parts) == 1:
        path = parts[0]
        if not (stamp.is_file() and stamp.read_text() == file_key(path)):
            _check_sha(entry, path, progress)
            _write_quietly(stamp, file_key(path))
        return path
    path = folder / f"{entry.sha256[:16]}-{entry.gguf_name}"
    if path.is_file() and stamp.is_file() and stamp.read_text() == file_key(path):
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _assemble(entry, parts, folder, path, progress)
    except OSError as exc:
        logger.warning(
            "Could not write the GGUF file of %s in %s (%s); it is assembled in a temporary folder for this "
            "load only (set PACKLLM_CACHE_DIR to a writable folder to keep it)",
            entry.name,
            folder,
            exc,
        )
        scratch = Path(tempfile.mkdtemp(prefix="packllm-gguf-"))
        path = scratch / entry.gguf_name
        _assemble(entry, parts, scratch, path, progress)
        return path
    _write_quietly(stamp, file_key(path))
    return path


def is_scratch(path: Path) -> bool:
    """Whether ``path`` is a temporary GGUF file :func:`catalog_gguf` made (the caller removes it after loading)."""
    return path.parent.name.startswith("packllm-gguf-") and path.parent.parent == Path(tempfile.gettempdir())


def _assemble(entry: CatalogEntry, parts: list[Path], folder: Path, path: Path, progress: bool) -> None:
    with tempfile.TemporaryDirectory(dir=folder, prefix=".assembling-") as tmp:
        whole = Path(tmp) / entry.gguf_name
        caching.concatenate(parts, whole, f"assembling {entry.name}", progress)
        _check_sha(entry, whole, progress)
        whole.replace(path)


def _check_sha(entry: CatalogEntry, path: Path, progress: bool) -> None:
    digest = caching.sha256_file(path, f"checking {entry.name}", progress)
    if digest != entry.sha256:
        raise ModelLoadError(
            f"model={entry.name!r}: the GGUF's sha256 is {digest}, expected {entry.sha256}; "
            f"reinstall its packages with: {entry.install}"
        )


def _write_quietly(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with caching.atomic_file(path) as out:
            out.write(text.encode())
    except OSError as exc:
        logger.warning("Could not write %s (%s); the file will be checked again next time.", path, exc)


def gguf_tokenizer(path: Path, folder: Path) -> Any:
    """The Hugging Face tokenizer of the GGUF file ``path`` (cached under ``folder``)."""
    from transformers import AutoTokenizer

    target = folder / f"{path.stem}-{file_key(path)}"
    if (target / caching.MARKER).is_file() and caching.damage(target) is None:
        try:
            return AutoTokenizer.from_pretrained(str(target))
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring the unreadable cached tokenizer %s (%s)", target, exc)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many kinds for GGUF files it cannot read
        raise ModelLoadError(f"could not read the tokenizer of GGUF file {path}: {exc}") from exc
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(dir=_ensure(folder), prefix=f".staging-{target.name}-"))
        tokenizer.save_pretrained(staging)
        caching.install(staging, target, path.name)
    except OSError as exc:
        logger.warning("Could not cache the tokenizer of %s in %s (%s)", path, folder, exc)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
