"""Member specs: how to load one member, as an object or as one command-line string.

A spec names where the model is (a catalog name, a folder, a GGUF file, a hub id, or a
server) and which backend runs it:

- ``backend="transformers"``: a Hugging Face causal LM in this process (GGUF files are
  dequantized to a cached float32 copy);
- ``backend="llama.cpp"``: a GGUF file as it is, in this process (``llama-cpp-python``);
- ``backend="openai"``: a model on an OpenAI-compatible server (vLLM, llama.cpp's server),
  fused over the top log-probabilities the server returns;
- ``backend="auto"`` (the default): llama.cpp for every GGUF file and catalog model on the
  CPU with the default dtype, transformers for the rest (model folders, hub ids, GPUs, another
  dtype). llama.cpp reads the quantized file as it is: the default pack decodes about 2x
  faster from a fifth of the memory, with no float32 copy to build
  (``benchmarks/results/backends.md``). Without ``llama-cpp-python`` installed (the
  ``llama-cpp`` extra), ``auto`` falls back to transformers and says so once. The
  environment variable ``PACKLLM_BACKEND=transformers`` makes ``auto`` mean transformers
  everywhere (``PACKLLM_BACKEND=llama.cpp`` is the default).

Strings: ``MODEL[,name=N][,device=D][,dtype=T][,backend=B][,threads=N]`` for local members,
``openai:URL[,model=M][,name=N][,tokenizer=PATH][,api_key_env=VAR][,top_k=K][,timeout=S]``
for a served one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..errors import ConfigError
from .catalog import CATALOG
from .registry import backend_names

__all__ = ["BACKEND_VARIABLE", "MemberSpec", "llama_cpp_installed", "parse_spec"]

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")
BACKEND_VARIABLE = "PACKLLM_BACKEND"
_LOCAL_OPTIONS = ("name", "device", "dtype", "backend", "threads")
_REMOTE_OPTIONS = ("model", "name", "tokenizer", "api_key_env", "top_k", "timeout")


@dataclass(frozen=True)
class MemberSpec:
    """How to load one member.

    Args:
        model: a catalog name (``packllm models`` lists them), a local Hugging Face model
            folder, a ``.gguf`` file, or a Hugging Face hub id (needs network access); for a
            served member (``backend="openai"``), the server's model name ("" takes the
            server's only model).
        name: the member's name in reports; defaults to the catalog name, the file or folder
            name, or the served model's name.
        device: a torch device string (``"cpu"``, ``"cuda:1"``...); transformers only.
        dtype: ``"float32"`` (default; fastest on CPUs), ``"bfloat16"``, ``"float16"`` or
            ``"auto"``; transformers only (a llama.cpp member reads the GGUF's own types).
        backend: ``"auto"``, ``"transformers"``, ``"llama.cpp"`` or ``"openai"`` (see the module).
        threads: CPU threads of a llama.cpp member (default: the cores this process may use).
        url: an OpenAI-compatible server's base URL, e.g. ``http://127.0.0.1:8080/v1``.
        tokenizer: a served member's tokenizer: a local model folder, a GGUF file or a catalog
            name with the server's vocabulary (required: the engine aligns token ids).
        api_key_env: the environment variable holding the server's API key (the key itself is
            never stored in the spec, logged or printed).
        top_k: how many next-token log-probabilities to ask a server for (default 20, the
            usual server cap; vLLM's is ``--max-logprobs``).
        timeout: seconds one server request may take before the member fails.

    Example:
        >>> MemberSpec("gemma3-270m", backend="llama.cpp").backend
        'llama.cpp'
    """

    model: str
    name: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "auto"
    threads: int | None = None
    url: str | None = None
    tokenizer: str | None = None
    api_key_env: str | None = None
    top_k: int = 20
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.backend not in backend_names():
            raise ConfigError("backend", self.backend, f"one of {list(backend_names())}")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", self.dtype, f"one of {sorted(DTYPES)}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError("threads", self.threads, "a whole number >= 1")
        if self.backend == "openai":
            self._check_remote()
            return
        remote = {"tokenizer": self.tokenizer, "api_key_env": self.api_key_env}
        remote |= {
            "top_k": None if self.top_k == 20 else self.top_k,
            "timeout": None if self.timeout == 60.0 else self.timeout,
        }
        for name, value in remote.items():
            if value is not None:
                raise ConfigError(name, value, "nothing for a local member (it is a served member's option)")
        if self.url is not None:
            raise ConfigError("url", self.url, "no url for a local member (backend='openai' reads a server)")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError("device", self.device, "a torch device such as 'cpu' or 'cuda:0'") from exc
        if device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
        ):
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ConfigError("device", self.device, f"a device this machine has ('cpu'; CUDA devices here: {found})")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", self.model, "a catalog name, a model folder, a .gguf file or a hub id")

    def _check_remote(self) -> None:
        for name, value, default in (("device", self.device, "cpu"), ("dtype", self.dtype, "float32")):
            if value != default:
                raise ConfigError(name, value, f"the default {default!r} for a served member (the server decides)")
        if self.threads is not None:
            raise ConfigError("threads", self.threads, "None for a served member (the server decides)")
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ConfigError("url", self.url, "a server's base URL such as 'http://127.0.0.1:8080/v1'")
        if not isinstance(self.model, str):
            raise ConfigError("model", self.model, "the server's model name ('' for its only model)")
        if not self.tokenizer:
            raise ConfigError(
                "tokenizer",
                self.tokenizer,
                "a folder, GGUF file or catalog name with the served model's vocabulary",
            )
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ConfigError("api_key_env", self.api_key_env, "the name of a set environment variable")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 1 <= self.top_k <= 1000:
            raise ConfigError("top_k", self.top_k, "a whole number from 1 to 1000")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ConfigError("timeout", self.timeout, "a number of seconds > 0")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.backend == "openai":
            return self.model or (Path(self.tokenizer or "").stem or "remote")
        if self.model in CATALOG:
            return self.model
        path = Path(self.model)
        if path.suffix == ".gguf":
            return path.stem
        return path.name or self.model

    @property
    def is_gguf(self) -> bool:
        """Whether the weights are a GGUF file (a catalog model or a ``.gguf`` path)."""
        return self.model in CATALOG or Path(self.model).suffix == ".gguf"

    def resolved_backend(self) -> str:
        """The backend that runs this member: ``backend``, with ``"auto"`` decided (see the module).

        >>> MemberSpec("model-folder").resolved_backend()  # not a GGUF file
        'transformers'
        """
        if self.backend != "auto":
            return self.backend
        chosen = os.environ.get(BACKEND_VARIABLE, "").strip() or "llama.cpp"
        if chosen not in ("transformers", "llama.cpp"):
            raise ConfigError(BACKEND_VARIABLE, chosen, "'transformers' or 'llama.cpp' (what backend='auto' means)")
        on_cpu = torch.device(self.device).type == "cpu"
        if chosen == "llama.cpp" and self.is_gguf and self.dtype == "float32" and on_cpu:
            if llama_cpp_installed():
                return "llama.cpp"
            _warn_no_llama_cpp()
        return "transformers"


def llama_cpp_installed() -> bool:
    """Whether ``llama-cpp-python`` can be imported (looked up, not imported)."""
    return importlib.util.find_spec("llama_cpp") is not None


@functools.cache
def _warn_no_llama_cpp() -> None:
    logger.warning(
        "GGUF members run on transformers (dequantized to a cached float32 copy) because llama-cpp-python "
        "is not installed; pip install 'packllm-integrations[llama-cpp]' runs them as they are, about 2x "
        "faster from a fifth of the memory."
    )


def parse_spec(text: str) -> MemberSpec:
    """Parse a command-line spec (see the module for both forms).

    >>> parse_spec("gemma3-270m,dtype=bfloat16")
    MemberSpec(model='gemma3-270m', name=None, device='cpu', dtype='bfloat16', backend='auto', threads=None, \
url=None, tokenizer=None, api_key_env=None, top_k=20, timeout=60.0)
    >>> parse_spec("openai:http://127.0.0.1:8080/v1,model=qwen,tokenizer=qwen2.5-coder-0.5b").url
    'http://127.0.0.1:8080/v1'
    """
    if not isinstance(text, str):
        raise ConfigError("model", text, "a spec string or a MemberSpec")
    if text.startswith("openai:"):
        url, *options = text[len("openai:") :].split(",")
        values = _options(text, options, _REMOTE_OPTIONS, "openai:URL[,model=M][,name=N][,tokenizer=PATH]...")
        values.setdefault("model", "")
        return MemberSpec(backend="openai", url=url, **_typed(values))  # type: ignore[arg-type]
    model, *options = text.split(",")
    values = _options(text, options, _LOCAL_OPTIONS, "MODEL[,name=N][,device=D][,dtype=T][,backend=B][,threads=N]")
    return MemberSpec(model=model, **_typed(values))  # type: ignore[arg-type]


def _options(text: str, options: list[str], allowed: tuple[str, ...], form: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in allowed:
            raise ConfigError("model", text, f"{form} (unknown option {option!r})")
        values[key] = value
    return values


def _typed(values: dict[str, str]) -> dict[str, object]:
    """Options from a string, with the numbers as numbers (a bad one names its option)."""
    kinds = {f.name: f.type for f in fields(MemberSpec)}
    out: dict[str, object] = {}
    for key, value in values.items():
        kind = str(kinds[key])
        try:
            out[key] = int(value) if "int" in kind else float(value) if "float" in kind else value
        except ValueError:
            raise ConfigError(key, value, "a number") from None
    return out
