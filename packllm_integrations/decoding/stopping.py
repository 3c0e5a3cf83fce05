"""Text side of decoding: incremental detokenization and stop strings (per session row).

Stop strings are matched on decoded text, so they work across token boundaries and across
tokenizers. While streaming, any suffix that could still become a stop string is held back,
so a stop string is never emitted, not even partly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Detokenizer", "StopMatcher"]


class Detokenizer:
    """Turns a growing list of token ids into text deltas (holding back partial characters).

    It decodes a short window of recent ids and compares it with the window's previous
    decoding, so the cost per token stays constant and leading-space rules are respected.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(prompt_ids[-6:])
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token_id: int) -> str:
        """Append a token; return the new text it completes (may be empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever text is still pending (a partial character decodes as U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


class StopMatcher:
    """Finds stop strings in streamed text and releases only text that is safe to emit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add new text; return the part that can be emitted now.

        After a stop string is found, :attr:`stopped` is true, the text before the stop is
        returned and everything from the stop on is dropped.
        """
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._pending + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buffer[:cut]
        hold = 0
        for size in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self._stops):
                hold = size
                break
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """The held-back text, once generation ends without a stop."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
