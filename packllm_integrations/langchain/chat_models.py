"""A fused pack as a LangChain chat model (:class:`ChatPackLLM`, a ``BaseChatModel``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    UsageMetadata,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from ..errors import ConfigError, PromptError
from ..events import Event, FinishEvent, GenerationResult, TextEvent
from ..host import merge_messages
from ._pack import PackSettings, generation_info

__all__ = ["ChatPackLLM", "to_chat_messages"]


class ChatPackLLM(PackSettings, BaseChatModel):
    """PackLLM test-time fusion of several causal LMs, as a LangChain chat model.

    Each member renders the conversation with its own chat template (a member without one
    reads the plain format ``"System: ...\\nUser: ...\\nAssistant:"``); the fused reply
    comes back as an ``AIMessage`` with ``usage_metadata`` and, in ``response_metadata``,
    the per-prompt ``weights``, ``prompt_perplexity``, ``reference`` and ``finish_reason``.

    Supported: text messages (system, human, AI, and ``ChatMessage`` with any role),
    streaming, async, stop strings. Not supported (declared, not faked): tool calling,
    structured output, JSON mode, images, audio and files; such inputs raise
    :class:`~packllm_integrations.PromptError`. Consecutive messages of one role are
    joined (blank line between) so that strict templates accept them. A message's
    ``name`` is not rendered.

    Example:
        >>> from packllm_integrations.langchain import ChatPackLLM
        >>> chat = ChatPackLLM(models=["smollm2-135m", "qwen2.5-coder-0.5b"], max_tokens=32)  # doctest: +SKIP
        >>> messages = [("system", "Answer briefly."), ("human", "What is a list comprehension?")]
        >>> reply = chat.invoke(messages)  # doctest: +SKIP
        >>> reply.response_metadata["weights"]  # doctest: +SKIP
        {'smollm2-135m': 0.62, 'qwen2.5-coder-0.5b': 0.38}
        >>> reply.usage_metadata  # doctest: +SKIP
        {'input_tokens': 38, 'output_tokens': 32, 'total_tokens': 70}
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    streaming: bool = False
    """Generate through :meth:`_stream` even in ``invoke``, so callbacks receive each piece."""

    @property
    def _llm_type(self) -> str:
        return "packllm-chat"

    _ls_model_type: ClassVar[str] = "chat"

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the conversation as the reference member reads it (chat template included)."""
        if tools:
            raise ConfigError("tools", f"<{len(tools)} tools>", "no tools: the pack has no tool calling")
        member = self._reference_member()
        return len(member.encode(member.render_chat(to_chat_messages(messages))))

    # ---- generation ---------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt, config = to_chat_messages(messages), self._call_config(stop, _without_stream(kwargs))
        return self._chat_result(self._runner().results([prompt], config)[0])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt, config = to_chat_messages(messages), self._call_config(stop, _without_stream(kwargs))
        return self._chat_result((await self._runner().aresults([prompt], config))[0])

    def _chat_result(self, result: GenerationResult) -> ChatResult:
        message = AIMessage(
            content=result.text,
            usage_metadata=_usage(result),
            response_metadata={"model_name": self.model_name},
        )
        generation = ChatGeneration(message=message, generation_info=generation_info(result))
        return ChatResult(generations=[generation], llm_output=self._llm_output([result]))

    # ---- streaming ----------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """A chunk per text piece, then a last empty chunk with usage and metadata.

        LangChain's ``BaseChatModel`` reports each chunk to the callbacks itself.
        """
        prompt, config = to_chat_messages(messages), self._call_config(stop, _without_stream(kwargs))
        for event in self._runner().events([prompt], config):
            chunk = self._chunk(event)
            if chunk is not None:
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        prompt, config = to_chat_messages(messages), self._call_config(stop, _without_stream(kwargs))
        async for event in self._runner().aevents([prompt], config):
            chunk = self._chunk(event)
            if chunk is not None:
                yield chunk

    def _chunk(self, event: Event) -> ChatGenerationChunk | None:
        if isinstance(event, TextEvent):
            return ChatGenerationChunk(message=AIMessageChunk(content=event.text))
        if isinstance(event, FinishEvent):
            message = AIMessageChunk(
                content="",
                usage_metadata=_usage(event.result),
                response_metadata={"model_name": self.model_name},
                chunk_position="last",
            )
            return ChatGenerationChunk(message=message, generation_info=generation_info(event.result))
        return None


def _usage(result: GenerationResult) -> UsageMetadata:
    usage = result.usage
    return UsageMetadata(
        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


def _without_stream(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's settings without ``stream``, which LangChain reads to choose invoke's path."""
    return {k: v for k, v in kwargs.items() if k != "stream"}


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the engine's ``{"role", "content"}`` dicts.

    Roles: ``SystemMessage`` -> system, ``HumanMessage`` -> user, ``AIMessage`` ->
    assistant, ``ChatMessage`` -> its own role. Consecutive messages of one role are joined
    with a blank line. Tool calls, tool results and non-text content raise :class:`PromptError`.

    >>> from langchain_core.messages import HumanMessage, SystemMessage
    >>> to_chat_messages([SystemMessage("Be brief."), HumanMessage("Hi"), HumanMessage("there")])
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi\\n\\nthere'}]
    """
    return merge_messages(_role_and_text(i, message) for i, message in enumerate(messages))


def _role_and_text(i: int, message: BaseMessage) -> tuple[str, str]:
    where = f"messages[{i}]"
    if isinstance(message, SystemMessage):
        role = "system"
    elif isinstance(message, HumanMessage):
        role = "user"
    elif isinstance(message, AIMessage):
        if message.tool_calls or message.invalid_tool_calls:
            raise PromptError(where, "<AIMessage with tool calls>", "text messages: the pack has no tool calling")
        role = "assistant"
    elif isinstance(message, ChatMessage):
        role = message.role
    else:
        raise PromptError(
            where,
            type(message).__name__,
            "SystemMessage, HumanMessage, AIMessage or ChatMessage (no tool messages)",
        )
    return role, _text(message.content, where)


def _text(content: str | list[str | dict[str, Any]], where: str) -> str:
    """The text of a message's content (a string, or text blocks)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise PromptError(
                where, f"<{kind} content block>", "text content: the pack reads no images, audio or files"
            )
    return "".join(parts)
