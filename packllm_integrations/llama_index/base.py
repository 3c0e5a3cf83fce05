"""A fused pack as a LlamaIndex LLM (:class:`PackLLM`, a ``CustomLLM``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

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
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.tools.types import BaseTool
from pydantic import ConfigDict, Field

from .. import ToolCall
from ..engine import Prompt
from ..errors import PromptError
from ..events import Event, FinishEvent, GenerationResult, TextEvent, WeightsEvent
from ..host import PackModel, constrained, pack_model, result_metadata, split_call, weights_metadata
from ..host.turns import ChatTurn, Piece, TurnEnd
from .messages import calls_kwargs, selections, to_chat_messages

__all__ = ["PackLLM", "to_chat_messages"]

R = TypeVar("R", CompletionResponse, ChatResponse)

if TYPE_CHECKING:

    class LlamaIndexFields(PackModel):
        """What ``pack_model("llama_index")`` adds to the fields :class:`PackModel` writes out, for
        type checkers and readers (``tests/test_adapter_fields.py`` checks it against the table)."""

        max_new_tokens: int | None = None
        """Most tokens to generate (reference-vocabulary tokens); None: the engine's default."""

else:
    LlamaIndexFields = pack_model("llama_index")


class PackLLM(LlamaIndexFields, CustomLLM, FunctionCallingLLM):
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
            is_function_calling_model=True,
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

    def _turn(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatTurn:
        """A chat call's turn (its messages, config and tools), or a custom ``messages_to_prompt``'s text."""
        request, constraint, rest = split_call(kwargs)
        config = constrained(self._resolve(rest), request, constraint)
        prompt = self._chat_prompt(messages)
        if isinstance(prompt, str):
            if request is not None:
                raise PromptError("messages_to_prompt", "<custom>", "the members' chat templates when tools are given")
            return ChatTurn(self._runner(), prompt, config, None, host="llama_index")
        return ChatTurn(self._runner(), prompt, config, request, host="llama_index")

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Reply to ``messages``, each member reading them through its own chat template.

        ``tools`` (OpenAI-style dicts), ``tool_choice`` and ``parallel_tool_calls`` may be
        given, as :meth:`chat_with_tools` does; the reply's calls are in
        ``message.additional_kwargs["tool_calls"]``. A ``constraint`` constrains the reply.
        """
        return _chat_response(self._turn(messages, kwargs).end())

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream a reply: each response holds the message so far (its calls too) and its ``delta``."""
        state = _ChatStream()
        return (r for piece in self._turn(messages, kwargs).pieces() if (r := state(piece)) is not None)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` with the decoding steps in worker threads."""
        return _chat_response(await self._turn(messages, kwargs).aend())

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` with the decoding steps in worker threads."""
        return _achat_stream(self._turn(messages, kwargs).apieces())

    # ---- function calling -----------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments of :meth:`chat_with_tools` and its kin (``tool_required``: a call must come)."""
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        choice = tool_choice if tool_choice is not None else ("required" if tool_required else "auto")
        specs = [tool.metadata.to_openai_tool() for tool in tools]
        return {
            "messages": messages,
            "tools": specs,
            "tool_choice": choice,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The calls of a reply (see :meth:`chat`); none raises ``ValueError`` if ``error_on_no_tool_call``."""
        calls = selections(response.message)
        if not calls and error_on_no_tool_call:
            invalid = response.additional_kwargs.get("invalid_tool_calls")
            if invalid:  # a call cut by max_new_tokens says so, and what to do
                raise ValueError(f"the reply holds no tool call: {invalid[0]['error']} ({invalid!r})")
            raise ValueError(f"the reply holds no tool call ({response.message.content!r})")
        return calls


# ---- translation ------------------------------------------------------------------------------


def _completion(text: str, delta: str | None, info: dict[str, Any], raw: dict[str, Any] | None) -> CompletionResponse:
    return CompletionResponse(text=text, delta=delta, additional_kwargs=info, raw=raw)


def _chat_message(text: str, calls: Sequence[ToolCall]) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, content=text, additional_kwargs=calls_kwargs(calls))


def _chat_response(end: TurnEnd) -> ChatResponse:
    """The response of a finished chat turn: its text or calls, the result's metadata and its raw dict."""
    info = result_metadata(end.result)
    if end.invalid:
        info["invalid_tool_calls"] = [{"name": c.name, "arguments": c.arguments, "error": c.error} for c in end.invalid]
    if end.answered_from_results:
        info["answered_from_results"] = True
    if end.detail:  # a constrained reply cut before it was whole: what cut it, and what to do
        info["finish_detail"] = end.detail
    return ChatResponse(message=_chat_message(end.content, end.calls), additional_kwargs=info, raw=end.result.to_dict())


class _ChatStream:
    """A chat turn's pieces as responses: the text so far, the calls so far, the weights, then the end."""

    def __init__(self) -> None:
        self.text, self.calls, self.info = "", [], {}

    def __call__(self, piece: Piece) -> ChatResponse | None:
        if isinstance(piece, WeightsEvent):
            self.info = weights_metadata(piece)
            return None
        if isinstance(piece, TurnEnd):
            return _chat_response(piece).model_copy(update={"delta": ""})
        delta = piece if isinstance(piece, str) else ""
        if isinstance(piece, ToolCall):
            self.calls.append(piece)
        self.text += delta
        message = _chat_message(self.text, self.calls)
        return ChatResponse(message=message, delta=delta, additional_kwargs=dict(self.info))


async def _achat_stream(pieces: AsyncIterator[Piece]) -> AsyncIterator[ChatResponse]:
    state = _ChatStream()
    async for piece in pieces:
        response = state(piece)
        if response is not None:
            yield response


Respond = Callable[[str, str | None, dict[str, Any], dict[str, Any] | None], CompletionResponse]
"""Builds a response from the text so far, the new piece (None: not streaming), the metadata and the raw result."""


def _final(respond: Respond, result: GenerationResult) -> CompletionResponse:
    """The response of a finished call: the whole text, the result's metadata and its raw dict."""
    return respond(result.text, None, result_metadata(result), result.to_dict())


class _StreamState:
    """The text so far and the weights of one stream (known before the first piece)."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.text = ""
        self.info: dict[str, Any] = {}

    def __call__(self, event: Event) -> CompletionResponse | None:
        if isinstance(event, WeightsEvent):
            self.info = weights_metadata(event)
        elif isinstance(event, TextEvent):
            self.text += event.text
            return self.respond(self.text, event.text, dict(self.info), None)
        elif isinstance(event, FinishEvent):
            return self.respond(self.text, "", result_metadata(event.result), event.result.to_dict())
        return None


def _responses(events: Iterator[Event], respond: Respond) -> Iterator[CompletionResponse]:
    state = _StreamState(respond)
    for event in events:
        response = state(event)
        if response is not None:
            yield response


async def _aresponses(events: AsyncIterator[Event], respond: Respond) -> AsyncIterator[CompletionResponse]:
    state = _StreamState(respond)
    async for event in events:
        response = state(event)
        if response is not None:
            yield response
