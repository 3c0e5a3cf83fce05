"""Strings that go round in a loop, found in a constrained output's text as it comes (:class:`RepeatGuard`)."""

from __future__ import annotations

__all__ = ["MIN_REPEAT_SPAN", "RepeatGuard"]

MIN_REPEAT_SPAN = 24
"""The fewest characters a repeated span must cover (all its copies) before :class:`RepeatGuard` ends the string:
short repeats that text has by right ("Bora Bora", "ha ha") stay."""


class RepeatGuard:
    """Reads a constrained output's text and says when the JSON string it is in goes round in a loop.

    A string loops when its text ends with one span repeated ``repeats`` times in a row, the
    copies covering at least :data:`MIN_REPEAT_SPAN` characters ("A cat is a cat, right? A cat
    is a cat, right? "). The matcher then allows only the tokens that close the string, where
    the grammar allows one (a ``minLength`` not reached yet, or a ``pattern``, may not): the
    string ends with what it holds, and the object goes on. ``whole``: the output is one JSON
    value from its first character (a JSON Schema); else strings are those within ``{}`` or
    ``[]`` (a grammar with JSON in it, such as tool calls).

    Example:
        >>> guard = RepeatGuard(2)
        >>> guard.read('{"text": "A cat is a cat, right? A cat is a cat, right? ')
        >>> guard.looping
        True
        >>> guard.read('", "n": "ha ha ha ')
        >>> guard.looping
        False
    """

    def __init__(self, repeats: int, *, whole: bool = False, min_span: int = MIN_REPEAT_SPAN) -> None:
        self.repeats, self.whole, self.min_span = repeats, whole, min_span
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.text = ""  # the open string's text so far (its last 1024 characters)
        self.closed = 0  # strings this guard has ended

    def read(self, text: str) -> None:
        """Take the next piece of the output."""
        for ch in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string, self.text = False, ""
                    continue
                self.text += ch
            elif ch == '"' and (self.depth > 0 or self.whole):
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth = max(0, self.depth - 1)
        self.text = self.text[-1024:]

    @property
    def looping(self) -> bool:
        """Whether the output is inside a string whose text ends in a loop (and not inside an escape)."""
        if not self.in_string or self.escaped or self.repeats < 2:
            return False
        text, r = self.text, self.repeats
        for length in range(max(1, -(-self.min_span // r)), len(text) // r + 1):
            if text[-r * length :] == text[-length:] * r:
                return True
        return False
