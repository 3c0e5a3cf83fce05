"""The transformers backend: a Hugging Face causal LM and its tokenizer, in this process.

Everything transformers-specific lives here: padding and attention masks, the split head
(hidden states turned into logits only where needed), the KV cache (``DynamicCache``) and
its surgery for rollback. Loading from names and files happens in
:mod:`packllm_integrations.loading`; this class takes built objects, so tests can pass
tiny models made in memory.

Caches made with ``rollback=True`` are ``DynamicCache()`` objects built without a config:
every layer keeps every position, so they can be cropped anywhere (the config-built cache
of sliding-window models such as Gemma 3 keeps only the last window and refuses to crop
further back; attention still applies the sliding window through the mask). In a cache
of several rows, a row rolls back by masking its dropped slots (they stay in the cache;
position ids count only live tokens); a cache of one row is cropped exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from transformers import DynamicCache

from ..errors import ConfigError, PackLLMError
from .base import MemberBackend, Prefill

__all__ = ["TransformersMember", "Member", "PREFILL_CHUNK"]

PREFILL_CHUNK = 512
"""Positions read per forward pass in a prefill: a longer prompt goes through the cache in
chunks, so a request's deadline is checked at least every 512 positions."""

# Architectures whose causal-LM head is "lm_head, then optional final soft-capping".
# For these the engine runs the decoder and applies the head itself, only on the positions
# it needs (a 262k-column head over a long prompt is otherwise gigabytes of logits).
_SPLIT_HEAD_TYPES = frozenset(
    {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "mistral", "phi3", "olmo", "olmo2", "smollm3"}
)


@dataclass
class _Cache:
    """A batched KV cache: its rows' slots, and the mask of live slots (None: all live, none padded)."""

    kv: Any
    mask: torch.Tensor | None  # [B, L] 1 where a slot holds a live token
    slots: list[list[int]]  # per row, the cache slots of its ids, in order
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = len(self.slots)


@dataclass(eq=False)
class TransformersMember(MemberBackend):
    """One language model of a pack: a transformers causal LM in this process.

    Args:
        name: the member's name, used in reports (weights and perplexities are keyed by it).
        model: a causal LM (``transformers.PreTrainedModel``), already on its device.
        tokenizer: its tokenizer (a ``PreTrainedTokenizerBase``).
        context_window: the longest sequence the member accepts; read from the model's
            config (``max_position_embeddings``) when not given.
        eos_token_ids: ids that end generation; read from the configs when not given.

    Example:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer  # doctest: +SKIP
        >>> member = TransformersMember("mine", AutoModelForCausalLM.from_pretrained(folder),
        ...                 AutoTokenizer.from_pretrained(folder))  # doctest: +SKIP
    """

    name: str
    model: Any
    tokenizer: Any
    context_window: int = 0
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", self.name, "a non-empty string")
        if not callable(getattr(self.model, "forward", None)) or not hasattr(self.model, "config"):
            raise ConfigError("model", type(self.model).__name__, "a transformers causal LM (PreTrainedModel)")
        if not callable(getattr(self.tokenizer, "convert_ids_to_tokens", None)):
            raise ConfigError("tokenizer", type(self.tokenizer).__name__, "a transformers tokenizer")
        self.model.eval()
        config = self.model.config
        if not self.context_window:
            self.context_window = int(getattr(config, "max_position_embeddings", 0) or 0) or 2048
        if not self.eos_token_ids:
            ids: set[int] = set()
            for source in (getattr(self.model, "generation_config", None), config):
                value = getattr(source, "eos_token_id", None) if source is not None else None
                if isinstance(value, int):
                    ids.add(value)
                elif isinstance(value, (list, tuple)):
                    ids.update(int(v) for v in value)
            if self.tokenizer.eos_token_id is not None:
                ids.add(int(self.tokenizer.eos_token_id))
            self.eos_token_ids = frozenset(ids)
        head = self.model.get_output_embeddings()
        self._split_head = (
            getattr(config, "model_type", None) in _SPLIT_HEAD_TYPES
            and head is not None
            and self.model.base_model is not self.model
        )
        self._head = head
        self._softcap = getattr(config, "final_logit_softcapping", None)
        # transformers renamed `past_key_values` to `cache` during 5.x: use what this one takes.
        target = self.model.base_model if self._split_head else self.model
        params = inspect.signature(target.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # ---- facts -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def concurrent(self) -> bool:  # type: ignore[override]
        """On a GPU the member steps in a thread (members on several devices run at once)."""
        return self.device.type != "cpu"

    @cached_property
    def logits_width(self) -> int:
        """Number of columns of the model's logits (may exceed the tokenizer's length)."""
        head = self.model.get_output_embeddings()
        if head is not None and hasattr(head, "weight"):
            return int(head.weight.shape[0])
        return int(self.model.config.vocab_size)

    @cached_property
    def parameter_bytes(self) -> int:
        """Bytes of parameters read by one decoding step (tied embeddings counted once)."""
        seen: set[int] = set()
        total = 0
        for p in self.model.parameters():
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
        return total

    @cached_property
    def identity(self) -> dict[str, str]:
        """What tells two members apart in a cache key: name, the weights' origin and dtype."""
        parameter = next(self.model.parameters(), None)
        return {
            "name": self.name,
            "model": str(getattr(self.model.config, "name_or_path", "") or ""),
            "dtype": str(parameter.dtype) if parameter is not None else "",
        }

    # ---- operations ----------------------------------------------------------------------

    def prefill(
        self, rows: Sequence[Sequence[int]], rollback: bool = False, checkpoint: Callable[[], None] | None = None
    ) -> Prefill:
        """Read ``rows`` left-padded in one batch (see :class:`~.base.MemberBackend`); rows
        longer than ``PREFILL_CHUNK`` positions are read a chunk at a time through the cache,
        with ``checkpoint`` called between chunks."""
        lengths = [len(r) for r in rows]
        width = max(lengths)
        pads = [width - n for n in lengths]
        ids = torch.tensor([[self.pad_id] * p + list(r) for p, r in zip(pads, rows, strict=True)], dtype=torch.long)
        ids = ids.to(self.device)
        mask = position_ids = None
        if any(pads):
            mask = (torch.arange(width)[None, :] >= torch.tensor(pads)[:, None]).long().to(self.device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kv, pieces = DynamicCache() if rollback else None, []
        for start in range(0, width, PREFILL_CHUNK):
            if start and checkpoint is not None:
                checkpoint()
            stop = min(width, start + PREFILL_CHUNK)
            piece_mask = None if mask is None else mask[:, :stop]
            piece_positions = None if position_ids is None else position_ids[:, start:stop]
            if piece_positions is None and start:
                piece_positions = torch.arange(start, stop, device=self.device)[None].expand(len(rows), -1)
            out, kv = self._forward(ids[:, start:stop], kv, piece_mask, piece_positions)
            pieces.append(out)
        states = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        if rollback and mask is None:  # rows will roll back by different amounts: track live slots
            mask = torch.ones(len(rows), width, dtype=torch.long, device=self.device)
        slots = [list(range(pad, width)) for pad in pads]
        return Prefill(states=states, pads=pads, cache=_Cache(kv, mask, slots))

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """Float32 logits [..., W] of states from :meth:`prefill` or :meth:`extend`."""
        if not self._split_head:
            return states.float()
        logits = self._head(states).float()
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def step(self, cache: _Cache, ids: Sequence[int]) -> torch.Tensor:
        """Feed one id per row; the float32 logits [B, W] after it."""
        step = torch.tensor(list(ids), device=self.device)[:, None]
        position_ids = None
        if cache.mask is not None:
            position_ids = torch.tensor([len(s) for s in cache.slots], device=self.device)[:, None]
            cache.mask = torch.cat([cache.mask, cache.mask.new_ones(len(ids), 1)], dim=1)
        start = _length(cache)
        logits, cache.kv = self._forward(step, cache.kv, cache.mask, position_ids, last_only=True)
        for slots in cache.slots:
            slots.append(start)
        return logits

    def extend(self, cache: _Cache, feeds: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """Feed several ids to some rows (the others get masked padding); their new states."""
        if cache.mask is None:  # one row, nothing masked: a plain forward after the cache
            (b, fed), *others = feeds.items()
            if others or cache.rows != 1:
                raise PackLLMError("extend() of a batched cache needs its mask (prefill with rollback=True)")
            start = _length(cache)
            states, cache.kv = self._forward(torch.tensor([list(fed)], device=self.device), cache.kv)
            cache.slots[b].extend(range(start, start + len(fed)))
            return {b: states[0]}
        width = max(len(f) for f in feeds.values())
        start = cache.mask.shape[1]
        block = torch.full((cache.rows, width), self.pad_id, dtype=torch.long)
        live = torch.zeros(cache.rows, width, dtype=torch.long)
        positions = torch.zeros(cache.rows, width, dtype=torch.long)
        for b, fed in feeds.items():
            n, keep = len(fed), len(cache.slots[b])
            block[b, :n] = torch.tensor(list(fed))
            live[b, :n] = 1
            positions[b, :n] = torch.arange(keep, keep + n)
        cache.mask = torch.cat([cache.mask, live.to(self.device)], dim=1)
        states, cache.kv = self._forward(block.to(self.device), cache.kv, cache.mask, positions.to(self.device))
        out = {}
        for b, fed in feeds.items():
            cache.slots[b].extend(range(start, start + len(fed)))
            out[b] = states[b, : len(fed)]
        return out

    def crop(self, cache: _Cache, row: int, length: int) -> None:
        """Forget row ``row``'s ids from ``length`` on: masked out, or cropped for a single row."""
        dropped = cache.slots[row][length:]
        if not dropped:
            return
        if cache.rows == 1:  # one row: its slots are the whole cache
            extra = cache.kv.get_seq_length() - dropped[0]
            if extra > 0:
                cache.kv.crop(-extra)
            if cache.mask is not None:
                cache.mask = cache.mask[:, : dropped[0]]
        elif cache.mask is None:
            raise PackLLMError("crop() of a batched cache needs its mask (prefill with rollback=True)")
        else:
            cache.mask[row, dropped] = 0
        cache.slots[row] = cache.slots[row][:length]

    def fork(self, cache: _Cache, row: int) -> _Cache:
        """Row ``row`` as a one-row cache; the tensors are shared, not copied (cropping
        slices and feeding concatenates, so neither cache writes into the other)."""
        slots = cache.slots[row]
        if slots != list(range(slots[0] if slots else 0, (slots[-1] + 1) if slots else 0)):
            raise PackLLMError("fork() of a row with masked slots is not supported")
        pad = slots[0] if slots else 0
        layers = []
        for layer in cache.kv.layers:
            if getattr(layer, "is_sliding", False):
                raise PackLLMError("a sliding-window cache layer cannot be split into rows; prefill with rollback=True")
            layers.append((layer.keys[row : row + 1, :, pad:, :], layer.values[row : row + 1, :, pad:, :]))
        return _Cache(DynamicCache(ddp_cache_data=layers), None, [list(range(len(slots)))])

    # ---- the model --------------------------------------------------------------------------

    def _forward(
        self,
        input_ids: torch.Tensor,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Run the model on ``input_ids`` [B, L] after ``cache``.

        Returns ``(out, cache)``: with ``last_only`` the float32 logits of the last position
        [B, W]; else the final hidden states [B, L, H] (logits with :meth:`scores`) or, for
        architectures without a separable head, logits [B, L, W].
        """
        kwargs = {
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            self._cache_kw: cache,
            "use_cache": True,
        }
        if self._split_head:
            out = self.model.base_model(input_ids=input_ids, **kwargs)
            hidden = out.last_hidden_state
            if last_only:
                return self.scores(hidden[:, -1, :]), _cache_of(out)
            return hidden, _cache_of(out)
        out = self.model(input_ids=input_ids, logits_to_keep=1 if last_only else 0, **kwargs)
        logits = out.logits.float()
        return (logits[:, -1, :] if last_only else logits), _cache_of(out)


def _length(cache: _Cache) -> int:
    """The number of slots in the cache (where the next fed id lands)."""
    if cache.mask is not None:
        return int(cache.mask.shape[1])
    return max((s[-1] + 1 for s in cache.slots if s), default=0)


def _cache_of(output: Any) -> Any:
    """The KV cache of a model output (named ``cache`` or ``past_key_values``)."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


Member = TransformersMember
"""The former name of :class:`TransformersMember`, kept so that existing code runs."""
