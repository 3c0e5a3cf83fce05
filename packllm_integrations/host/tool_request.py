"""Tool requests, framework-free: what both adapters' tool calling and structured output share.

An adapter hands the call's keyword arguments to :func:`split_call`, which takes out the
tools, ``tool_choice``, ``parallel_tool_calls`` and a ``constraint``; the rest are settings.
A :class:`ToolRequest` turns chat messages into a :class:`~packllm_integrations.structured.tools.Conversation`
(each member renders the tools), the call's config into one constrained by the tools' grammar,
and the reply's text back into content and calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config import GenerationConfig
from ..errors import ConfigError
from ..structured.constraints import Constraint
from ..structured.replies import ReplyStream, call_key, parse_reply
from ..structured.tools import Conversation, Reply, Tool, normalise_tool_choice, tool_constraint
from .translate import merge_messages

__all__ = ["ToolRequest", "constrained", "split_call"]

CALL_KEYS = ("tools", "tool_choice", "parallel_tool_calls", "allow_repeated_calls", "constraint")
"""Keyword arguments of a call that are no generation setting: they shape the reply."""

ANSWER_FROM_RESULTS = "Answer the user's question from these results of tools, in a sentence or two:"
"""The system message of the answer the pack gives when it would only repeat calls already answered."""


@dataclass(frozen=True)
class ToolRequest:
    """The tools of one call, which of them the reply may call (``choice``), and whether several at once.

    ``parallel`` is off unless asked for (``parallel_tool_calls=True``): sub-1B members given
    the chance write the same call again and again.

    Example:
        >>> request = ToolRequest.of([{"name": "add", "parameters": {"type": "object", "properties": {}}}], "any")
        >>> request.choice, [t.name for t in request.tools]
        ('required', ['add'])
    """

    tools: tuple[Tool, ...]
    choice: str = "auto"
    parallel: bool = False
    answered: frozenset[str] = frozenset()
    """:func:`~packllm_integrations.structured.replies.call_key` of the calls the conversation holds results for."""
    results: tuple[tuple[str, str], ...] = ()
    """The conversation's tool results: (tool name, result text)."""
    repeats: bool = False
    """Whether a call the conversation already answered may be made again (``allow_repeated_calls``)."""

    @classmethod
    def of(
        cls, tools: Sequence[Tool | Mapping[str, Any]] | None, choice: Any = None, parallel: Any = None
    ) -> ToolRequest | None:
        """The request of a call's ``tools`` (OpenAI-style dicts or :class:`Tool`); None without tools."""
        if not tools:
            if choice not in (None, "auto", "none"):
                raise ConfigError("tool_choice", choice, "tools to choose from (none were bound)")
            return None
        if isinstance(tools, (str, Mapping)) or not isinstance(tools, Sequence):
            raise ConfigError("tools", tools, "a list of tools")
        parsed = tuple(Tool.of(t) for t in tools)
        if parallel is not None and not isinstance(parallel, bool):
            raise ConfigError("parallel_tool_calls", parallel, "True, False or None")
        return cls(parsed, normalise_tool_choice(choice, parsed), parallel is True)

    def prompt(self, messages: Sequence[Mapping[str, Any]]) -> Conversation:
        """The messages with these tools, for each member to render."""
        return Conversation(list(messages), self.tools)

    def given(self, messages: Sequence[Mapping[str, Any]]) -> ToolRequest:
        """This request knowing the conversation: which calls this turn already answered, and their results.

        The turn is what follows the last user message: a call answered before it (the time,
        asked again) is a new question, not a repeat.
        """
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        turn = messages[users[-1] + 1 :] if users else messages
        answered_ids = {m.get("tool_call_id") for m in turn if m["role"] == "tool"}
        keys = set()
        for i, m in enumerate(turn):
            for call in m.get("tool_calls") or []:
                later_result = any(r["role"] == "tool" for r in turn[i + 1 :])
                if call.id in answered_ids or (not call.id and later_result):
                    keys.add(call_key(call))
        names = {c.id: c.name for m in turn for c in m.get("tool_calls") or []}
        results = tuple(
            (str(m.get("name") or names.get(m.get("tool_call_id"), "tool")), m["content"])
            for m in turn
            if m["role"] == "tool"
        )
        skip = self.repeats or self.choice != "auto"  # a call asked for is made, repeat or not
        return replace(self, answered=frozenset() if skip else frozenset(keys), results=results)

    def answer_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """A prompt for the answer in text from the conversation's tool results (tools off)."""
        lines = "\n".join(f"- {name}: {text}" for name, text in self.results)
        system = f"{ANSWER_FROM_RESULTS}\n{lines}"
        asked = [m for m in messages if m["role"] in ("system", "user") and not m.get("tool_calls")]
        return merge_messages([{"role": "system", "content": system}, *asked])

    def constraint(self) -> Constraint:
        """The grammar the reply must follow (see :func:`~packllm_integrations.structured.tools.tool_constraint`)."""
        return tool_constraint(self.tools, self.choice, parallel=self.parallel)

    @property
    def must_call(self) -> bool:
        """Whether the reply must be calls (``tool_choice`` required or a tool's name)."""
        return self.choice not in ("auto", "none")

    def reply(self, text: str, cut: str | None = None) -> Reply:
        """The reply's text read back as content and calls (calls already answered left out); ``cut``: why
        the output was cut, given as the error of a call it cut."""
        return parse_reply(text, self.tools, must_call=self.must_call, answered=self.answered, cut=cut)

    def stream(self) -> ReplyStream:
        """A reader of the reply as it streams (see :class:`~packllm_integrations.structured.replies.ReplyStream`)."""
        return ReplyStream(self.tools, must_call=self.must_call, answered=self.answered)


def split_call(kwargs: Mapping[str, Any]) -> tuple[ToolRequest | None, Constraint | None, dict[str, Any]]:
    """A call's keyword arguments as its tool request, its constraint, and the generation settings left.

    >>> split_call({"max_tokens": 8, "constraint": Constraint.regex("a+")})[1:]
    (Constraint(kind='regex', source='a+'), {'max_tokens': 8})
    """
    rest = {k: v for k, v in kwargs.items() if k not in CALL_KEYS}
    request = ToolRequest.of(kwargs.get("tools"), kwargs.get("tool_choice"), kwargs.get("parallel_tool_calls"))
    repeats = kwargs.get("allow_repeated_calls", False)
    if not isinstance(repeats, bool):
        raise ConfigError("allow_repeated_calls", repeats, "True or False")
    if request is not None and repeats:
        request = replace(request, repeats=True)
    constraint = kwargs.get("constraint")
    if constraint is not None and not isinstance(constraint, Constraint):
        raise ConfigError("constraint", constraint, "a Constraint (Constraint.json_schema(...), ...) or None")
    if request is not None and constraint is not None:
        raise ConfigError("constraint", constraint.kind, "either tools or a constraint, not both")
    return request, constraint, rest


def constrained(
    config: GenerationConfig, request: ToolRequest | None, constraint: Constraint | None
) -> GenerationConfig:
    """``config`` with the tools' grammar, or ``constraint``, as its constraint (neither: unchanged)."""
    chosen = request.constraint() if request is not None else constraint
    return config if chosen is None else config.merged(constraint=chosen)
