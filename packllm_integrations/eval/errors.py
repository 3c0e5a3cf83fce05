"""Typed errors of the evaluation harness (all derive from :class:`~packllm_integrations.PackLLMError`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, PackLLMError

__all__ = ["TaskFileError", "DataNotFoundError", "MissingDependencyError"]


class TaskFileError(ConfigError):
    """A task file that cannot be read: the message names the file, the line and the field.

    ``field`` is None when the line as a whole is wrong (not JSON, not an object), and
    ``line`` is 0 when the file as a whole is wrong (missing, empty).

    >>> raise TaskFileError("tasks/geo.jsonl", 3, "answer", 7, "an index into 'choices' (0 to 3) or a letter A to D")
    Traceback (most recent call last):
    ...
    packllm_integrations.eval.errors.TaskFileError: tasks/geo.jsonl, line 3, field 'answer': 7 is invalid: \
expected an index into 'choices' (0 to 3) or a letter A to D
    """

    def __init__(self, path: str | Path, line: int, field: str | None, value: Any, expected: str) -> None:
        super().__init__(field or "line", value, expected)
        self.path = str(path)
        self.line = line
        self.field = field
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        where = self.path if line == 0 else f"{self.path}, line {line}"
        if field is not None:
            where += f", field {field!r}"
        self.args = (f"{where}: {shown} is invalid: expected {expected}",)


class DataNotFoundError(PackLLMError, FileNotFoundError):
    """Offline evaluation data that is not on this machine; the message says how to get it."""


class MissingDependencyError(PackLLMError, RuntimeError):
    """An optional package the harness needs for this call (matplotlib, lm-eval) is not installed."""
