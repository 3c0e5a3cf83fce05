"""Replies read back: a reply's text as content or tool calls, whole (:func:`parse_reply`) or as it
streams (:class:`ReplyStream`). The forms a call may take are :func:`~.tools.tool_constraint`'s.

Example:
    >>> reply = parse_reply('<tool_call>\\n{"name": "add", "arguments": {"a": 2}}\\n</tool_call>')
    >>> [(c.name, c.arguments) for c in reply.calls]
    [('add', {'a': 2})]
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .tools import CLOSE, OPEN, InvalidCall, Reply, Tool, ToolCall, new_call_id

__all__ = ["ReplyStream", "call_form", "call_key", "parse_reply"]

_BLANK = " \t\n"
_NEXT = "\n" + OPEN
_OPENINGS = {"tagged": OPEN, "bare": "{", "fenced": "```json\n"}
_CLOSINGS = {"tagged": CLOSE, "fenced": "\n```"}
_HEAD = re.compile(r'\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ')


def parse_reply(
    text: str,
    tools: Sequence[Tool] = (),
    *,
    must_call: bool = False,
    answered: frozenset[str] = frozenset(),
    cut: str | None = None,
) -> Reply:
    """``text`` as a reply: plain text, or the calls it holds (a call that does not parse is invalid).

    A reply holds calls when it begins like one (see :func:`tool_constraint`): with
    ``<tool_call>`` (one call per tagged block), with ``{`` (the whole reply is one call) or
    with a ```` ```json ```` fence. Each call must be JSON with a ``name`` (one of ``tools``,
    when given) and an ``arguments`` object. A call that repeats an earlier one of the reply
    (same tool, same arguments) is left out. ``must_call``: the reply was to be calls (a
    required or named ``tool_choice``), so any other text is a call cut before it began.
    ``answered``: the :func:`call_key` of calls the conversation already holds results for;
    a reply's call of one of them is left out too (counted in ``Reply.repeats``). ``cut``: why the
    output was cut (what ``max_new_tokens`` did), the error of a call it cut instead of a generic one.
    """
    form = call_form(text)
    if form in (None, "text"):
        if must_call and text:  # under a grammar that wants a call, only a cut reply is no call
            why = cut or "the output was cut before the call began"
            return Reply("", [], [InvalidCall(None, text, new_call_id(), why)])
        return Reply(text, [], [])
    text = text.lstrip(_BLANK)
    names = {t.name for t in tools}
    calls: list[ToolCall] = []
    invalid: list[InvalidCall] = []
    repeats = 0
    for body, closed in _bodies(text, form):
        call = _call(body, closed, names, cut)
        if isinstance(call, InvalidCall):
            invalid.append(call)
        elif call_key(call) in answered:
            repeats += 1
        elif not _repeats(call, calls):
            calls.append(call)
    return Reply("", calls, invalid, repeats)


def call_key(call: ToolCall) -> str:
    """A call's tool and arguments as one string: equal keys, the same call."""
    return json.dumps([call.name, call.arguments], sort_keys=True)


def call_form(text: str) -> str | None:
    """How ``text`` begins, after blank space: ``"tagged"``, ``"bare"`` or ``"fenced"`` (a call), ``"text"``,
    or None (not known yet)."""
    text = text.lstrip(_BLANK)
    for form, opening in _OPENINGS.items():
        if text.startswith(opening):
            return form
    return None if any(opening.startswith(text) for opening in _OPENINGS.values()) else "text"


def _bodies(text: str, form: str) -> list[tuple[str, bool]]:
    """The JSON text of each call of a reply of ``form``, and whether its end was reached."""
    if form == "bare":
        return [(text, False)]  # under the grammar, a bare call that does not parse was cut
    opening, closing = _OPENINGS[form], _CLOSINGS[form]
    blocks = text.split(opening)[1:] if form == "tagged" else [text[len(opening) :]]
    out = []
    for block in blocks:
        body, closed, _ = block.partition(closing)
        out.append((body if closed else _uncut(body, closing), bool(closed)))
    return out


def _uncut(body: str, closing: str) -> str:
    """``body`` without the start of its closing tag, where the output was cut inside the tag."""
    cut = max((n for n in range(1, len(closing)) if body.endswith(closing[:n])), default=0)
    return body[: len(body) - cut]


def _repeats(call: ToolCall, earlier: Sequence[ToolCall]) -> bool:
    """Whether an earlier call of the reply has the same tool and arguments (small models repeat calls)."""
    return any(c.name == call.name and c.arguments == call.arguments for c in earlier)


def _call(body: str, closed: bool, names: set[str], cut: str | None = None) -> ToolCall | InvalidCall:
    """One block's call, or why it is none (``closed``: whether the block's end tag followed; ``cut``: why
    the output was cut, if it was)."""
    call_id = new_call_id()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        head = _HEAD.match(body)
        name = json.loads(head.group(1)) if head else None
        why = f"not JSON ({exc})" if closed else cut or "the output was cut before the call ended"
        return InvalidCall(name, body[head.end() :] if head else body, call_id, why)
    name, arguments = (value.get("name"), value.get("arguments")) if isinstance(value, dict) else (None, None)
    if not isinstance(name, str) or not isinstance(arguments, dict) or (names and name not in names):
        return InvalidCall(name if isinstance(name, str) else None, body, call_id, "not a call of an offered tool")
    return ToolCall(name, arguments, call_id)


class ReplyStream:
    """Reads a reply's text as it streams: text pieces as they come, each call once it is whole.

    Until the reply's beginning tells text from a call, nothing is passed on. A call is
    passed on when it ends (a tagged or fenced call at its closing tag; a bare one, or one
    whose closing tag was cut, at the end of the reply), never in pieces: a call whose JSON
    ``max_new_tokens`` cuts is never passed on (and the finish reason is ``"length"``); one
    that repeats an earlier call is left out, as :func:`parse_reply` does.
    """

    def __init__(
        self, tools: Sequence[Tool] = (), *, must_call: bool = False, answered: frozenset[str] = frozenset()
    ) -> None:
        self.names = {t.name for t in tools}
        self.must_call = must_call
        self.answered = answered
        self.repeats = 0  # calls left out because the conversation already answered them
        self.texts = 0  # text pieces passed on
        self.calls: list[ToolCall] = []
        self.buffer = ""
        self.pos = 0
        self.form: str | None = None
        self.between = False  # tagged: after a closing tag, before the next opening

    def feed(self, piece: str) -> list[str | ToolCall]:
        """The pieces ``piece`` completes: text, or whole calls."""
        self.buffer += piece
        if self.form is None:
            self.form = call_form(self.buffer)
            if self.form in ("tagged", "fenced", "bare"):
                blank = len(self.buffer) - len(self.buffer.lstrip(_BLANK))
                self.pos = blank + (0 if self.form == "bare" else len(_OPENINGS[self.form]))
        if self.form == "text":
            out, self.pos = self.buffer[self.pos :], len(self.buffer)
            self.texts += bool(out)
            return [out] if out else []
        out: list[str | ToolCall] = []
        while self.form in ("tagged", "fenced"):
            rest = self.buffer[self.pos :]
            end = -1 if self.between else rest.find(_CLOSINGS[self.form])
            if end >= 0:
                self._add(rest[:end], out)
                self.pos += end + len(_CLOSINGS[self.form])
                self.between = True
            elif self.between and self.form == "tagged" and rest.startswith(_NEXT):
                self.pos, self.between = self.pos + len(_NEXT), False
            else:
                break
        return out

    def close(self) -> list[str | ToolCall]:
        """What is left at the end: a bare call (or one whose closing tag was cut), or the held-back text of a
        reply that never became a call."""
        out: list[str | ToolCall] = []
        if self.form is None and self.buffer:
            self.form, self.pos = "text", len(self.buffer)
            if not self.must_call:  # else it is the start of a call, cut
                out.append(self.buffer)
                self.texts += 1
        elif self.form == "bare" or (self.form in ("tagged", "fenced") and not self.between):
            rest = self.buffer[self.pos :]  # a call whose JSON is whole counts, its closing tag cut or not
            self._add(rest if self.form == "bare" else _uncut(rest, _CLOSINGS[self.form]), out)
        return out

    def _add(self, body: str, out: list[str | ToolCall]) -> None:
        call = _call(body, True, self.names)
        if isinstance(call, ToolCall) and call_key(call) in self.answered:
            self.repeats += 1
        elif isinstance(call, ToolCall) and not _repeats(call, self.calls):
            self.calls.append(call)
            out.append(call)
