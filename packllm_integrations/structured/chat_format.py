"""Chat messages as each member reads them: its own chat template, tools included where it renders them.

A member whose template renders tools (Qwen2.5's does) gets the tools and the conversation's
calls and results through it. Every other member gets the same tools and format as text:
:data:`TOOLS_SECTION` added to the system message, its past calls written as the pack
writes them (:meth:`~packllm_integrations.structured.tools.ToolCall.text`) and each result as a user
turn within ``<tool_response>`` tags, as Qwen's template does. A member without a template
reads ``"System: ...\\nUser: ...\\nAssistant:"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import PromptError
from .tools import Tool, ToolCall

__all__ = ["TOOLS_SECTION", "chat_messages", "content_spans", "merge", "render", "template_renders_tools"]

TOOLS_SECTION = """# Tools

You may call one or more tools to help with the user's request. The tools, as JSON Schemas:
<tools>
{tools}
</tools>

To call a tool, reply with only a JSON object with its name and arguments within <tool_call></tool_call> tags:
<tool_call>
{{"name": <tool-name>, "arguments": <arguments-object>}}
</tool_call>
Each result comes back within <tool_response></tool_response> tags. When no tool is needed, or once the results \
answer the request, reply in plain text."""
"""The tools as a member whose chat template does not render them reads them (``{tools}``: one JSON line per tool)."""

_PLAIN_KEYS = {"role", "content"}


def chat_messages(prompt: Sequence[Any], parameter: str) -> list[dict[str, Any]]:
    """Checked copies of chat messages (``role``, ``content``; ``tool_calls``; ``tool_call_id``, ``name``)."""
    out = []
    for m in prompt:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise PromptError(parameter, m, "chat messages with string 'role' and 'content'")
        check_text(m["content"], parameter)
        message: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        calls = m.get("tool_calls")
        if calls:
            if m["role"] != "assistant" or not all(isinstance(c, ToolCall) for c in calls):
                raise PromptError(parameter, m, "tool_calls (a list of ToolCall) on assistant messages only")
            message["tool_calls"] = list(calls)
        if m["role"] == "tool":
            message["tool_call_id"] = str(m.get("tool_call_id") or "")
            message["name"] = str(m.get("name") or "")
        out.append(message)
    return out


def check_text(text: str, parameter: str) -> None:
    """Text every tokenizer can read: no lone surrogates (what invalid UTF-8 in argv becomes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptError(parameter, text, f"valid Unicode text (a lone surrogate at character {exc.start})") from None


def merge(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive plain messages of one role joined by a blank line (strict templates alternate roles).

    Messages with tool calls and tool results are kept apart. No message raises :class:`PromptError`.

    >>> merge([{"role": "user", "content": "Hi"}, {"role": "user", "content": "there"}])
    [{'role': 'user', 'content': 'Hi\\n\\nthere'}]
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        last = out[-1] if out else None
        plain = set(m) <= _PLAIN_KEYS and m["role"] != "tool"
        if last is not None and plain and set(last) <= _PLAIN_KEYS and last["role"] == m["role"]:
            last["content"] += "\n\n" + m["content"]
        else:
            out.append(dict(m))
    if not out:
        raise PromptError("messages", [], "at least one message")
    return out


def render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool], renders_tools: bool) -> str:
    """``messages`` (and ``tools``) as the member of ``tokenizer`` reads them, ready for its reply.

    ``renders_tools``: whether the tokenizer's chat template renders tools (see
    :func:`template_renders_tools`); else tools, calls and results are written as text.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    tooled = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if tooled and has_template and renders_tools:
        specs = [t.openai() for t in tools] or None
        return _apply(tokenizer, [_template_message(m) for m in messages], specs)
    if tooled:
        messages = _as_text(messages, tools)
    if has_template:
        return _apply(tokenizer, list(messages), None)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def _apply(tokenizer: Any, messages: list[Any], tools: list[dict[str, Any]] | None) -> str:
    extra = {"tools": tools} if tools else {}
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra))


def _template_message(m: Mapping[str, Any]) -> dict[str, Any]:
    """A message as Hugging Face chat templates take tool calls and results."""
    out = {"role": m["role"], "content": m["content"]}
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {"type": "function", "id": c.id, "function": {"name": c.name, "arguments": c.arguments}}
            for c in m["tool_calls"]
        ]
    if m["role"] == "tool":
        out.update(tool_call_id=m.get("tool_call_id", ""), name=m.get("name", ""))
    return out


def _as_text(messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The conversation with tools, calls and results written as text (:data:`TOOLS_SECTION`'s format)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("tool_calls"):
            calls = "\n".join(c.text() for c in m["tool_calls"])
            out.append({"role": "assistant", "content": f"{m['content']}\n{calls}" if m["content"] else calls})
        elif m["role"] == "tool":
            result = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].endswith("</tool_response>"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools:
        section = TOOLS_SECTION.format(tools="\n".join(json.dumps(t.openai(), ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{section}"}
        else:
            out.insert(0, {"role": "system", "content": section})
    return merge(out)


def content_spans(text: str, messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Where the messages' own text lies in ``text`` (a member's rendering of them): character
    ranges ``(start, end)``, in order.

    Looked for from the end, each message's content before the next one's: what a template
    puts before the conversation (a default system prompt, the tools) then never holds a
    message. A content the template changed (stripped, say) is looked for stripped, and one
    still not found is left out. What lies between (the template's markup, the tools as this
    member reads them) is in no range: every member renders it differently, the contents alike.

    >>> content_spans("<s>user\\nHi there</s>\\n<s>assistant\\n", [{"role": "user", "content": "Hi there"}])
    [(8, 16)]
    """
    spans: list[tuple[int, int]] = []
    end = len(text)
    for m in reversed(messages):
        for content in dict.fromkeys((m["content"], m["content"].strip())):
            start = text.rfind(content, 0, end) if content else -1
            if start >= 0:
                spans.append((start, start + len(content)))
                end = start
                break
    return spans[::-1]


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether ``tokenizer``'s chat template shows tools, an assistant's calls and the results.

    Checked by rendering a probe conversation: each of the three must appear in the text.
    """
    if not getattr(tokenizer, "chat_template", None):
        return False
    tool = Tool("probe_tool_x7", "Probe.", {"type": "object", "properties": {"n": {"type": "integer"}}})
    call = ToolCall("probe_call_y8", {"n": 1}, "call_probe")
    probe = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "probe_result_z9", "tool_call_id": "call_probe", "name": "probe_call_y8"},
    ]
    try:
        text = _apply(tokenizer, [_template_message(m) for m in probe], [tool.openai()])
    except Exception:  # noqa: BLE001 - a template that cannot render tools raises anything jinja may raise
        return False
    return all(s in text for s in ("probe_tool_x7", "probe_call_y8", "probe_result_z9"))
