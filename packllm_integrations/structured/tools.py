"""Tool calling: the tools a request offers, the calls the pack writes, and the grammar between them.

The pack writes every tool call in one format, the one Qwen2.5's chat template teaches
(Hermes-style)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A reply is either text or one or more such blocks, one per line. Members whose chat template
renders tools read the tools through it; the others read the same format from
:data:`~packllm_integrations.structured.chat_format.TOOLS_SECTION` (see :mod:`.chat_format`).
:func:`tool_constraint` is the grammar of what ``tool_choice`` allows, so that with the
constraint on, every complete call names an offered tool with arguments that validate
against its schema; :mod:`~packllm_integrations.structured.replies` reads the calls back out, whole
or as they stream.

Example:
    >>> add = Tool("add", "Add two integers.", {"type": "object", "properties": {"a": {"type": "integer"}}})
    >>> tool_constraint([add], "required").kind
    'lark'
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .constraints import Constraint
from .schemas import JSON_LAYOUT, closed_schema, one_of_as_any_of

__all__ = [
    "Conversation",
    "InvalidCall",
    "new_call_id",
    "Reply",
    "Tool",
    "ToolCall",
    "normalise_tool_choice",
    "tool_constraint",
]

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
_LEAD = "[ \\t\\n]{0,4}"
"""The blank space a call may follow (regex): a little, so that a model cannot loop on it."""
MAX_CALLS = 8
"""The most calls one reply may hold (parallel calls), so that a model cannot loop on calls forever."""

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NO_ARGUMENTS: Mapping[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    """A tool the pack may call: a name, what it does, and its arguments' JSON Schema (an object)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: dict(_NO_ARGUMENTS))

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError("tools", self.name, "tool names of 1-64 letters, digits, '_', '.' or '-'")
        if not isinstance(self.description, str):
            raise ConfigError("tools", self.description, f"a string description for tool {self.name!r}")
        p = self.parameters
        if not isinstance(p, Mapping) or p.get("type", "object") != "object":
            raise ConfigError("tools", p, f"an object JSON Schema for the arguments of tool {self.name!r}")
        try:
            problem = Constraint.json_schema(p).problem()
        except ConfigError as exc:  # not JSON, not finite, or nested too deep
            problem = exc.expected
        if problem:
            expected = f"arguments of tool {self.name!r} in a JSON Schema the grammar library takes ({problem})"
            raise ConfigError("tools", p, expected)

    @classmethod
    def of(cls, spec: Tool | Mapping[str, Any]) -> Tool:
        """A tool from an OpenAI-style dict (``{"type": "function", "function": {...}}``) or its inner part."""
        if isinstance(spec, Tool):
            return spec
        if not isinstance(spec, Mapping):
            raise ConfigError("tools", spec, "tools as OpenAI-style dicts with a name and parameters")
        inner = spec.get("function", spec)
        if not isinstance(inner, Mapping) or "name" not in inner:
            raise ConfigError("tools", spec, "tools as OpenAI-style dicts with a name and parameters")
        return cls(inner["name"], inner.get("description") or "", inner.get("parameters") or dict(_NO_ARGUMENTS))

    def openai(self) -> dict[str, Any]:
        """The tool as chat templates and OpenAI-style APIs take it."""
        function = {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """A call the pack wrote: the tool's name, its arguments, and an id for the result to name."""

    name: str
    arguments: dict[str, Any]
    id: str

    def text(self) -> str:
        """The call as the pack writes it (and as members read it back in a conversation)."""
        return OPEN + json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False) + CLOSE


@dataclass(frozen=True)
class InvalidCall:
    """A call that does not parse (cut by ``max_new_tokens``, or written without the grammar)."""

    name: str | None
    arguments: str
    id: str
    error: str


@dataclass(frozen=True)
class Reply:
    """A reply read back: its text (empty when it is calls) and its calls."""

    content: str
    calls: list[ToolCall]
    invalid: list[InvalidCall]
    repeats: int = 0
    """Calls left out because the conversation already holds their results."""


@dataclass(frozen=True)
class Conversation:
    """Chat messages with the tools the pack may call: a prompt that each member renders with its template.

    Messages are the engine's dicts: ``role`` and ``content``, plus ``tool_calls`` (a list of
    :class:`ToolCall`) on an assistant message that called tools, and ``tool_call_id`` and
    ``name`` on a ``"tool"`` message holding a result.
    """

    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Tool] = ()


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` and 24 hex digits)."""
    return "call_" + uuid.uuid4().hex[:24]


def normalise_tool_choice(choice: Any, tools: Sequence[Tool]) -> str:
    """``"auto"``, ``"required"``, ``"none"`` or one tool's name, from what hosts pass.

    Accepted: None or "auto"; "any", "required" or True; "none" or False; a tool's name, or
    ``{"type": "function", "function": {"name": ...}}``.

    >>> normalise_tool_choice("any", [Tool("add")])
    'required'
    """
    names = [t.name for t in tools]
    if choice is None or choice == "auto":
        return "auto"
    if choice is True or choice in ("any", "required"):
        return "required"
    if choice is False or choice == "none":
        return "none"
    name = choice
    if isinstance(choice, Mapping):
        inner = choice.get("function", choice)
        name = inner.get("name") if isinstance(inner, Mapping) else None
    if isinstance(name, str) and name in names:
        return name
    raise ConfigError("tool_choice", choice, f"'auto', 'any', 'required', 'none' or a tool's name ({names})")


def tool_constraint(tools: Sequence[Tool], choice: str = "auto", *, parallel: bool = True) -> Constraint:
    """The grammar of a reply under ``choice`` (see :func:`normalise_tool_choice`).

    ``"auto"``: text, or calls; ``"required"``: a call (or more); a tool's name: one call of
    it; ``"none"``: text only. A call is written in the tagged form (``<tool_call>`` tags),
    or as a bare JSON object, or in a ```` ```json ```` fence: the forms small models write
    by themselves, after up to 4 blank characters. Text is anything that does not begin like a
    call (nor with ``<tool``, which only a call attempt does). With ``parallel``, a reply
    may hold up to :data:`MAX_CALLS` tagged calls, else exactly one call.
    """
    text = "TEXT: /(.|\\n)+/ & ~/[ \\t\\n]*(<tool|\\{|```json)(.|\\n)*/"
    if choice == "none":
        return Constraint.lark(f"start: TEXT\n{text}\n")
    offered = [t for t in tools if choice in ("auto", "required") or t.name == choice]
    if not offered:
        raise ConfigError("tools", [], "at least one tool to call")
    many = parallel and choice in ("auto", "required")
    # Blank space before a call (a little: a model may loop on it) is part of its opening lexeme:
    # as a lexeme of its own it would lose to TEXT's (the lexer does not split "\n<tool_call>" once
    # TEXT could go on).
    rules = [
        f"start: {'calls | TEXT' if choice == 'auto' else 'calls'}",
        f"calls: tagged{f' more{{0,{MAX_CALLS - 1}}}' if many else ''} | SPACE? call | fenced",
        'tagged: TAG call "\\n</tool_call>"',
        'more: "\\n<tool_call>\\n" call "\\n</tool_call>"',
        'fenced: FENCE call "\\n```"',
        f"call: %json {json.dumps(_calls_schema(offered))}",
        f"TAG: /{_LEAD}<tool_call>\\n/",
        f"FENCE: /{_LEAD}```json\\n/",
        "SPACE: /[ \\t\\n]{1,4}/",
        text,
    ]
    return Constraint.lark("\n".join(rules) + "\n")


def _calls_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """One JSON Schema for a call of any of ``tools``: each tool's arguments and ``$defs`` gathered at the root,
    named per tool (``t0``, ``t0.Name``, ``t1``...), so that each tool's refs, ``#`` included, keep their target."""
    defs: dict[str, Any] = {}
    options = []
    for i, tool in enumerate(tools):  # tools may share a name: each is offered, a call validates against one
        params = {"type": "object", **one_of_as_any_of(tool.parameters)}  # checked when the tool was made
        local = {**params.pop("$defs", {}), **params.pop("definitions", {})}
        rename = {f"#/{k}/{d}": f"#/$defs/t{i}.{d}" for k in ("$defs", "definitions") for d in local}
        rename["#"] = f"#/$defs/t{i}"  # the arguments live at t{i}: their own root (recursive schemas) too
        defs.update({f"t{i}.{d}": _renamed(v, rename, tool) for d, v in local.items()})
        defs[f"t{i}"] = _renamed(params, rename, tool)
        arguments = {"$ref": f"#/$defs/t{i}"}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    return {"x-guidance": dict(JSON_LAYOUT), **closed_schema({**schema, "$defs": defs})}


def _renamed(schema: Any, rename: Mapping[str, str], tool: Tool) -> Any:
    """``schema`` with its local ``$ref``s renamed; a local one it cannot follow to its new place is refused."""
    if isinstance(schema, Mapping):
        out = {}
        for k, v in schema.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#"):
                if v not in rename:
                    expected = (
                        f"refs of tool {tool.name!r} to '#' or into '$defs' (a call's schema holds the arguments)"
                    )
                    raise ConfigError("tools", v, expected)
                out[k] = rename[v]
            else:
                out[k] = _renamed(v, rename, tool)
        return out
    if isinstance(schema, list):
        return [_renamed(v, rename, tool) for v in schema]
    return schema
