"""The suite's tasks by name: the registry, the built-in tasks and :func:`build_tasks`.

Built-in tasks (``packllm eval suite --list``): ``humaneval``, ``medmcqa``, ``logiqa``,
``socialiqa``, ``analogies``, ``prose`` and ``code`` (the default run), ``hitom`` and
``tomi``. :func:`register_task` adds others (the suite's script adds structured extraction
and agent loops that way).

Example:
    >>> [t.name for t in build_tasks(["code"], limit=2)]
    ['code']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["SUITE_TASKS", "DEFAULT_TASKS", "SuiteTask", "register_task", "build_tasks"]


@dataclass(frozen=True)
class SuiteTask:
    """A task the suite can build by name: ``build(limit, seed)`` returns a scored task
    (:class:`~packllm_integrations.eval.tasks.Task`) or a :class:`~packllm_integrations.eval.generation.RunTask`.
    """

    name: str
    build: Callable[[int | None, int], Any]
    description: str
    default: bool = False


SUITE_TASKS: dict[str, SuiteTask] = {}
"""Every task the suite knows, by name (:func:`register_task` adds more)."""

_TEXT_WINDOW, _TEXT_CONTEXT, _TEXT_WINDOWS = 1200, 600, 10


def register_task(name: str, build: Callable[[int | None, int], Any], description: str, default: bool = False) -> None:
    """Make task ``name`` available to the suite (replacing one of that name).

    >>> from packllm_integrations.eval.generation import ShortAnswerTask
    >>> register_task("capitals", lambda limit, seed: ShortAnswerTask("capitals", ("France's capital:",),
    ...               answers=(("Paris",),)), "one question")
    >>> build_tasks(["capitals"])[0].name
    'capitals'
    >>> del SUITE_TASKS["capitals"]
    """
    if not isinstance(name, str) or not name or "," in name or any(c.isspace() for c in name):
        raise ConfigError("name", name, "a task name without commas or spaces")
    if not callable(build):
        raise ConfigError("build", build, "a function (limit, seed) -> task")
    SUITE_TASKS[name] = SuiteTask(name, build, description, default)


def _mc(name: str) -> Callable[[int | None, int], Any]:
    def build(limit: int | None, seed: int) -> Any:
        from .suite_data import evals_mc_task

        return evals_mc_task(name, limit=limit, seed=seed)

    return build


def _prose(limit: int | None, seed: int) -> Any:
    from .data import lee_task

    windows = limit or _TEXT_WINDOWS
    chars = _TEXT_CONTEXT + windows * _TEXT_WINDOW
    return lee_task(max_chars=chars, window_chars=_TEXT_WINDOW, context_chars=_TEXT_CONTEXT, name="prose")


def _code(limit: int | None, seed: int) -> Any:
    from .data import stdlib_code_task

    windows = limit or _TEXT_WINDOWS
    modules = ("textwrap", "shlex")
    chars = len(modules) * (_TEXT_CONTEXT + math.ceil(windows / len(modules)) * _TEXT_WINDOW)
    return stdlib_code_task(
        modules, max_chars=chars, window_chars=_TEXT_WINDOW, context_chars=_TEXT_CONTEXT, name="code"
    )


def _humaneval(limit: int | None, seed: int) -> Any:
    from .suite_data import humaneval_task

    return humaneval_task(limit=limit, seed=seed)


def _analogies(limit: int | None, seed: int) -> Any:
    from .suite_data import analogy_task

    return analogy_task(limit=limit or 300, seed=seed)


def _tomi(limit: int | None, seed: int) -> Any:
    from .suite_data import tomi_task

    return tomi_task(limit=limit or 300, seed=seed)


for _name, _build, _doc, _default in (
    ("humaneval", _humaneval, "HumanEval pass@1: 164 Python problems, greedy, tests run in a limited process", True),
    ("medmcqa", _mc("medmcqa"), "medical exam multiple choice, 4 options (evals wheel; all 299 readable items)", True),
    ("logiqa", _mc("logiqa"), "logical reading multiple choice, 4 options (evals wheel; 300 of 1,354)", True),
    ("socialiqa", _mc("socialiqa"), "social commonsense multiple choice, 3 options (evals wheel; 300 of 2,224)", True),
    ("analogies", _analogies, "word analogies, exact-match one-word answers (gensim; 300 of 19,544)", True),
    ("prose", _prose, "bits per byte on news prose (gensim's Lee corpus; 10 windows of 1,200 characters)", True),
    ("code", _code, "bits per byte on Python code (the standard library; 10 windows of 1,200 characters)", True),
    ("hitom", _mc("hitom"), "theory-of-mind stories, 15 options (evals wheel; 200 of 600)", False),
    ("tomi", _tomi, "theory-of-mind stories, exact-match one-word answers (evals wheel; 300 of 5,993)", False),
):
    register_task(_name, _build, _doc, _default)

DEFAULT_TASKS: tuple[str, ...] = tuple(name for name, spec in SUITE_TASKS.items() if spec.default)
"""The tasks a suite run has when none are named."""


def build_tasks(names: Sequence[str] | None = None, *, limit: int | None = None, seed: int = 0) -> list[Any]:
    """The tasks named (default: :data:`DEFAULT_TASKS`), each capped at ``limit`` items.

    Unknown names raise :class:`ConfigError` before any data is read.
    """
    names = list(DEFAULT_TASKS if names is None else names)
    if not names:
        raise ConfigError("tasks", names, f"at least one of {', '.join(SUITE_TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError("limit", limit, "an integer >= 1 or None")
    for name in names:
        if name not in SUITE_TASKS:
            raise ConfigError("tasks", name, f"one of {', '.join(SUITE_TASKS)}")
    if len(set(names)) != len(names):
        raise ConfigError("tasks", names, "distinct task names")
    return [SUITE_TASKS[name].build(limit, seed) for name in names]
