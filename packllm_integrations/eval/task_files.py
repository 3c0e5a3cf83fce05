"""JSONL task files: the format, and :func:`load_task_file`, which reads one into a task.

A task file holds one JSON object per line (blank lines skipped); the task is named after
the file::

    {"question": "How many legs do horses have?", "choices": ["two", "four", "six"], "answer": 1}
    {"question": "What colour is the sky?", "choices": ["green", "blue"], "answer": "B", "split": "dev"}

- ``question``: non-empty text; ``choices``: two to 26 distinct non-empty texts;
  ``answer``: the 0-based index of the right choice, or its letter (``"A"``...);
  ``split`` (optional): ``"test"`` (default, evaluated) or ``"dev"`` (demonstrations for
  k-shot); ``id`` (optional): a string or integer shown in per-item results.

Such a file is a :class:`~packllm_integrations.eval.multiple_choice.MultipleChoiceTask`; or,
for bits per byte (a :class:`~packllm_integrations.eval.tasks.TextTask`), one document per line::

    {"text": "The first document ...", "id": "doc-1"}

A file holds one kind of record. Any other key, a wrong type or a bad value raises
:class:`~packllm_integrations.eval.errors.TaskFileError` naming the file, line and field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .errors import TaskFileError
from .multiple_choice import LETTERS, MCItem, MultipleChoiceTask
from .tasks import TextTask

__all__ = ["load_task_file"]


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
