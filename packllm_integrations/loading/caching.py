"""The disk caches' files: checksums written when a cache folder is made, checked when it is read.

A float32 copy of a GGUF file lives in a folder ``<cache_dir>/models/<key>/`` that is usable
when its marker file ``complete`` holds the folder's manifest: every file's size and the
sha256 of each of its 1 MiB chunks. :func:`damage` checks a folder before it is loaded:

- sizes always;
- chunks as ``$PACKLLM_VERIFY_CACHE`` says: ``sample`` (the default) reads every chunk of
  the small files and, of each file over 64 MiB (the weights), the first and last chunks
  and 62 others drawn at random on every load, so about 64 MiB per weights file (tens of
  milliseconds), and damage that a load misses is likely found by a later one; ``full``
  reads every chunk (seconds for a 2.5 GB copy).

A folder written by an earlier version (its marker names only the GGUF file) is adopted on
its first load: its JSON and safetensors files must be well formed (headers that parse,
sizes that match them), then its manifest is recorded. Every write goes to a temporary
name of its own (:func:`atomic_file`, :func:`install`) and is renamed into place, so two
processes never share a half-written file, and a failure leaves nothing behind.

The cache folder (:func:`cache_dir`) is ``$PACKLLM_CACHE_DIR`` if set, else
``$XDG_CACHE_HOME/packllm_integrations``, else ``~/.cache/packllm_integrations``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError


def cache_dir() -> Path:
    """The user cache folder (see the module docstring for how to move it)."""
    if os.environ.get("PACKLLM_CACHE_DIR"):
        return Path(os.environ["PACKLLM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "packllm_integrations"


__all__ = [
    "MARKER",
    "atomic_file",
    "cache_dir",
    "concatenate",
    "damage",
    "install",
    "manifest",
    "sha256_file",
    "verify_mode",
]

MARKER = "complete"
"""The file whose presence says a cache folder is complete; it holds the manifest."""
FORMAT = 2
"""The manifest's format (1: a marker naming the GGUF file only, no checksums)."""
CHUNK = 1 << 20
"""Bytes per checksummed chunk."""
SAMPLED = 64
"""Chunks read per file by the ``sample`` check (files of at most this many are read whole)."""
MODES = ("sample", "full")
ENV = "PACKLLM_VERIFY_CACHE"


def verify_mode() -> str:
    """How thoroughly :func:`damage` reads a cache folder: ``$PACKLLM_VERIFY_CACHE`` ('sample' by default)."""
    mode = os.environ.get(ENV) or "sample"
    if mode not in MODES:
        raise ConfigError(ENV, mode, "'sample' (sizes and sampled chunks, the default) or 'full' (every chunk)")
    return mode


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _file_entry(path: Path) -> dict[str, Any]:
    chunks = []
    with path.open("rb") as src:
        while block := src.read(CHUNK):
            chunks.append(_digest(block))
    return {"size": path.stat().st_size, "chunks": chunks}


def manifest(folder: Path, source: str) -> dict[str, Any]:
    """The manifest of ``folder``'s files (all but the marker and hidden ones); ``source`` names the GGUF."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MARKER and not p.name.startswith("."))
    return {"format": FORMAT, "source": source, "chunk": CHUNK, "files": {p.name: _file_entry(p) for p in files}}


def _chunks_to_read(count: int, mode: str, rng: random.Random) -> Sequence[int]:
    if mode == "full" or count <= SAMPLED:
        return range(count)
    return sorted({0, count - 1, *rng.sample(range(1, count - 1), SAMPLED - 2)})


def _check_files(folder: Path, recorded: dict[str, Any], mode: str) -> str | None:
    rng = random.Random(os.urandom(16))
    for name, entry in recorded["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{path} has {size} bytes, {entry['size']} when it was written"
        chunks = entry["chunks"]
        with path.open("rb") as src:
            for i in _chunks_to_read(len(chunks), mode, rng):
                src.seek(i * CHUNK)
                if _digest(src.read(CHUNK)) != chunks[i]:
                    end = min(size, (i + 1) * CHUNK) - 1
                    return f"{path}: bytes {i * CHUNK}..{end} differ from the checksum written when it was made"
    return None


def damage(folder: Path, mode: str | None = None) -> str | None:
    """Why the complete cache folder ``folder`` cannot be used (naming the file), or None when it can.

    ``mode``: 'sample' or 'full' (None: :func:`verify_mode`). A folder written by an earlier
    version is adopted (see the module docstring): checked for structure, then its manifest
    recorded (unless the folder is read-only: then it is checked for structure on each load).
    """
    mode = mode or verify_mode()
    marker = folder / MARKER
    try:
        text = marker.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"its marker {marker} cannot be read: {exc}"
    try:
        recorded = json.loads(text)
    except ValueError:
        recorded = None
    try:
        if isinstance(recorded, dict) and recorded.get("format") == FORMAT and recorded.get("chunk") == CHUNK:
            return _check_files(folder, recorded, mode)
        legacy = text.strip()
        if recorded is None and legacy.endswith(".gguf") and legacy.isprintable():  # format 1: the GGUF's name
            return _adopt(folder, legacy)
        return f"its marker {marker} holds no manifest this version reads"
    except OSError as exc:
        return f"{getattr(exc, 'filename', None) or folder} cannot be read: {exc}"
    except (KeyError, TypeError, IndexError) as exc:
        return f"its marker {marker} holds a damaged manifest ({exc!r})"


def _adopt(folder: Path, source: str) -> str | None:
    """Check a folder written without checksums for structure; record its manifest (when the folder is writable)."""
    for path in sorted(folder.iterdir()):
        problem = _malformed(path)
        if problem is not None:
            return problem
    with contextlib.suppress(OSError), atomic_file(folder / MARKER) as out:
        out.write(json.dumps(manifest(folder, source)).encode())
    return None


def _malformed(path: Path) -> str | None:
    """What is wrong with the form of a cache file (JSON that does not parse, a safetensors file whose
    header does not parse or does not account for its size), or None."""
    if path.suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as exc:
            return f"{path} is not valid JSON ({exc})"
    elif path.suffix == ".safetensors":
        size = path.stat().st_size
        with path.open("rb") as src:
            length = int.from_bytes(src.read(8), "little")
            if not 0 < length <= size - 8:
                return f"{path} has no safetensors header (length field {length}, file of {size} bytes)"
            try:
                header = json.loads(src.read(length))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                return f"{path} has a damaged safetensors header ({exc!r})"
        if 8 + length + end != size:
            return f"{path} has {size} bytes, its safetensors header accounts for {8 + length + end}"
    return None


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file handle that becomes ``path`` only when the block succeeds (a temporary name of
    this writer's own until then; removed on failure)."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def install(staging: Path, target: Path, source: str) -> Path:
    """Give the finished folder ``staging`` its manifest and rename it to ``target``.

    When another process installed ``target`` meanwhile and it is usable, that one is kept
    (``staging`` is removed); a damaged ``target`` is first moved aside, then removed.
    """
    (staging / MARKER).write_text(json.dumps(manifest(staging, source)))
    for _ in range(3):
        try:
            staging.rename(target)
            return target
        except OSError:
            if not target.exists():
                raise
        if (target / MARKER).is_file() and damage(target, "sample") is None:
            shutil.rmtree(staging, ignore_errors=True)
            return target
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".damaged-{target.name}-"))
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            target.rename(aside / target.name)
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"could not install {staging} as {target}: it keeps being replaced")


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, leave=False)


def concatenate(parts: Sequence[Path], out: Path, desc: str, progress: bool) -> None:
    """Join ``parts`` into ``out`` (a progress bar named ``desc``)."""
    with out.open("wb") as dst, _progress(sum(p.stat().st_size for p in parts), desc, progress) as bar:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 22):
                    dst.write(block)
                    bar.update(len(block))


def sha256_file(path: Path, desc: str, progress: bool) -> str:
    """The sha256 of the whole file ``path`` (a progress bar named ``desc``)."""
    digest = hashlib.sha256()
    with path.open("rb") as src, _progress(path.stat().st_size, desc, progress) as bar:
        while block := src.read(1 << 22):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()
