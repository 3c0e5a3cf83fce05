"""llama.cpp itself for the llama.cpp backend: the library, and the contexts a request's rows live in.

:func:`library` imports ``llama-cpp-python`` once (llama.cpp's log goes to :mod:`logging`,
errors only). A :class:`Context` is one llama context whose sequences are a request's rows
(a unified KV cache, ``n_seq_max`` sequences); it feeds ids in ``llama_batch`` chunks with
per-position logit flags, and rebuilds itself twice as large when its cells run out. A
:class:`Cache` is the rows of one request, given back to the context when dropped.
:func:`shared_prefixes` finds the rows of a batch that start as an earlier row, so a prefill
reads a shared context once (``llama_memory_seq_cp`` copies its cells).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..alignment.vocabulary import common_prefix
from ..errors import ModelLoadError, PackLLMError

__all__ = ["Cache", "Context", "Model", "SHARED_PREFIX", "default_threads", "library", "shared_prefixes"]

logger = logging.getLogger(__name__)

SHARED_PREFIX = 16
"""Leading ids a row must share with an earlier row of its batch to reuse that row's cells."""
_init_lock = threading.Lock()
_initialized = False
_log: Any = None


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def library() -> Any:
    """``llama_cpp``, imported and initialised once (else a :class:`ModelLoadError` saying how to install it)."""
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


class Model(Protocol):
    """What a context needs of its member (a :class:`~.llama_cpp.LlamaCppMember`)."""

    name: str
    context_window: int
    batch_positions: int
    threads: int
    logits_width: int
    _model: Any  # the llama_model pointer
    _batch: Any  # the member's llama_batch buffer, used under its lock


class Context:
    """One llama context and the token ids each of its sequences holds."""

    def __init__(self, member: Model, cells: int, sequences: int) -> None:
        self.member = member
        self.sequences = sequences
        self.tokens: dict[int, list[int]] = {}
        self.free = list(range(sequences))
        self.ctx = None
        self._open(cells)

    def _open(self, cells: int) -> None:
        lib, m = library(), self.member
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
        self.threads = m.threads
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
            library().llama_memory_seq_rm(self.memory, seq, -1, -1)
            del self.tokens[seq]
            self.free.append(seq)

    def copy_prefix(self, source: int, seq: int, ids: Sequence[int]) -> None:
        """Sequence ``seq`` (empty) starts as ``source`` holding ``ids``: its cells are shared, not re-read."""
        library().llama_memory_seq_cp(self.memory, source, seq, 0, len(ids))
        self.tokens[seq] = list(ids)

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
        self,
        items: Sequence[tuple[int, int, bool]],
        checkpoint: Callable[[], None] | None = None,
        threads: int | None = None,
    ) -> np.ndarray:
        """Feed ``(sequence, id, wants_logits)`` items in order; the logits [n_wanted, W] of the
        wanted ones, computed on ``threads`` cores (None: the member's ``threads``)."""
        m, lib = self.member, library()
        threads = threads or m.threads
        if threads != self.threads:
            lib.llama_set_n_threads(self.ctx, threads, threads)
            self.threads = threads
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
        lib = library()
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
class Cache:
    """Rows of a request: each a sequence of one context."""

    context: Context
    seqs: list[int]
    _finalizers: list[Any] = field(default_factory=list)

    def own(self) -> Cache:
        """Give this cache's sequences back to the context when it is dropped."""
        for seq in self.seqs:
            self._finalizers.append(weakref.finalize(self, self.context.release, seq))
        return self


def shared_prefixes(rows: Sequence[Sequence[int]]) -> dict[int, tuple[int, int]]:
    """Rows that start as an earlier row read whole: row -> (that row, ids shared), the longest
    such prefix of at least :data:`SHARED_PREFIX` ids.

    >>> shared_prefixes([list(range(20)), list(range(18)) + [7, 7], [1, 2, 3]])
    {1: (0, 18)}
    """
    whole: list[int] = []
    out: dict[int, tuple[int, int]] = {}
    for b, row in enumerate(rows):
        best = max(((common_prefix(rows[a], row), a) for a in whole), default=(0, -1))
        if best[0] >= SHARED_PREFIX:
            out[b] = (best[1], best[0])
        else:
            whole.append(b)
    return out
