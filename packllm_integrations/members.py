"""A member: one causal LM of the pack, already built, with the few facts the engine needs.

A :class:`Member` wraps a Hugging Face ``PreTrainedModel`` and its tokenizer. Loading from
names and files happens in :mod:`packllm_integrations.loading`; everything here takes built
objects, so tests can pass tiny models made in memory.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from .alignment import special_ids, vocabulary_fingerprint
from .errors import ConfigError

__all__ = ["Member"]

# Architectures whose causal-LM head is "lm_head, then optional final soft-capping".
# For these the engine runs the decoder and applies the head itself, only on the positions
# it needs (a 262k-column head over a long prompt is otherwise gigabytes of logits).
_SPLIT_HEAD_TYPES = frozenset(
    {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "mistral", "phi3", "olmo", "olmo2", "smollm3"}
)


@dataclass(eq=False)
class Member:
    """One language model of a pack.

    Args:
        name: the member's name, used in reports (weights and perplexities are keyed by it).
        model: a causal LM (``transformers.PreTrainedModel``), already on its device.
        tokenizer: its tokenizer (a ``PreTrainedTokenizerBase``).
        context_window: the longest sequence the member accepts; read from the model's
            config (``max_position_embeddings``) when not given.

    Example:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer  # doctest: +SKIP
        >>> member = Member("mine", AutoModelForCausalLM.from_pretrained(folder),
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

    @cached_property
    def vocab_size(self) -> int:
        """Number of real tokens (the tokenizer's length; padded logit columns excluded)."""
        return min(len(self.tokenizer), self.logits_width)

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
    def tokenizer_fingerprint(self) -> str:
        """A hash of the vocabulary (id -> token string, special ids): equal means same tokenizer."""
        return vocabulary_fingerprint(self.tokenizer)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of special and control tokens (never treated as ordinary text)."""
        return frozenset(special_ids(self.tokenizer))

    @property
    def adds_bos(self) -> bool:
        """Whether the tokenizer puts a BOS token in front of encoded text."""
        bos = self.tokenizer.bos_token_id
        return bos is not None and self.encode("a")[:1] == [bos]

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    # ---- text ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, with the tokenizer's own special tokens (BOS, if any)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """Render chat messages as this member expects, ready for the assistant's reply.

        Uses the tokenizer's chat template. A member without one gets a plain format::

            System: ...
            User: ...
            Assistant: ...
            Assistant:
        """
        if self.has_chat_template:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join([*lines, "Assistant:"])

    # ---- model --------------------------------------------------------------------------

    def run(
        self,
        input_ids: torch.Tensor,
        cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Run the model on ``input_ids`` [B, L] after ``cache``.

        Returns ``(out, cache)``: with ``last_only`` the float32 logits of the last position
        [B, logits_width]; else the final hidden states [B, L, H] (turn them into logits
        with :meth:`logits`) or, for architectures without a separable head, logits [B, L, V].
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
                return self.logits(hidden[:, -1, :]), _cache_of(out)
            return hidden, _cache_of(out)
        out = self.model(input_ids=input_ids, logits_to_keep=1 if last_only else 0, **kwargs)
        logits = out.logits.float()
        return (logits[:, -1, :] if last_only else logits), _cache_of(out)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Float32 logits from what :meth:`run` returned (hidden states or logits already)."""
        if not self._split_head:
            return states.float()
        logits = self._head(states).float()
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits


def _cache_of(output: Any) -> Any:
    """The KV cache of a model output (named ``cache`` or ``past_key_values``)."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values
