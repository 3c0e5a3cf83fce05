"""The public engine: a pack of members, fused at decoding time (framework-free).

Example:
    >>> from packllm_integrations import PackEngine
    >>> engine = PackEngine.from_models(["smollm2-135m", "gemma3-270m"])  # doctest: +SKIP
    >>> result = engine.generate("The capital of France is", max_new_tokens=8)  # doctest: +SKIP
    >>> result.text, result.weights  # doctest: +SKIP
    (' Paris...', {'smollm2-135m': 0.41, 'gemma3-270m': 0.59})
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .alignment.mined import VocabMap
from .alignment.projection import Projection
from .backends.base import MemberBackend
from .config import TOKEN_FUSIONS, GenerationConfig
from .decoding.planning import PackView, Spans
from .decoding.scoring import score_continuations
from .decoding.session import Session
from .errors import ConfigError, PromptError
from .events import Event, GenerationResult, ScoreResult, WeightsEvent, collect_results
from .structured.chat_format import chat_messages, check_text, content_spans
from .structured.constraints import Grammars
from .structured.tools import Conversation, Tool

__all__ = ["PackEngine", "Prompt"]

Prompt = str | Sequence[Mapping[str, Any]] | Conversation
"""A raw text prompt (given to every member as is), chat messages
(``[{"role": "user", "content": "..."}]``) that each member renders with its own template,
or a :class:`~packllm_integrations.structured.tools.Conversation`: messages with the tools offered."""


class PackEngine:
    """A pack of causal LMs fused at test time with PackLLM.

    Args:
        members: the pack's members: any :class:`~packllm_integrations.MemberBackend`
            (e.g. :class:`~packllm_integrations.Member`, the transformers backend), or
            loaded from specs with :meth:`from_models`.
        config: the default :class:`GenerationConfig`; each call may override any field.
        progress: show progress bars for long one-off work (vocabulary maps).
        **overrides: fields of the default config, e.g. ``weighting="opt"``.

    One engine is safe to share between threads: each request runs in its own session.
    The engine keeps what is built once per pair of members: vocabulary maps (also cached
    on disk, see :func:`~packllm_integrations.loading.load_vocab_map`) and natural
    alignment's projections.
    """

    def __init__(
        self,
        members: Sequence[MemberBackend],
        config: GenerationConfig | None = None,
        *,
        progress: bool = True,
        **overrides: Any,
    ) -> None:
        members = list(members)
        if not members:
            raise ConfigError("members", members, "at least one member")
        for m in members:
            if not isinstance(m, MemberBackend):
                raise ConfigError(
                    "members", type(m).__name__, "member backends (packllm_integrations.Member or a MemberBackend)"
                )
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigError("members", names, "members with distinct names")
        self.members: tuple[MemberBackend, ...] = tuple(members)
        self.progress = progress
        self._maps: dict[tuple[int, int], VocabMap | None] = {}
        self._projections: dict[tuple[int, int], Projection | None] = {}
        self._lock = threading.Lock()
        self._fingerprints = [m.tokenizer_fingerprint for m in members]
        self._pack = PackView(self.members, self.vocab_map, self.projection)
        self._grammars = Grammars()  # constraints' compiled tokenizers, per vocabulary
        _check_config(config)
        self.config = self._checked((config or GenerationConfig()).merged(**overrides))

    @classmethod
    def from_models(
        cls,
        models: Sequence[Any] | None = None,
        config: GenerationConfig | None = None,
        *,
        progress: bool = True,
        **overrides: Any,
    ) -> PackEngine:
        """Load members from specs (catalog names, folders, GGUF files; see :func:`load_pack`).

        Without ``models`` the default pack is loaded (``packllm models`` lists it).
        """
        from .loading.loaders import load_pack

        return cls(load_pack(models, progress=progress), config, progress=progress, **overrides)

    # ---- facts ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The members' names, in pack order."""
        return [m.name for m in self.members]

    @property
    def context_window(self) -> int:
        """The longest prompt plus output the pack accepts (the smallest member's window)."""
        return min(m.context_window for m in self.members)

    @property
    def shared_vocabulary(self) -> bool:
        """Whether every member uses the same tokenizer (no alignment needed)."""
        return len(set(self._fingerprints)) == 1

    def reference_member(self, config: GenerationConfig | None = None) -> MemberBackend:
        """The configured reference member, else the first member (for counting tokens)."""
        index = self._reference_index(config or self.config)
        return self.members[index or 0]

    def vocab_map(self, reference: int, member: int) -> VocabMap | None:
        """The vocabulary map from member ``reference`` to member ``member`` (None: same vocabulary)."""
        key = (reference, member)
        with self._lock:
            if key not in self._maps:
                value = None
                if self._fingerprints[reference] != self._fingerprints[member]:
                    from .loading.vocab_maps import load_vocab_map

                    ref, mem = self.members[reference], self.members[member]
                    value = load_vocab_map(ref.tokenizer, mem.tokenizer, mem.logits_width, progress=self.progress)
                self._maps[key] = value
            return self._maps[key]

    def projection(self, reference: int, member: int) -> Projection | None:
        """Natural alignment's projection of member ``member`` into ``reference``'s vocabulary
        (None: same vocabulary); built once per pair (a few seconds for 262k tokens)."""
        vmap = self.vocab_map(reference, member)
        key = (reference, member)
        with self._lock:
            if key not in self._projections:
                ref, mem = self.members[reference], self.members[member]
                self._projections[key] = None if vmap is None else Projection(ref, mem, vmap)
            return self._projections[key]

    # ---- configuration --------------------------------------------------------------------------

    def resolve(self, config: GenerationConfig | None = None, **overrides: Any) -> GenerationConfig:
        """The config of one call: ``config`` (or the engine's) with ``overrides`` applied."""
        _check_config(config)
        return self._checked((config or self.config).merged(**overrides))

    def _checked(self, config: GenerationConfig) -> GenerationConfig:
        if config.weights is not None and len(config.weights) != len(self.members):
            raise ConfigError("weights", list(config.weights), f"{len(self.members)} numbers, one per member")
        self._reference_index(config)
        return config

    def _reference_index(self, config: GenerationConfig) -> int | None:
        if config.reference is None:
            return None
        if config.reference not in self.names:
            raise ConfigError("reference", config.reference, f"a member name ({', '.join(self.names)}) or None")
        return self.names.index(config.reference)

    def _texts(self, prompt: Any, parameter: str = "prompt", allow_empty: bool = False) -> list[str]:
        """The prompt as each member reads it (an empty text only where ``allow_empty``: a context)."""
        return self._rendered(prompt, parameter, allow_empty)[0]

    def _rendered(self, prompt: Any, parameter: str = "prompt", allow_empty: bool = False) -> tuple[list[str], Spans]:
        """The prompt as each member reads it, and for chat messages where their text lies in
        each member's rendering (:func:`~.structured.chat_format.content_spans`; None for a string)."""
        if isinstance(prompt, str):
            check_text(prompt, parameter)
            if not prompt and not allow_empty:
                raise PromptError(
                    parameter, prompt, "a non-empty string (the pack needs text to weight its members on)"
                )
            return [prompt] * len(self.members), None
        tools: Sequence[Tool] = ()
        if isinstance(prompt, Conversation):
            prompt, tools = prompt.messages, prompt.tools
            if not all(isinstance(t, Tool) for t in tools):
                raise PromptError(parameter, tools, "a Conversation's tools as Tool objects")
        if isinstance(prompt, Sequence) and not isinstance(prompt, str) and prompt:
            messages = chat_messages(prompt, parameter)
            texts = [member.render_chat(messages, tools) for member in self.members]
            return texts, [content_spans(text, messages) for text in texts]
        raise PromptError(parameter, prompt, "a string, a non-empty list of chat messages, or a Conversation")

    def _batch(self, prompts: Any) -> tuple[list[list[str]], list[Spans]]:
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise PromptError("prompts", prompts, "a non-empty list of prompts")
        rendered = [self._rendered(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        return [texts for texts, _ in rendered], [spans for _, spans in rendered]

    def session(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | None = None,
        *,
        timeout: float | None = None,
        **overrides: Any,
    ) -> Session:
        """A new decoding session for a batch of prompts (most callers use the methods below).

        ``timeout``: seconds the request may take from now; checked before every forward
        pass (a long prompt is read in chunks), then :class:`GenerationTimeoutError`.
        """
        cfg = self.resolve(config, **overrides)
        if cfg.fusion not in TOKEN_FUSIONS:
            rules = ", ".join(TOKEN_FUSIONS)
            raise ConfigError("fusion", cfg.fusion, f"a rule that generates ({rules}); '{cfg.fusion}' is for score()")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError("timeout", timeout, "a number of seconds > 0, or None")
        texts, spans = self._batch(prompts)
        return Session(self._pack, texts, cfg, self._reference_index(cfg), timeout, self._grammars, spans)

    # ---- generation -----------------------------------------------------------------------------

    def stream(
        self, prompt: Prompt, config: GenerationConfig | None = None, *, timeout: float | None = None, **overrides: Any
    ) -> Iterator[Event]:
        """Generate for one prompt as events: a :class:`WeightsEvent`, :class:`TextEvent` pieces,
        then a :class:`FinishEvent` holding the :class:`GenerationResult`.

        >>> for event in engine.stream("Once upon a time"):  # doctest: +SKIP
        ...     if isinstance(event, TextEvent):
        ...         print(event.text, end="")
        """
        return self.stream_batch([prompt], config, timeout=timeout, **overrides)

    def stream_batch(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | None = None,
        *,
        timeout: float | None = None,
        **overrides: Any,
    ) -> Iterator[Event]:
        """Like :meth:`stream` for a batch decoded together; events carry the prompt's ``index``."""
        session = self.session(prompts, config, timeout=timeout, **overrides)
        return session.events()

    def generate(
        self, prompt: Prompt, config: GenerationConfig | None = None, *, timeout: float | None = None, **overrides: Any
    ) -> GenerationResult:
        """Generate for one prompt; returns text, finish reason, weights, perplexities and usage.

        ``timeout`` (seconds) holds within about one forward pass, the prompt's included.
        """
        return self.generate_batch([prompt], config, timeout=timeout, **overrides)[0]

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | None = None,
        *,
        timeout: float | None = None,
        **overrides: Any,
    ) -> list[GenerationResult]:
        """Generate for several prompts decoded together (each with its own weights)."""
        return collect_results(self.stream_batch(prompts, config, timeout=timeout, **overrides), len(prompts))

    def weights(self, prompt: Prompt, config: GenerationConfig | None = None, **overrides: Any) -> WeightsEvent:
        """The fusion weights and prompt perplexities of one prompt, without generating."""
        return self.weights_batch([prompt], config, **overrides)[0]

    def weights_batch(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None, **overrides: Any
    ) -> list[WeightsEvent]:
        """The weights of several prompts (one batched prefill per member)."""
        return self.session(prompts, config, **overrides).prefill()

    # ---- scoring -----------------------------------------------------------------------------

    def score(
        self,
        requests: Sequence[tuple[Prompt, str]],
        config: GenerationConfig | None = None,
        *,
        weights_on: str = "context",
        **overrides: Any,
    ) -> list[ScoreResult]:
        """Fused log-likelihoods of ``(context, continuation)`` pairs, batched.

        The continuation's tokens are those the reference tokenizer gives the joined text
        after the context's. ``weights_on="full"`` computes the weights on context plus
        continuation, as the authors' code did when scoring options.

        >>> [r.logprob for r in engine.score([("2 + 2 =", " 4"), ("2 + 2 =", " 5")])]  # doctest: +SKIP
        [-1.2, -4.7]
        """
        return self.score_many(requests, [self.resolve(config, **overrides)], weights_on=weights_on)[0]

    def score_many(
        self,
        requests: Sequence[tuple[Prompt, str]],
        configs: Sequence[GenerationConfig],
        *,
        weights_on: str = "context",
    ) -> list[list[ScoreResult]]:
        """:meth:`score` under several configs (e.g. weightings) from one forward pass per member."""
        if weights_on not in ("context", "full"):
            raise ConfigError("weights_on", weights_on, "'context' or 'full'")
        if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence) or not requests:
            raise PromptError("requests", requests, "a non-empty list of (context, continuation) pairs")
        contexts, texts = [], []
        for i, pair in enumerate(requests):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[1], str):
                raise PromptError(f"requests[{i}]", pair, "a (context, continuation) pair with a string continuation")
            ctx = self._texts(pair[0], f"requests[{i}][0]", allow_empty=True)
            contexts.append(ctx)
            texts.append([c + pair[1] for c in ctx])
        checked = [self._checked(c) for c in configs]
        refs = {(self._reference_index(c), c.reference_by) for c in checked}
        if len(refs) != 1:
            shown = [(c.reference, c.reference_by) for c in checked]
            raise ConfigError("configs", shown, "configs that share one reference and reference_by setting")
        return score_continuations(self._pack, texts, contexts, checked, refs.pop()[0], weights_on)


def _check_config(config: Any) -> None:
    if config is not None and not isinstance(config, GenerationConfig):
        raise ConfigError(
            "config", type(config).__name__, "a GenerationConfig, or settings as keywords (temperature=0.7, ...)"
        )
