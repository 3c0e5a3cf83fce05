"""LlamaIndex messages to the engine's, and the pack's tool calls to LlamaIndex's.

A reply's calls travel in ``ChatMessage.additional_kwargs["tool_calls"]`` as
``{"id", "name", "arguments"}`` dicts (what :meth:`PackLLM.get_tool_calls_from_response`
reads, and what LlamaIndex's agents keep in memory and send back); OpenAI-style entries
(``{"id", "function": {"name", "arguments"}}``) and ``ToolCallBlock`` blocks are read too.
A tool result is a ``"tool"`` message naming its call in ``additional_kwargs["tool_call_id"]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.llms.llm import ToolSelection

from .. import ToolCall
from ..errors import PromptError
from ..host import merge_messages

__all__ = ["calls_kwargs", "selections", "to_chat_messages"]

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def to_chat_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex messages as the engine's chat messages.

    Roles: system and developer -> system, user -> user, assistant, chatbot and model ->
    assistant (with its tool calls), tool and function -> tool (a result). Consecutive plain
    messages of one role are joined with a blank line. Non-text blocks raise :class:`PromptError`.

    >>> from llama_index.core.llms import ChatMessage
    >>> to_chat_messages([ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")])
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    return merge_messages(_message(i, message) for i, message in enumerate(messages))


def _message(i: int, message: ChatMessage) -> dict[str, Any]:
    where = f"messages[{i}]"
    role = _ROLES.get(message.role)
    if role is None:
        raise PromptError(where, str(message.role.value), "system, user, assistant or tool messages")
    parts, calls = [], []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            calls.append(_call(block.tool_name, block.tool_kwargs, block.tool_call_id, where))
        else:
            kind = getattr(block, "block_type", type(block).__name__)
            raise PromptError(where, f"<{kind} block>", "text blocks: the pack reads no images, audio or files")
    out: dict[str, Any] = {"role": role, "content": "".join(parts)}
    extra = message.additional_kwargs
    if role == "assistant":
        calls += [_openai_or_own(c, where) for c in extra.get("tool_calls") or []]
        if calls:
            out["tool_calls"] = calls
    elif role == "tool":
        out.update(tool_call_id=str(extra.get("tool_call_id") or ""), name=str(extra.get("name") or ""))
    return out


def _openai_or_own(entry: Any, where: str) -> ToolCall:
    """A call kept in ``additional_kwargs["tool_calls"]``: the pack's dict, or an OpenAI-style one."""
    if not isinstance(entry, Mapping):  # an OpenAI client object
        entry = entry.model_dump() if hasattr(entry, "model_dump") else {}
    function = entry.get("function") if isinstance(entry.get("function"), Mapping) else entry
    return _call(function.get("name"), function.get("arguments"), entry.get("id"), where)


def _call(name: Any, arguments: Any, call_id: Any, where: str) -> ToolCall:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise PromptError(where, arguments, "tool call arguments as a JSON object") from None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise PromptError(
            where, {"name": name, "arguments": arguments}, "tool calls with a name and an arguments object"
        )
    return ToolCall(name, arguments, str(call_id or ""))


def calls_kwargs(calls: Sequence[ToolCall]) -> dict[str, Any]:
    """``additional_kwargs`` of a reply holding ``calls`` (none: empty)."""
    if not calls:
        return {}
    return {"tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls]}


def selections(message: ChatMessage) -> list[ToolSelection]:
    """The calls of a reply as LlamaIndex's ``ToolSelection``s (see :func:`calls_kwargs`)."""
    calls = _message(0, message).get("tool_calls", [])
    return [ToolSelection(tool_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in calls]
