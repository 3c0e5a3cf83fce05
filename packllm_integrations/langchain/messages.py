"""LangChain messages to the engine's, and the pack's replies back to LangChain messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import InvalidToolCall, invalid_tool_call, tool_call, tool_call_chunk

from .. import InvalidCall, ToolCall
from ..errors import PromptError
from ..host import merge_messages

__all__ = ["delta_chunk", "invalid_calls", "reply_message", "to_chat_messages"]

_CALL_BLOCKS = frozenset({"tool_call", "tool_use", "tool_call_chunk", "invalid_tool_call", "server_tool_call"})
"""Content blocks of an AI message that hold its calls (read from ``tool_calls`` instead)."""


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the engine's chat messages.

    Roles: ``SystemMessage`` -> system, ``HumanMessage`` -> user, ``AIMessage`` -> assistant
    (its ``tool_calls`` kept), ``ToolMessage`` -> tool (a result, with its ``tool_call_id``
    and ``name``), ``ChatMessage`` -> its own role. Consecutive plain messages of one role
    are joined with a blank line. Images, audio and files raise :class:`PromptError`.

    >>> from langchain_core.messages import HumanMessage, SystemMessage
    >>> to_chat_messages([SystemMessage("Be brief."), HumanMessage("Hi"), HumanMessage("there")])
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi\\n\\nthere'}]
    """
    return merge_messages(_message(i, message) for i, message in enumerate(messages))


def _message(i: int, message: BaseMessage) -> dict[str, Any]:
    where = f"messages[{i}]"
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": _text(message.content, where)}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": _text(message.content, where)}
    if isinstance(message, AIMessage):
        out: dict[str, Any] = {"role": "assistant", "content": _text(message.content, where, skip=_CALL_BLOCKS)}
        if message.tool_calls:
            out["tool_calls"] = [ToolCall(c["name"], dict(c["args"]), c.get("id") or "") for c in message.tool_calls]
        return out
    if isinstance(message, ToolMessage):
        content = _text(message.content, where)
        if message.status == "error":
            content = f"Error: {content}"
        return {"role": "tool", "content": content, "tool_call_id": message.tool_call_id, "name": message.name or ""}
    if isinstance(message, ChatMessage):
        return {"role": message.role, "content": _text(message.content, where)}
    raise PromptError(
        where, type(message).__name__, "SystemMessage, HumanMessage, AIMessage, ToolMessage or ChatMessage"
    )


def _text(content: str | list[str | dict[str, Any]], where: str, skip: frozenset[str] = frozenset()) -> str:
    """The text of a message's content (a string, or text blocks; ``skip``: block types left out)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif isinstance(block, dict) and block.get("type") in skip:
            continue
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise PromptError(
                where, f"<{kind} content block>", "text content: the pack reads no images, audio or files"
            )
    return "".join(parts)


def reply_message(content: str, calls: Sequence[ToolCall], invalid: Sequence[InvalidCall], **fields: Any) -> AIMessage:
    """A reply as an ``AIMessage``: its text, or its calls in ``tool_calls`` (and ``invalid_tool_calls``)."""
    return AIMessage(
        content=content,
        tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in calls],
        invalid_tool_calls=invalid_calls(invalid),
        **fields,
    )


def invalid_calls(invalid: Sequence[InvalidCall]) -> list[InvalidToolCall]:
    """The calls that did not parse, as LangChain's ``invalid_tool_calls`` entries."""
    return [invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error) for c in invalid]


def delta_chunk(piece: str | ToolCall, index: int) -> AIMessageChunk:
    """A streamed piece of a reply: text, or a whole call (one of ``tool_call_chunks``, call ``index`` of the reply)."""
    if isinstance(piece, str):
        return AIMessageChunk(content=piece)
    args = json.dumps(piece.arguments, ensure_ascii=False)
    chunk = tool_call_chunk(name=piece.name, args=args, id=piece.id, index=index)
    return AIMessageChunk(content="", tool_call_chunks=[chunk])
