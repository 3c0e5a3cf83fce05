"""Evaluation tasks: what every task is, and language-modelling bits per byte over text windows.

A task turns its items into ``(context, continuation)`` pairs for
:meth:`PackEngine.score_many <packllm_integrations.PackEngine.score_many>` and turns the
scores back into its metric (the :class:`Task` protocol). Two kinds exist:

- :class:`~packllm_integrations.eval.multiple_choice.MultipleChoiceTask`: multiple-choice
  accuracy in the authors' format.
- :class:`TextTask` (here): language-modelling bits per byte: the total negative log-likelihood
  in bits of the scored text over its UTF-8 bytes. Long text is cut into windows
  (:func:`text_windows`), each scored after the text that precedes it; :func:`rolling_windows`
  cuts windows that score all of a text (lm-eval's rolling log-likelihood).

Both kinds are also read from JSONL task files: :mod:`packllm_integrations.eval.task_files`.

Example:
    >>> task = TextTask("demo", ["one two three four five six seven eight nine ten"], window_chars=15, context_chars=8)
    >>> task.pairs()[0]
    ('one two', ' three four five')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConfigError

__all__ = [
    "Scored",
    "Task",
    "TextTask",
    "text_windows",
    "rolling_windows",
]


class Scored(Protocol):
    """What a task reads from one scored pair (a :class:`~packllm_integrations.ScoreResult`)."""

    logprob: float
    tokens: int
    num_bytes: int


class Task(Protocol):
    """An evaluation task: pairs to score, and the metric computed from their scores."""

    name: str
    kind: str
    """``"multiple_choice"`` or ``"bits_per_byte"``."""
    metric: str
    """The metric's name (``"accuracy"``, ``"bits_per_byte"``)."""
    higher_is_better: bool

    def pairs(self) -> list[tuple[str, str]]:
        """``(context, continuation)`` pairs, grouped by item."""
        ...

    def groups(self) -> list[int]:
        """The index of each item's first pair (an item's pairs share one context)."""
        ...

    def score(self, results: Sequence[Scored]) -> tuple[float, list[Any]]:
        """The metric, and one record per item (prediction or NLL), from one method's results."""
        ...


def _clean_cut(text: str, target: int, low: int, high: int) -> int:
    """A cut position near ``target`` in [low, high] where a lone space starts the next piece.

    Such a boundary is also a token boundary for byte-level BPE and SentencePiece-style
    tokenizers, so the context's tokens are a prefix of the whole text's tokens.
    """

    def clean(i: int) -> bool:
        return (
            0 < i < len(text) - 1
            and text[i] == " "
            and not text[i - 1].isspace()
            and not text[i + 1].isspace()
            and text[i - 1] not in "([{"
        )

    for delta in range(0, max(target - low, high - target) + 1):
        for i in (target - delta, target + delta):
            if low <= i <= high and clean(i):
                return i
    return min(max(target, low), high)


def _check_sizes(window_chars: int, context_chars: int) -> None:
    if isinstance(window_chars, bool) or not isinstance(window_chars, int) or window_chars < 8:
        raise ConfigError("window_chars", window_chars, "an integer >= 8")
    if isinstance(context_chars, bool) or not isinstance(context_chars, int) or context_chars < 1:
        raise ConfigError("context_chars", context_chars, "an integer >= 1")


def _windows_from(text: str, start: int, window_chars: int, context_chars: int) -> list[tuple[str, str]]:
    """Windows covering ``text[start:]``, each after up to ``context_chars`` of the text before it."""
    windows = []
    while start < len(text):
        remaining = len(text) - start
        if remaining <= window_chars * 5 // 4:
            end = len(text)
        else:
            end = _clean_cut(text, start + window_chars, start + window_chars // 2, start + window_chars * 3 // 2)
        begin = max(0, start - context_chars)
        if begin > 0:  # start the context at a word boundary
            space = text.find(" ", begin, start)
            begin = space + 1 if 0 <= space < start - 1 else begin
        windows.append((text[begin:start], text[start:end]))
        start = end
    return windows


def text_windows(text: str, window_chars: int, context_chars: int) -> list[tuple[str, str]]:
    """Cut ``text`` into ``(context, continuation)`` windows for bits per byte.

    The first ``context_chars`` characters are context only; then each window of about
    ``window_chars`` characters is scored after the (up to) ``context_chars`` characters that
    precede it. Cuts fall before a lone space between two words where one is near, so no
    token straddles a cut. The continuations, joined, are the scored text.

    >>> windows = text_windows("one two three four five six seven eight nine ten", 15, 8)
    >>> windows[0]
    ('one two', ' three four five')
    >>> "".join(c for _, c in windows)
    ' three four five six seven eight nine ten'
    """
    _check_sizes(window_chars, context_chars)
    if len(text) <= context_chars:
        return []
    start = _clean_cut(text, context_chars, max(1, context_chars // 2), min(len(text) - 1, context_chars * 2))
    return _windows_from(text, start, window_chars, context_chars)


def rolling_windows(text: str, window_chars: int, context_chars: int) -> list[tuple[str, str]]:
    """Windows that score all of ``text``: the first after an empty context, later ones
    after up to ``context_chars`` of the text before them (lm-eval's rolling log-likelihood).

    >>> rolling_windows("one two three four five six", 12, 8)[:2]
    [('', 'one two three'), ('three', ' four five six')]
    """
    _check_sizes(window_chars, context_chars)
    return _windows_from(text, 0, window_chars, context_chars)


@dataclass(frozen=True)
class TextTask:
    """Language-modelling bits per byte over documents.

    Args:
        name: the task's name in reports.
        documents: the texts; each is cut into windows (see :func:`text_windows`).
        window_chars: characters scored per window.
        context_chars: characters of preceding text each window is scored after; each
            document's first ``context_chars`` characters are context only.

    >>> task = TextTask("t", ["one two three four five six seven eight nine ten"], window_chars=15, context_chars=8)
    >>> task.scored_bytes
    41
    """

    name: str
    documents: Sequence[str]
    window_chars: int = 1200
    context_chars: int = 600
    kind: str = field(default="bits_per_byte", init=False)
    metric: str = field(default="bits_per_byte", init=False)
    higher_is_better: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        docs = tuple(self.documents) if isinstance(self.documents, (list, tuple)) else self.documents
        if not isinstance(docs, tuple) or not all(isinstance(d, str) for d in docs):
            raise ConfigError("documents", self.documents, "a list of texts")
        object.__setattr__(self, "documents", docs)
        if not self.pairs():
            raise ConfigError(
                "documents", f"<{len(docs)} documents>", f"some text longer than context_chars={self.context_chars}"
            )

    def pairs(self) -> list[tuple[str, str]]:
        return [w for doc in self.documents for w in text_windows(doc, self.window_chars, self.context_chars)]

    def groups(self) -> list[int]:
        return list(range(len(self.pairs())))

    @property
    def scored_bytes(self) -> int:
        """UTF-8 bytes of the scored text."""
        return sum(len(c.encode("utf-8")) for _, c in self.pairs())

    def score(self, results: Sequence[Scored]) -> tuple[float, list[float]]:
        """Bits per byte over all windows, and each window's bits per byte."""
        nll = [-float(r.logprob) / math.log(2) for r in results]
        sizes = [len(c.encode("utf-8")) for _, c in self.pairs()]
        return sum(nll) / sum(sizes), [n / s for n, s in zip(nll, sizes, strict=True)]
