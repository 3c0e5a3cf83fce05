"""A fused pack as a LangChain chat model (:class:`ChatPackLLM`, a ``BaseChatModel``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from .. import ToolCall
from ..events import GenerationResult
from ..host import ToolRequest, constrained, split_call
from ..host.turns import ChatTurn, Piece, TurnEnd
from ._pack import PackSettings, generation_info
from .messages import delta_chunk, invalid_calls, reply_message, to_chat_messages
from .structured import structured_output

__all__ = ["ChatPackLLM", "to_chat_messages"]


class ChatPackLLM(PackSettings, BaseChatModel):
    """PackLLM test-time fusion of several causal LMs, as a LangChain chat model.

    Each member renders the conversation with its own chat template (a member without one
    reads the plain format ``"System: ...\\nUser: ...\\nAssistant:"``); the fused reply
    comes back as an ``AIMessage`` with ``usage_metadata`` and, in ``response_metadata``,
    the per-prompt ``weights``, ``prompt_perplexity``, ``reference`` and ``finish_reason``.

    Supported: text messages (system, human, AI, tool results, and ``ChatMessage`` with any
    role), streaming, async, stop strings, tool calling (:meth:`bind_tools`) and structured
    output (:meth:`with_structured_output`, JSON mode included), both grammar-constrained so
    that what comes back parses and validates. Not supported: images, audio and files
    (:class:`~packllm_integrations.PromptError`). Consecutive messages of one role are
    joined (blank line between) so that strict templates accept them. A message's ``name``
    is not rendered.

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
        """Tokens of the conversation as the reference member reads it (chat template and tools included)."""
        member = self._reference_member()
        request = ToolRequest.of([convert_to_openai_tool(t) for t in tools] if tools else None)
        chat = to_chat_messages(messages)
        return len(member.encode(member.render_chat(chat, request.tools if request else ())))

    # ---- tools and structured output ------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        parallel_tool_calls: bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, BaseMessage]:
        """This model with ``tools`` offered on every call; the reply's calls fill ``AIMessage.tool_calls``.

        ``tool_choice``: ``"auto"`` or None (text or calls, the pack decides), ``"any"`` or
        ``"required"`` (at least one call), a tool's name (one call of it), ``"none"`` (text).
        ``parallel_tool_calls=True`` allows up to 8 calls per reply (default: one, since sub-1B
        members given the chance repeat a call; a repeated call is left out anyway). The reply
        is constrained by a grammar of the tools' schemas, so every call names a bound tool
        and its arguments validate (``strict`` is always true, whatever is passed). Members
        whose chat template renders tools read them through it; the others read them as text
        (see :mod:`~packllm_integrations.structured.chat_format`).

        Example:
            >>> def add(a: int, b: int) -> int:
            ...     '''Add two integers.'''
            ...     return a + b
            >>> reply = chat.bind_tools([add], tool_choice="any").invoke("What is 2 + 3?")  # doctest: +SKIP
            >>> reply.tool_calls  # doctest: +SKIP
            [{'name': 'add', 'args': {'a': 2, 'b': 3}, 'id': 'call_5d1e...', 'type': 'tool_call'}]
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        ToolRequest.of(formatted, tool_choice, parallel_tool_calls)  # a bad choice raises now, not at the call
        extra = {} if parallel_tool_calls is None else {"parallel_tool_calls": parallel_tool_calls}
        return self.bind(tools=formatted, tool_choice=tool_choice, **extra, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """This model returning ``schema``'s objects (pydantic), or dicts (TypedDict, JSON Schema).

        ``method``: ``"json_schema"`` (the reply is JSON constrained to the schema),
        ``"function_calling"`` (a forced call of a tool with the schema's arguments) or
        ``"json_mode"`` (any JSON object; constrained to ``schema`` when one is given).
        Either way the output validates, unless ``max_tokens`` cuts it.
        ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}`` instead of raising
        on a reply that does not parse. ``strict`` is accepted and always true.

        Example:
            >>> from pydantic import BaseModel
            >>> class City(BaseModel):
            ...     name: str
            ...     country: str
            >>> chat.with_structured_output(City).invoke("Paris is the capital of France.")  # doctest: +SKIP
            City(name='Paris', country='France')
        """
        return structured_output(self, schema, method, include_raw, kwargs)

    # ---- generation ---------------------------------------------------------------------

    def _turn(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> ChatTurn:
        """A call's turn: its messages, its config (with its constraint) and its tools."""
        request, constraint, rest = split_call(_without_stream(kwargs))
        config = constrained(self._call_config(stop, rest), request, constraint)
        return ChatTurn(self._runner(), to_chat_messages(messages), config, request, host="langchain")

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._chat_result(self._turn(messages, stop, kwargs).end())

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._chat_result(await self._turn(messages, stop, kwargs).aend())

    def _chat_result(self, end: TurnEnd) -> ChatResult:
        fields = {"usage_metadata": _usage(end.result), "response_metadata": self._reply_metadata(end)}
        message = reply_message(end.content, end.calls, end.invalid, **fields)
        generation = ChatGeneration(message=message, generation_info=generation_info(end.result))
        return ChatResult(generations=[generation], llm_output=self._llm_output([end.result]))

    def _reply_metadata(self, end: TurnEnd) -> dict[str, Any]:
        out: dict[str, Any] = {"model_name": self.model_name, **_calls_finish(bool(end.calls))}
        if end.answered_from_results:
            out["answered_from_results"] = True
        if end.detail:  # a constrained reply cut before it was whole: what cut it, and what to do
            out["finish_detail"] = end.detail
        return out

    # ---- streaming ----------------------------------------------------------------------

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """A chunk per text piece (or whole tool call), then a last empty chunk with usage and metadata.

        LangChain's ``BaseChatModel`` reports each chunk to the callbacks itself.
        """
        calls = 0
        for piece in self._turn(messages, stop, kwargs).pieces():
            chunk = self._chunk(piece, calls)
            calls += isinstance(piece, ToolCall)
            if chunk is not None:
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        calls = 0
        async for piece in self._turn(messages, stop, kwargs).apieces():
            chunk = self._chunk(piece, calls)
            calls += isinstance(piece, ToolCall)
            if chunk is not None:
                yield chunk

    def _chunk(self, piece: Piece, calls: int) -> ChatGenerationChunk | None:
        """A piece of the reply as a chunk (``calls``: the calls before it); the end as the last chunk."""
        if isinstance(piece, (str, ToolCall)):
            return ChatGenerationChunk(message=delta_chunk(piece, calls))
        if isinstance(piece, TurnEnd):
            metadata = self._reply_metadata(piece)
            if piece.invalid:  # a chunk cannot carry an invalid call: LangChain would parse a cut one as a call
                metadata["invalid_tool_calls"] = invalid_calls(piece.invalid)
            message = AIMessageChunk(
                content="",
                usage_metadata=_usage(piece.result),
                response_metadata=metadata,
                chunk_position="last",
            )
            return ChatGenerationChunk(message=message, generation_info=generation_info(piece.result))
        return None


def _calls_finish(calls: bool) -> dict[str, str]:
    """``finish_reason="tool_calls"`` for a reply that calls tools, as OpenAI-style hosts expect."""
    return {"finish_reason": "tool_calls"} if calls else {}


def _usage(result: GenerationResult) -> UsageMetadata:
    usage = result.usage
    return UsageMetadata(
        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


def _without_stream(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's settings without ``stream``, which LangChain reads to choose invoke's path."""
    return {k: v for k, v in kwargs.items() if k != "stream"}
