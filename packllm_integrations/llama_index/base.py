"""A fused pack as a LlamaIndex LLM (:class:`PackLLM`, a ``CustomLLM``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

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
from pydantic import ConfigDict, Field

from ..engine import Prompt
from ..errors import PromptError
from ..events import Event, FinishEvent, GenerationResult, TextEvent, WeightsEvent
from ..host import merge_messages, pack_model, result_metadata, weights_metadata

__all__ = ["PackLLM", "to_chat_messages"]

R = TypeVar("R", CompletionResponse, ChatResponse)

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


class PackLLM(pack_model("llama_index"), CustomLLM):  # type: ignore[misc]
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
    threads and fire one callback event per call. ``timeout`` bounds each call's time and
    ``max_retries`` retries a call whose device ran out of memory (a stream only before its
    first response).

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

    is_chat_model: bool | None = Field(
        default=None,
        description="Whether query engines call chat (members' chat templates) rather than complete; "
        "None: when every member has a chat template.",
    )

    @classmethod
    def class_name(cls) -> str:
        return "packllm"

    # ---- facts -------------------------------------------------------------------------

    @property
    def metadata(self) -> LLMMetadata:
        """The pack's real limits: the smallest member's context window and the output budget."""
        chat = self.is_chat_model
        if chat is None:
            chat = all(m.has_chat_template for m in self.pack.members)
        return LLMMetadata(
            context_window=self.pack.context_window,
            num_output=self._resolve().max_new_tokens,
            is_chat_model=chat,
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` for the reference tokenizer (set ``Settings.tokenizer = llm.tokenize``).

        The reference is the configured ``reference`` member, else the first member.
        """
        return self._reference_member().encode(text)

    # ---- prompts ------------------------------------------------------------------------

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
        result = self._runner().results([self._text_prompt(prompt, formatted)], self._resolve(kwargs))[0]
        return _final(_completion, result)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Stream a completion: each response holds the text so far and its ``delta``."""
        events = self._runner().events([self._text_prompt(prompt, formatted)], self._resolve(kwargs))
        return _responses(events, _completion)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` with the decoding steps in worker threads."""
        results = await self._runner().aresults([self._text_prompt(prompt, formatted)], self._resolve(kwargs))
        return _final(_completion, results[0])

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` with the decoding steps in worker threads."""
        events = self._runner().aevents([self._text_prompt(prompt, formatted)], self._resolve(kwargs))
        return _aresponses(events, _completion)

    # ---- chat -----------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Reply to ``messages``, each member reading them through its own chat template."""
        return _final(_chat, self._runner().results([self._chat_prompt(messages)], self._resolve(kwargs))[0])

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a reply: each response holds the message so far and its ``delta``."""
        return _responses(self._runner().events([self._chat_prompt(messages)], self._resolve(kwargs)), _chat)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` with the decoding steps in worker threads."""
        results = await self._runner().aresults([self._chat_prompt(messages)], self._resolve(kwargs))
        return _final(_chat, results[0])

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` with the decoding steps in worker threads."""
        return _aresponses(self._runner().aevents([self._chat_prompt(messages)], self._resolve(kwargs)), _chat)


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
    return merge_messages(_role_and_text(i, message) for i, message in enumerate(messages))


def _role_and_text(i: int, message: ChatMessage) -> tuple[str, str]:
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
    return role, "".join(parts)


def _completion(text: str, delta: str | None, info: dict[str, Any], raw: dict[str, Any] | None) -> CompletionResponse:
    return CompletionResponse(text=text, delta=delta, additional_kwargs=info, raw=raw)


def _chat(text: str, delta: str | None, info: dict[str, Any], raw: dict[str, Any] | None) -> ChatResponse:
    message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
    return ChatResponse(message=message, delta=delta, additional_kwargs=info, raw=raw)


Respond = Callable[[str, str | None, dict[str, Any], dict[str, Any] | None], R]
"""Builds a response from the text so far, the new piece (None: not streaming), the metadata and the raw result."""


def _final(respond: Respond[R], result: GenerationResult) -> R:
    """The response of a finished call: the whole text, the result's metadata and its raw dict."""
    return respond(result.text, None, result_metadata(result), result.to_dict())


class _StreamState:
    """The text so far and the weights of one stream (known before the first piece)."""

    def __init__(self, respond: Respond[R]) -> None:
        self.respond = respond
        self.text = ""
        self.info: dict[str, Any] = {}

    def __call__(self, event: Event) -> R | None:
        if isinstance(event, WeightsEvent):
            self.info = weights_metadata(event)
        elif isinstance(event, TextEvent):
            self.text += event.text
            return self.respond(self.text, event.text, dict(self.info), None)
        elif isinstance(event, FinishEvent):
            return self.respond(self.text, "", result_metadata(event.result), event.result.to_dict())
        return None


def _responses(events: Iterator[Event], respond: Respond[R]) -> Iterator[R]:
    state = _StreamState(respond)
    for event in events:
        response = state(event)
        if response is not None:
            yield response


async def _aresponses(events: AsyncIterator[Event], respond: Respond[R]) -> AsyncIterator[R]:
    state = _StreamState(respond)
    async for event in events:
        response = state(event)
        if response is not None:
            yield response
