"""Evaluation tasks: multiple-choice accuracy and bits per byte, and the JSONL task file format.

A task turns its items into ``(context, continuation)`` pairs for
:meth:`PackEngine.score_many <packllm_integrations.PackEngine.score_many>` and turns the
scores back into its metric. Two kinds exist:

- :class:`MultipleChoiceTask`: the authors' format (PACKLLM.md section 5). The context is
  ``"Question: {q}\\nChoices:\\nA. ...\\nB. ...\\nAnswer:"`` (after ``k`` solved demonstrations
  for k-shot), each option is scored as the continuation ``" " + option text``, and the
  option with the lowest length-normalised negative log-likelihood is the prediction.
- :class:`TextTask`: language-modelling bits per byte: the total negative log-likelihood in
  bits of the scored text over its UTF-8 bytes. Long text is cut into windows, each scored
  after the text that precedes it.

Task files (JSONL: one JSON object per line, blank lines skipped; the task is named after
the file)::

    {"question": "How many legs do horses have?", "choices": ["two", "four", "six"], "answer": 1}
    {"question": "What colour is the sky?", "choices": ["green", "blue"], "answer": "B", "split": "dev"}

- ``question``: non-empty text; ``choices``: two to 26 distinct non-empty texts;
  ``answer``: the 0-based index of the right choice, or its letter (``"A"``...);
  ``split`` (optional): ``"test"`` (default, evaluated) or ``"dev"`` (demonstrations for
  k-shot); ``id`` (optional): a string or integer shown in per-item results.

or, for bits per byte, one document per line::

    {"text": "The first document ...", "id": "doc-1"}

A file holds one kind of record. Any other key, a wrong type or a bad value raises
:class:`~packllm_integrations.eval.errors.TaskFileError` naming the file, line and field.

Example:
    >>> task = MultipleChoiceTask("demo", [MCItem("2 + 2 =", ("3", "4"), 1)])
    >>> task.pairs()[1]
    ('Question: 2 + 2 =\\nChoices:\\nA. 3\\nB. 4\\nAnswer:', ' 4')
"""

from __future__ import annotations

import json
import math
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from .errors import TaskFileError

__all__ = [
    "MCItem",
    "Scored",
    "Task",
    "MultipleChoiceTask",
    "TextTask",
    "format_question",
    "text_windows",
    "rolling_windows",
    "load_task_file",
    "NORMALIZATIONS",
]

LETTERS = string.ascii_uppercase
NORMALIZATIONS = ("tokens", "bytes", "none")
"""How an option's negative log-likelihood is normalised: per token (the authors'), per byte, or not at all."""


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


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question.

    >>> MCItem("2 + 2 =", ("3", "4"), 1).choices[1]
    '4'
    """

    question: str
    choices: tuple[str, ...]
    answer: int
    id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ConfigError("question", self.question, "non-empty text")
        choices = tuple(self.choices) if isinstance(self.choices, (list, tuple)) else self.choices
        if not isinstance(choices, tuple) or not 2 <= len(choices) <= len(LETTERS):
            raise ConfigError("choices", self.choices, f"a list of 2 to {len(LETTERS)} texts")
        if not all(isinstance(c, str) and c.strip() for c in choices) or len(set(choices)) != len(choices):
            raise ConfigError("choices", self.choices, "distinct non-empty texts")
        object.__setattr__(self, "choices", choices)
        if isinstance(self.answer, bool) or not isinstance(self.answer, int) or not 0 <= self.answer < len(choices):
            raise ConfigError("answer", self.answer, f"an index into choices (0 to {len(choices) - 1})")


def format_question(item: MCItem) -> str:
    """The authors' prompt for one question, ending with ``"Answer:"``.

    >>> print(format_question(MCItem("Capital of France?", ("Paris", "Rome"), 0)))
    Question: Capital of France?
    Choices:
    A. Paris
    B. Rome
    Answer:
    """
    lines = [f"Question: {item.question.strip()}", "Choices:"]
    lines += [f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(item.choices)]
    lines.append("Answer:")
    return "\n".join(lines)


@dataclass(frozen=True)
class MultipleChoiceTask:
    """Multiple-choice accuracy, zero-shot or k-shot.

    Args:
        name: the task's name in reports.
        items: the questions to evaluate.
        fewshot: demonstrations (solved questions) put before each question.
        demos: where demonstrations come from; when empty, from the other ``items``.
        seed: seeds the choice of demonstrations (each item draws its own, reproducibly).
        normalize: ``"tokens"`` (mean NLL per token, the authors' rule), ``"bytes"`` or ``"none"``.

    >>> task = MultipleChoiceTask("t", [MCItem("q1", ("a", "b"), 0), MCItem("q2", ("c", "d"), 1)], fewshot=1)
    >>> print(task.pairs()[0][0])
    Question: q2
    Choices:
    A. c
    B. d
    Answer: d
    <BLANKLINE>
    Question: q1
    Choices:
    A. a
    B. b
    Answer:
    """

    name: str
    items: Sequence[MCItem]
    fewshot: int = 0
    demos: Sequence[MCItem] = ()
    seed: int = 0
    normalize: str = "tokens"
    kind: str = field(default="multiple_choice", init=False)
    metric: str = field(default="accuracy", init=False)
    higher_is_better: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        object.__setattr__(self, "demos", tuple(self.demos))
        if not self.items:
            raise ConfigError("items", [], f"at least one question in task {self.name!r}")
        if isinstance(self.fewshot, bool) or not isinstance(self.fewshot, int) or self.fewshot < 0:
            raise ConfigError("fewshot", self.fewshot, "an integer >= 0")
        pool = len(self.demos) if self.demos else len(self.items) - 1
        if self.fewshot > pool:
            raise ConfigError("fewshot", self.fewshot, f"at most {pool} (the demonstrations task {self.name!r} has)")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError("normalize", self.normalize, f"one of {', '.join(NORMALIZATIONS)}")

    def demonstrations(self, index: int) -> list[MCItem]:
        """The solved questions shown before item ``index`` (reproducible for a given seed)."""
        if not self.fewshot:
            return []
        pool = list(self.demos) if self.demos else [d for i, d in enumerate(self.items) if i != index]
        return random.Random(f"{self.seed}:{index}").sample(pool, self.fewshot)

    def context(self, index: int) -> str:
        """The whole prompt of item ``index``: demonstrations, then the question."""
        shots = [f"{format_question(d)} {d.choices[d.answer].strip()}\n\n" for d in self.demonstrations(index)]
        return "".join(shots) + format_question(self.items[index])

    def pairs(self) -> list[tuple[str, str]]:
        out = []
        for i, item in enumerate(self.items):
            context = self.context(i)
            out += [(context, " " + c.strip()) for c in item.choices]
        return out

    def groups(self) -> list[int]:
        starts, n = [], 0
        for item in self.items:
            starts.append(n)
            n += len(item.choices)
        return starts

    def option_nll(self, result: Scored) -> float:
        """An option's negative log-likelihood, normalised as configured."""
        nll = -float(result.logprob)
        if self.normalize == "tokens":
            return nll / max(1, int(result.tokens))
        if self.normalize == "bytes":
            return nll / max(1, int(result.num_bytes))
        return nll

    def score(self, results: Sequence[Scored]) -> tuple[float, list[int]]:
        """Accuracy and each item's predicted choice (ties: the earliest choice)."""
        predictions = []
        for item, start in zip(self.items, self.groups(), strict=True):
            nll = [self.option_nll(results[start + j]) for j in range(len(item.choices))]
            predictions.append(min(range(len(nll)), key=lambda j: (nll[j], j)))
        correct = sum(p == item.answer for p, item in zip(predictions, self.items, strict=True))
        return correct / len(self.items), predictions


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


# ---- task files --------------------------------------------------------------------------

_MC_KEYS = {"question", "choices", "answer", "split", "id"}
_TEXT_KEYS = {"text", "id"}


def _answer_index(value: Any, choices: Sequence[str], path: Path, line: int) -> int:
    n = len(choices)
    expected = f"an index into 'choices' (0 to {n - 1}) or a letter A to {LETTERS[n - 1]}"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS[:n]:
        return LETTERS.index(value.strip().upper())
    raise TaskFileError(path, line, "answer", value, expected)


def _read_id(record: dict[str, Any], path: Path, line: int) -> str:
    value = record.get("id", "")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TaskFileError(path, line, "id", value, "a string or an integer")
    return str(value)


def _mc_record(record: dict[str, Any], path: Path, line: int) -> tuple[MCItem, str]:
    for key in record:
        if key not in _MC_KEYS:
            raise TaskFileError(path, line, key, record[key], f"no such field (allowed: {', '.join(sorted(_MC_KEYS))})")
    for key in ("question", "choices", "answer"):
        if key not in record:
            raise TaskFileError(path, line, key, None, "a value (the field is required)")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise TaskFileError(path, line, "question", question, "non-empty text")
    choices = record["choices"]
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        raise TaskFileError(path, line, "choices", choices, f"a list of 2 to {len(LETTERS)} texts")
    for j, c in enumerate(choices):
        if not isinstance(c, str) or not c.strip():
            raise TaskFileError(path, line, f"choices[{j}]", c, "non-empty text")
    if len({c.strip() for c in choices}) != len(choices):
        raise TaskFileError(path, line, "choices", choices, "distinct texts")
    answer = _answer_index(record["answer"], choices, path, line)
    split = record.get("split", "test")
    if split not in ("test", "dev"):
        raise TaskFileError(path, line, "split", split, "'test' (evaluated) or 'dev' (demonstrations)")
    return MCItem(question, tuple(choices), answer, _read_id(record, path, line)), split


def _text_record(record: dict[str, Any], path: Path, line: int) -> str:
    for key in record:
        if key not in _TEXT_KEYS:
            raise TaskFileError(path, line, key, record[key], "no such field (allowed: id, text)")
    text = record["text"]
    if not isinstance(text, str) or not text.strip():
        raise TaskFileError(path, line, "text", text, "non-empty text")
    _read_id(record, path, line)
    return text


def load_task_file(
    path: str | Path,
    *,
    fewshot: int = 0,
    seed: int = 0,
    normalize: str = "tokens",
    window_chars: int = 1200,
    context_chars: int = 600,
) -> MultipleChoiceTask | TextTask:
    """Read a JSONL task file (format in the module docstring); the task is named after the file.

    >>> load_task_file("no/such/file.jsonl")
    Traceback (most recent call last):
    ...
    packllm_integrations.eval.errors.TaskFileError: no/such/file.jsonl: 'no/such/file.jsonl' is invalid: \
expected an existing JSONL task file
    """
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(path, 0, None, str(path), "an existing JSONL task file")
    kind: str | None = None
    tests: list[MCItem] = []
    dev: list[MCItem] = []
    texts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise TaskFileError(path, number, None, raw.strip(), f"one JSON object ({exc.msg})") from None
            if not isinstance(record, dict):
                raise TaskFileError(path, number, None, record, "a JSON object")
            this = "text" if "text" in record else "multiple_choice" if "question" in record else None
            if this is None:
                raise TaskFileError(path, number, None, record, "an object with 'question' (multiple choice) or 'text'")
            if kind is not None and this != kind:
                field_name = "text" if this == "text" else "question"
                raise TaskFileError(path, number, field_name, record[field_name], f"a {kind} record like line 1's")
            kind = this
            if kind == "text":
                texts.append(_text_record(record, path, number))
            else:
                item, split = _mc_record(record, path, number)
                (dev if split == "dev" else tests).append(item)
    if kind is None:
        raise TaskFileError(path, 0, None, str(path), "a file with at least one record")
    if kind == "text":
        return TextTask(path.stem, texts, window_chars=window_chars, context_chars=context_chars)
    if not tests:
        raise TaskFileError(path, 0, "split", "dev", "at least one 'test' question (all lines are 'dev')")
    try:
        return MultipleChoiceTask(path.stem, tests, fewshot=fewshot, demos=dev, seed=seed, normalize=normalize)
    except ConfigError as exc:
        if exc.parameter == "fewshot":
            raise TaskFileError(path, 0, "split", fewshot, exc.expected) from None
        raise
