"""A fused pack as a LlamaIndex LLM (:class:`PackLLM`, a ``CustomLLM``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import ConfigDict, Field, model_validator

from ..aio import iterate_in_threads
from ..config import GenerationConfig
from ..engine import PackEngine, Prompt
from ..errors import ConfigError, PromptError
from ..events import Event, FinishEvent, GenerationResult, TextEvent, WeightsEvent
from ..loading import MemberSpec

__all__ = ["PackLLM", "to_chat_messages"]

_SETTINGS = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "stop",
    "weighting",
    "tau",
    "weights",
    "reference",
    "scoring",
    "alignment",
)
_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


class PackLLM(CustomLLM):
    """PackLLM test-time fusion of several causal LMs, as a LlamaIndex LLM.

    ``metadata`` reports the pack's real limits: the smallest member's context window and
    the configured output budget (``max_new_tokens``). ``chat`` and ``stream_chat`` have each
    member render the messages with its own chat template (a member without one reads
    ``"System: ...\\nUser: ...\\nAssistant:"``); with ``is_chat_model`` (the default when
    every member has a template) query engines call ``chat``, else ``complete`` with the
    prompt as raw text. Every response carries the fusion ``weights``, ``prompt_perplexity``,
    ``reference``, and at the end ``finish_reason`` and ``usage``, in ``additional_kwargs``.

    ``complete(prompt)`` applies ``completion_to_prompt`` (identity by default) unless
    ``formatted=True``; a custom ``messages_to_prompt`` replaces the members' chat templates
    with that one string. ``system_prompt`` is added by LlamaIndex's ``predict`` and query
    engines, as for every LlamaIndex LLM. The async methods run the decoding steps in worker
    threads and fire one callback event per call.

    Example:
        >>> from llama_index.core import Settings
        >>> from packllm_integrations.llama_index import PackLLM
        >>> llm = PackLLM(models=["smollm2-135m", "qwen2.5-coder-0.5b"], max_new_tokens=64)  # doctest: +SKIP
        >>> Settings.llm, Settings.tokenizer = llm, llm.tokenize  # doctest: +SKIP
        >>> response = llm.complete("def fibonacci(n):")  # doctest: +SKIP
        >>> response.additional_kwargs["weights"]  # doctest: +SKIP
        {'smollm2-135m': 0.0001, 'qwen2.5-coder-0.5b': 0.9999}
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    models: list[str | MemberSpec] | None = Field(
        default=None,
        description="Member specs (catalog names, model folders, GGUF files, MemberSpec) loaded at construction; "
        "give either models or engine (neither: the default pack).",
    )
    engine: PackEngine | None = Field(
        default=None,
        exclude=True,
        repr=False,
        description="An already built PackEngine, shared with other LLMs (LlamaIndex or LangChain); "
        "set after construction.",
    )
    max_new_tokens: int | None = Field(
        default=None, gt=0, description="Most tokens to generate (None: the engine's default)."
    )
    temperature: float | None = Field(default=None, ge=0, description="0 for greedy decoding, above 0 to sample.")
    top_k: int | None = Field(default=None, ge=0, description="Sample among the k most likely tokens (0: no limit).")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling threshold (1: no limit).")
    seed: int | None = Field(default=None, description="Seed of the sampler (same seed, same text).")
    stop: list[str] | None = Field(
        default=None, description="Stop strings: generation ends before the first one, which is never returned."
    )
    weighting: str | None = Field(
        default=None, description="Member weighting per prompt: 'sim', 'opt', 'uniform', 'top1' or 'fixed'."
    )
    tau: float | None = Field(default=None, gt=0, description="Temperature of 'sim' weighting.")
    weights: list[float] | None = Field(
        default=None, description="Fixed member weights in pack order (implies weighting='fixed')."
    )
    reference: str | None = Field(
        default=None,
        description="Member whose vocabulary the fused distribution uses (None: the lowest prompt perplexity).",
    )
    scoring: str | None = Field(
        default=None,
        description="How members with different tokenizers score the prompt: 'reference' (translated reference "
        "tokens, the authors' way) or 'own' (each member's own tokenization, per byte).",
    )
    alignment: str | None = Field(
        default=None,
        description="How members with other tokenizers read the text: 'mined' (the reference's tokens translated "
        "through the vocabulary map) or 'natural' (their own tokenization).",
    )
    is_chat_model: bool | None = Field(
        default=None,
        description="Whether query engines call chat (members' chat templates) rather than complete; "
        "None: when every member has a chat template.",
    )

    @model_validator(mode="after")
    def _set_up_pack(self) -> PackLLM:
        """Check every setting, then load the pack (checks come first: loading takes seconds)."""
        self.engine = PackEngine.shared_or_loaded(self.models, self.engine, self._own_settings())
        return self

    @classmethod
    def class_name(cls) -> str:
        return "packllm"

    # ---- facts -------------------------------------------------------------------------

    @property
    def pack(self) -> PackEngine:
        """The engine (always set once the LLM is constructed)."""
        if self.engine is None:  # only reachable through model_construct(), which skips validation
            raise ConfigError("engine", None, "a PackEngine (build the LLM normally, not with model_construct)")
        return self.engine

    @property
    def model_name(self) -> str:
        """The pack's name: ``packllm:`` and the member names joined by ``+``."""
        return "packllm:" + "+".join(self.pack.names)

    @property
    def metadata(self) -> LLMMetadata:
        """The pack's real limits: the smallest member's context window and the output budget."""
        chat = self.is_chat_model
        if chat is None:
            chat = all(m.has_chat_template for m in self.pack.members)
        return LLMMetadata(
            context_window=self.pack.context_window,
            num_output=self._config({}).max_new_tokens,
            is_chat_model=chat,
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` for the reference tokenizer (set ``Settings.tokenizer = llm.tokenize``).

        The reference is the configured ``reference`` member, else the first member.
        """
        return self.pack.reference_member(self._config({})).encode(text)

    # ---- settings -----------------------------------------------------------------------

    def _own_settings(self) -> dict[str, Any]:
        out = {}
        for name in _SETTINGS:
            value = getattr(self, name)
            if value is not None:
                out[name] = tuple(value) if isinstance(value, list) else value
        return out

    def _config(self, kwargs: dict[str, Any]) -> GenerationConfig:
        """The config of one call: the engine's, then this LLM's settings, then the call's."""
        call = {}
        for name, value in kwargs.items():
            if name not in _SETTINGS:
                raise ConfigError(name, value, f"a generation setting ({', '.join(_SETTINGS)})")
            call[name] = tuple(value) if isinstance(value, list) else value
        engine = self.pack
        return engine.resolve(engine.config.merged(**self._own_settings()), **call)

    def _chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        """The members' chat templates, unless a custom ``messages_to_prompt`` was given."""
        if self.messages_to_prompt is not generic_messages_to_prompt:
            return self.messages_to_prompt(messages)
        return to_chat_messages(messages)

    def _text_prompt(self, prompt: str, formatted: bool) -> str:
        if not isinstance(prompt, str):
            raise PromptError("prompt", prompt, "a string")
        return prompt if formatted else self.completion_to_prompt(prompt)

    # ---- completion -----------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Generate a completion of ``prompt`` (raw text, the same for every member)."""
        result = self.pack.generate(self._text_prompt(prompt, formatted), self._config(kwargs))
        return CompletionResponse(text=result.text, additional_kwargs=_info(result), raw=result.to_dict())

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream a completion: each response holds the text so far and its ``delta``."""
        events = self.pack.stream(self._text_prompt(prompt, formatted), self._config(kwargs))
        return _completions(events)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` with the decoding steps in worker threads."""
        events = self.pack.stream(self._text_prompt(prompt, formatted), self._config(kwargs))
        result = await _final(iterate_in_threads(events))
        return CompletionResponse(text=result.text, additional_kwargs=_info(result), raw=result.to_dict())

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` with the decoding steps in worker threads."""
        events = self.pack.stream(self._text_prompt(prompt, formatted), self._config(kwargs))

        async def responses() -> CompletionResponseAsyncGen:
            state = _StreamState()
            async for event in iterate_in_threads(events):
                response = state.completion(event)
                if response is not None:
                    yield response

        return responses()

    # ---- chat -----------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Reply to ``messages``, each member reading them through its own chat template."""
        result = self.pack.generate(self._chat_prompt(messages), self._config(kwargs))
        return _chat_response(result)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a reply: each response holds the message so far and its ``delta``."""
        events = self.pack.stream(self._chat_prompt(messages), self._config(kwargs))
        return _chats(events)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` with the decoding steps in worker threads."""
        events = self.pack.stream(self._chat_prompt(messages), self._config(kwargs))
        return _chat_response(await _final(iterate_in_threads(events)))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` with the decoding steps in worker threads."""
        events = self.pack.stream(self._chat_prompt(messages), self._config(kwargs))

        async def responses() -> ChatResponseAsyncGen:
            state = _StreamState()
            async for event in iterate_in_threads(events):
                response = state.chat(event)
                if response is not None:
                    yield response

        return responses()


# ---- translation ------------------------------------------------------------------------------


def to_chat_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex messages as the engine's ``{"role", "content"}`` dicts.

    Roles: system and developer -> system, user -> user, assistant, chatbot and model ->
    assistant. Consecutive messages of one role are joined with a blank line. Tool and
    function messages, and non-text blocks, raise :class:`PromptError`.

    >>> from llama_index.core.llms import ChatMessage
    >>> to_chat_messages([ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")])
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = _ROLES.get(message.role)
        if role is None:
            raise PromptError(where, str(message.role.value), "system, user or assistant messages (no tool calling)")
        parts = []
        for block in message.blocks:
            if not isinstance(block, TextBlock):
                kind = getattr(block, "block_type", type(block).__name__)
                raise PromptError(where, f"<{kind} block>", "text blocks: the pack reads no images, audio or files")
            parts.append(block.text)
        text = "".join(parts)
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": role, "content": text})
    if not out:
        raise PromptError("messages", [], "at least one message")
    return out


def _info(result: GenerationResult) -> dict[str, Any]:
    """The ``additional_kwargs`` of a final response."""
    return {
        "weights": dict(result.weights),
        "prompt_perplexity": dict(result.prompt_perplexity),
        "reference": result.reference,
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens,
        },
    }


def _chat_response(result: GenerationResult) -> ChatResponse:
    message = ChatMessage(role=MessageRole.ASSISTANT, content=result.text)
    return ChatResponse(message=message, additional_kwargs=_info(result), raw=result.to_dict())


class _StreamState:
    """The text so far and the weights of one stream (known before the first piece)."""

    def __init__(self) -> None:
        self.text = ""
        self.info: dict[str, Any] = {}

    def _advance(self, event: Event) -> tuple[str, dict[str, Any], GenerationResult | None] | None:
        if isinstance(event, WeightsEvent):
            self.info = {
                "weights": dict(event.weights),
                "prompt_perplexity": dict(event.prompt_perplexity),
                "reference": event.reference,
            }
            return None
        if isinstance(event, TextEvent):
            self.text += event.text
            return event.text, dict(self.info), None
        if isinstance(event, FinishEvent):
            return "", _info(event.result), event.result
        return None

    def completion(self, event: Event) -> CompletionResponse | None:
        step = self._advance(event)
        if step is None:
            return None
        delta, info, result = step
        raw = result.to_dict() if result is not None else None
        return CompletionResponse(text=self.text, delta=delta, additional_kwargs=info, raw=raw)

    def chat(self, event: Event) -> ChatResponse | None:
        step = self._advance(event)
        if step is None:
            return None
        delta, info, result = step
        message = ChatMessage(role=MessageRole.ASSISTANT, content=self.text)
        raw = result.to_dict() if result is not None else None
        return ChatResponse(message=message, delta=delta, additional_kwargs=info, raw=raw)


def _completions(events: Iterator[Event]) -> CompletionResponseGen:
    state = _StreamState()
    for event in events:
        response = state.completion(event)
        if response is not None:
            yield response


def _chats(events: Iterator[Event]) -> ChatResponseGen:
    state = _StreamState()
    for event in events:
        response = state.chat(event)
        if response is not None:
            yield response


async def _final(events: AsyncIterator[Event]) -> GenerationResult:
    result = None
    async for event in events:
        if isinstance(event, FinishEvent):
            result = event.result
    if result is None:  # the engine always ends a prompt with a FinishEvent
        raise RuntimeError("the engine's event stream ended without a result")
    return result
