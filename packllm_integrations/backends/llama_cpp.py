"""The llama.cpp backend: a GGUF file run as it is (quantized), in this process.

Built on ``llama-cpp-python``'s low-level API: one llama context per request holds every
row of the batch as its own sequence (``n_seq_max``, a unified KV cache), a ``llama_batch``
carries several rows' tokens at once with per-position logit flags, and
``llama_memory_seq_rm`` truncates a row exactly (natural alignment's rollback);
``llama_memory_seq_cp`` forks a row, and lets rows that start with the same ids (the
options of one question after its context) read those ids once. A context that runs out of
KV cells is rebuilt twice as large and its rows re-read, so no request needs to know its
length in advance. The library and its contexts are in :mod:`.llama_cpp_context`.

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

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError, PackLLMError
from .base import MemberBackend, Prefill
from .llama_cpp_context import Cache, Context, default_threads, library, shared_prefixes

__all__ = ["LlamaCppMember", "default_threads"]

_OUTPUT_FLOATS = 1 << 25
"""Logits one decode call may return (128 MB of float32): 512 positions of a 49k vocabulary,
128 of Gemma's 262k."""
_SPARE_CELLS = 256
_BRANCHES = 8  # spare sequences of a rollback prefill's context, for :meth:`LlamaCppMember.branch`


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
        lib = library()
        self.name, self.path, self.tokenizer = name, Path(path), tokenizer
        self.threads = threads or default_threads()
        self.splits_cores = threads is None  # threads= given: every step on that many (see share_cores)
        self._step_threads = self.threads
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
        return int(library().llama_model_size(self._model))

    # ---- operations ----------------------------------------------------------------------

    def prefill(
        self, rows: Sequence[Sequence[int]], rollback: bool = False, checkpoint: Callable[[], None] | None = None
    ) -> Prefill:
        """Read every row as its own sequence of one context (logits at every position).

        A row that starts with at least :data:`~.llama_cpp_context.SHARED_PREFIX` ids of an earlier row (the
        options of one question after the same context) reads only the rest: the earlier
        row's cells for the shared ids are copied into its sequence and their logits reused.
        """
        lengths = [len(r) for r in rows]
        width = max(lengths)
        forks = len(rows) + _BRANCHES if rollback else 0
        context = Context(self, sum(lengths) + _SPARE_CELLS * len(rows), len(rows) + forks)
        seqs = [context.take() for _ in rows]
        sources = shared_prefixes(rows)
        pads = [width - n for n in lengths]
        states = torch.empty(len(rows), width, self._width)  # each row's pads zeroed, the rest written below
        for b, pad in enumerate(pads):
            states[b, :pad] = 0
        with self._lock:
            for phase in (False, True):  # rows read whole, then rows that start as one of those
                chosen = [b for b in range(len(rows)) if (b in sources) == phase]
                items = []
                for b in chosen:
                    shared = 0
                    if phase:
                        source, shared = sources[b]
                        context.copy_prefix(seqs[source], seqs[b], rows[b][:shared])  # type: ignore[arg-type]
                        states[b, pads[b] : pads[b] + shared] = states[source, pads[source] : pads[source] + shared]
                    items += [(seqs[b], int(t), True) for t in rows[b][shared:]]
                if not items:
                    continue
                logits = torch.from_numpy(context.decode(items, checkpoint))  # type: ignore[arg-type]
                if len(rows) == 1:  # one row: its logits are its states, no copy
                    states = logits[None]
                    continue
                start = 0
                for b in chosen:
                    n = lengths[b] - (sources[b][1] if phase else 0)
                    states[b, width - n :] = logits[start : start + n]
                    start += n
        return Prefill(states=states, pads=pads, cache=Cache(context, seqs).own())  # type: ignore[arg-type]

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """The states are logits already."""
        return states.float()

    def share_cores(self, threads: int | None) -> None:
        """Steps (and ``extend``) use ``threads`` cores from now on; None: :attr:`threads`."""
        self._step_threads = max(1, threads or self.threads)

    def step(self, cache: Cache, ids: Sequence[int]) -> torch.Tensor:
        """One id per row, all rows in one decode call; logits [B, W]."""
        items = [(seq, int(t), True) for seq, t in zip(cache.seqs, ids, strict=True)]
        with self._lock:
            return torch.from_numpy(cache.context.decode(items, threads=self._step_threads))

    def extend(self, cache: Cache, feeds: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """Several ids for some rows, in one decode call; each row's logits [n_b, W]."""
        items = [(cache.seqs[b], int(t), True) for b, fed in feeds.items() for t in fed]
        with self._lock:
            logits = torch.from_numpy(cache.context.decode(items, threads=self._step_threads))
        out, start = {}, 0
        for b, fed in feeds.items():
            out[b] = logits[start : start + len(fed)]
            start += len(fed)
        return out

    def crop(self, cache: Cache, row: int, length: int) -> None:
        """Truncate the row's sequence to ``length`` ids (exact: the KV cells are removed)."""
        seq, context = cache.seqs[row], cache.context
        if length >= len(context.tokens[seq]):
            return
        if not library().llama_memory_seq_rm(context.memory, seq, length, -1):
            raise PackLLMError(f"member {self.name!r}: llama.cpp could not truncate a sequence at {length}")
        del context.tokens[seq][length:]

    def branch(self, cache: Cache, row: int, branches: Sequence[tuple[int, Sequence[int]]]) -> list[torch.Tensor]:
        """The branches side by side, in one decode call per group: each is a free sequence of
        the row's context that starts with the row's first ``p`` cells (shared, not re-read) and
        reads its tail; the row is left whole. With no free sequence, one at a time on the row."""
        context, source = cache.context, cache.seqs[row]
        held = list(context.tokens[source])
        out: list[torch.Tensor] = []
        while len(out) < len(branches):
            taken: list[int] = []
            try:
                for p, _ in branches[len(out) :]:
                    seq = context.take()
                    if seq is None:
                        break
                    taken.append(seq)
                    context.copy_prefix(source, seq, held[:p])
                if not taken:
                    return out + super().branch(cache, row, branches[len(out) :])
                group = branches[len(out) : len(out) + len(taken)]
                items = [(seq, int(t), True) for seq, (_, tail) in zip(taken, group, strict=True) for t in tail]
                with self._lock:
                    logits = torch.from_numpy(context.decode(items))
                start = 0
                for _, tail in group:
                    out.append(logits[start : start + len(tail)])
                    start += len(tail)
            finally:
                for seq in taken:
                    context.release(seq)
        return out

    def fork(self, cache: Cache, row: int) -> Cache:
        """The row copied to a free sequence of the same context (no re-reading), else re-read in a new one."""
        context, seq = cache.context, cache.seqs[row]
        held = list(context.tokens[seq])
        target = context.take()
        if target is not None:
            library().llama_memory_seq_cp(context.memory, seq, target, -1, -1)
            context.tokens[target] = held
            return Cache(context, [target]).own()
        fresh = Context(self, len(held) + _SPARE_CELLS, 2)
        new = fresh.take()
        assert new is not None
        with self._lock:
            fresh.decode([(new, t, False) for t in held])
        return Cache(fresh, [new]).own()
