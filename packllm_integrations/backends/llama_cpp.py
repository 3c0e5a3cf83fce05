"""The llama.cpp backend: a GGUF file run as it is (quantized), in this process.

Built on ``llama-cpp-python``'s low-level API: one llama context per request holds every
row of the batch as its own sequence (``n_seq_max``, a unified KV cache), a ``llama_batch``
carries several rows' tokens at once with per-position logit flags, and
``llama_memory_seq_rm`` truncates a row exactly (natural alignment's rollback);
``llama_memory_seq_cp`` forks a row. A context that runs out of KV cells is rebuilt twice
as large and its rows re-read, so no request needs to know its length in advance.

The states of this backend are the logits themselves (a quantized head cannot be applied
apart from the model), so :meth:`LlamaCppMember.scores` returns them unchanged. Text is
the engine's business: the member's Hugging Face tokenizer (read from the same GGUF) makes
the ids, and llama.cpp only evaluates them.

Settings that matter, measured: flash attention stays off (llama.cpp's context default
turns it on, which moved logits by up to about 1); the sliding-window cache is kept full
(``swa_full``) so that any row can be rolled back; threads default to the cores this
process may use, never more (llama.cpp slows down badly on busy cores).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelLoadError, PackLLMError
from .base import MemberBackend, Prefill

__all__ = ["LlamaCppMember", "default_threads"]

logger = logging.getLogger(__name__)

_OUTPUT_FLOATS = 1 << 25
"""Logits one decode call may return (128 MB of float32): 512 positions of a 49k vocabulary,
128 of Gemma's 262k."""
_SPARE_CELLS = 256
_init_lock = threading.Lock()
_initialized = False
_log: Any = None


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _lib() -> Any:
    global _initialized, _log
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(
            "backend='llama.cpp' needs llama-cpp-python: pip install llama-cpp-python "
            "(it compiles on install; gcc, g++ and cmake must be there)"
        ) from exc
    with _init_lock:
        if not _initialized:
            _log = llama_cpp.llama_log_callback(_on_log)  # kept alive here: llama.cpp calls it from C
            llama_cpp.llama_log_set(_log, None)  # llama.cpp's own chatter goes to logging, errors only
            llama_cpp.llama_backend_init()
            _initialized = True
    return llama_cpp


def _on_log(level: int, text: bytes, _: Any) -> None:
    if level == 4:  # GGML_LOG_LEVEL_ERROR (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5)
        logger.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


class _Context:
    """One llama context and the token ids each of its sequences holds."""

    def __init__(self, member: LlamaCppMember, cells: int, sequences: int) -> None:
        self.member = member
        self.sequences = sequences
        self.tokens: dict[int, list[int]] = {}
        self.free = list(range(sequences))
        self.ctx = None
        self._open(cells)

    def _open(self, cells: int) -> None:
        lib, m = _lib(), self.member
        params = lib.llama_context_default_params()
        self.cells = min(max(cells, 256), m.context_window * self.sequences)
        params.n_ctx = self.cells
        params.n_batch = params.n_ubatch = m.batch_positions
        params.n_seq_max = self.sequences
        params.n_threads = params.n_threads_batch = m.threads
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.swa_full = True
        params.kv_unified = True
        params.no_perf = True
        ctx = lib.llama_init_from_model(m._model, params)
        if not ctx:
            raise PackLLMError(f"member {m.name!r}: llama.cpp could not make a context of {self.cells} cells")
        self.ctx = ctx
        self.cells = int(lib.llama_n_ctx(ctx))  # llama.cpp rounds the size up
        self.memory = lib.llama_get_memory(ctx)
        self._finalizer = weakref.finalize(self, lib.llama_free, ctx)

    def take(self) -> int | None:
        """A free sequence id, or None."""
        if not self.free:
            return None
        seq = self.free.pop(0)
        self.tokens[seq] = []
        return seq

    def release(self, seq: int) -> None:
        if seq in self.tokens:
            _lib().llama_memory_seq_rm(self.memory, seq, -1, -1)
            del self.tokens[seq]
            self.free.append(seq)

    def grow(self) -> None:
        """Rebuild the context with twice the cells and re-read every sequence's ids."""
        cells = self.cells * 2
        if self.cells >= self.member.context_window * self.sequences:
            raise PackLLMError(f"member {self.member.name!r}: its llama.cpp context is full ({self.cells} cells)")
        self._finalizer()
        self._open(cells)
        held = {seq: ids for seq, ids in self.tokens.items() if ids}
        self.tokens = {seq: [] for seq in self.tokens}
        for seq, ids in held.items():
            self.decode([(seq, t, False) for t in ids])

    def decode(
        self, items: Sequence[tuple[int, int, bool]], checkpoint: Callable[[], None] | None = None
    ) -> np.ndarray:
        """Feed ``(sequence, id, wants_logits)`` items in order; the logits [n_wanted, W] of the wanted ones."""
        m, lib = self.member, _lib()
        width = m.logits_width
        wanted = sum(1 for item in items if item[2])
        out = np.empty((wanted, width), dtype=np.float32)
        filled = 0
        for start in range(0, len(items), m.batch_positions):
            if start and checkpoint is not None:
                checkpoint()
            chunk = items[start : start + m.batch_positions]
            while True:
                code = self._decode_chunk(chunk)
                if code != 1:
                    break
                self.grow()  # no KV cell left for the chunk: a larger context, then again
            if code != 0:
                raise PackLLMError(f"member {m.name!r}: llama_decode failed (code {code})")
            for seq, token, _ in chunk:
                self.tokens[seq].append(token)
            n = sum(1 for item in chunk if item[2])
            if n:
                pointer = lib.llama_get_logits(self.ctx)
                out[filled : filled + n] = np.ctypeslib.as_array(pointer, shape=(n, width))
                filled += n
        return out

    def _decode_chunk(self, chunk: Sequence[tuple[int, int, bool]]) -> int:
        lib = _lib()
        batch = self.member._batch
        positions: dict[int, int] = {}
        for i, (seq, token, logits) in enumerate(chunk):
            pos = positions.get(seq, len(self.tokens[seq]))
            positions[seq] = pos + 1
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if logits else 0
        batch.n_tokens = len(chunk)
        return int(lib.llama_decode(self.ctx, batch))


@dataclass
class _Cache:
    """Rows of a request: each a sequence of one context."""

    context: _Context
    seqs: list[int]
    _finalizers: list[Any] = field(default_factory=list)

    def own(self) -> _Cache:
        """Give this cache's sequences back to the context when it is dropped."""
        for seq in self.seqs:
            self._finalizers.append(weakref.finalize(self, self.context.release, seq))
        return self


class LlamaCppMember(MemberBackend):
    """One member of a pack: a GGUF file run by llama.cpp in this process.

    Args:
        name: the member's name in reports.
        path: the GGUF file.
        tokenizer: its Hugging Face tokenizer (same vocabulary; read from the GGUF by the loader).
        threads: CPU threads (default :func:`default_threads`).
        context_window: the longest sequence (default: the GGUF's training context).

    Example:
        >>> from packllm_integrations import load_member  # doctest: +SKIP
        >>> member = load_member("qwen2.5-coder-0.5b,backend=llama.cpp")  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        tokenizer: Any,
        threads: int | None = None,
        context_window: int | None = None,
    ) -> None:
        lib = _lib()
        self.name, self.path, self.tokenizer = name, Path(path), tokenizer
        self.threads = threads or default_threads()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        model = lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load the GGUF file {self.path}")
        self._model = model
        self._model_finalizer = weakref.finalize(self, lib.llama_model_free, model)
        self._vocab = lib.llama_model_get_vocab(model)
        self._width = int(lib.llama_vocab_n_tokens(self._vocab))
        self.context_window = int(context_window or lib.llama_model_n_ctx_train(model) or 2048)
        self.batch_positions = int(max(32, min(512, _OUTPUT_FLOATS // self._width)))
        self._batch = lib.llama_batch_init(self.batch_positions, 0, 1)
        self._batch_finalizer = weakref.finalize(self, lib.llama_batch_free, self._batch)
        ends = {int(lib.llama_vocab_eos(self._vocab)), int(lib.llama_vocab_eot(self._vocab))}
        if tokenizer.eos_token_id is not None:
            ends.add(int(tokenizer.eos_token_id))
        self.eos_token_ids = frozenset(t for t in ends if 0 <= t < self._width)  # the GGUF's EOS and EOT
        self._lock = threading.Lock()  # the batch buffer is one per member

    # ---- facts -------------------------------------------------------------------------

    @property
    def logits_width(self) -> int:
        return self._width

    @cached_property
    def identity(self) -> dict[str, str]:
        return {"name": self.name, "model": str(self.path), "dtype": "gguf"}

    @cached_property
    def parameter_bytes(self) -> int:
        """Bytes of weights read per decoding step: the GGUF's tensors as stored (quantized)."""
        return int(_lib().llama_model_size(self._model))

    # ---- operations ----------------------------------------------------------------------

    def prefill(
        self, rows: Sequence[Sequence[int]], rollback: bool = False, checkpoint: Callable[[], None] | None = None
    ) -> Prefill:
        """Read every row as its own sequence of one context (logits at every position)."""
        lengths = [len(r) for r in rows]
        width = max(lengths)
        forks = len(rows) if rollback else 0
        context = _Context(self, sum(lengths) + _SPARE_CELLS * len(rows), len(rows) + forks)
        seqs = [context.take() for _ in rows]
        items = [(seq, int(t), True) for seq, row in zip(seqs, rows, strict=True) for t in row]  # type: ignore[misc]
        with self._lock:
            logits = torch.from_numpy(context.decode(items, checkpoint))
        states = torch.zeros(len(rows), width, self._width)
        start = 0
        pads = [width - n for n in lengths]
        for b, n in enumerate(lengths):
            states[b, pads[b] :] = logits[start : start + n]
            start += n
        return Prefill(states=states, pads=pads, cache=_Cache(context, seqs).own())  # type: ignore[arg-type]

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """The states are logits already."""
        return states.float()

    def step(self, cache: _Cache, ids: Sequence[int]) -> torch.Tensor:
        """One id per row, all rows in one decode call; logits [B, W]."""
        items = [(seq, int(t), True) for seq, t in zip(cache.seqs, ids, strict=True)]
        with self._lock:
            return torch.from_numpy(cache.context.decode(items))

    def extend(self, cache: _Cache, feeds: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """Several ids for some rows, in one decode call; each row's logits [n_b, W]."""
        items = [(cache.seqs[b], int(t), True) for b, fed in feeds.items() for t in fed]
        with self._lock:
            logits = torch.from_numpy(cache.context.decode(items))
        out, start = {}, 0
        for b, fed in feeds.items():
            out[b] = logits[start : start + len(fed)]
            start += len(fed)
        return out

    def crop(self, cache: _Cache, row: int, length: int) -> None:
        """Truncate the row's sequence to ``length`` ids (exact: the KV cells are removed)."""
        seq, context = cache.seqs[row], cache.context
        if length >= len(context.tokens[seq]):
            return
        if not _lib().llama_memory_seq_rm(context.memory, seq, length, -1):
            raise PackLLMError(f"member {self.name!r}: llama.cpp could not truncate a sequence at {length}")
        del context.tokens[seq][length:]

    def fork(self, cache: _Cache, row: int) -> _Cache:
        """The row copied to a free sequence of the same context (no re-reading), else re-read in a new one."""
        context, seq = cache.context, cache.seqs[row]
        held = list(context.tokens[seq])
        target = context.take()
        if target is not None:
            _lib().llama_memory_seq_cp(context.memory, seq, target, -1, -1)
            context.tokens[target] = held
            return _Cache(context, [target]).own()
        fresh = _Context(self, len(held) + _SPARE_CELLS, 2)
        new = fresh.take()
        assert new is not None
        with self._lock:
            fresh.decode([(new, t, False) for t in held])
        return _Cache(fresh, [new]).own()
