"""Tasks whose items are answered by generating text: code (HumanEval pass@1) and short answers.

Unlike the scored tasks (:mod:`packllm_integrations.eval.tasks`), a generation task is run
once per method: the pack (or one member alone) generates greedily for every prompt, with
the task's stop strings, and the task grades the outputs. Every such task, and any other
task the suite runs itself (structured extraction, agent loops), follows :class:`RunTask`:
``run(engine, config)`` returns one value per item (:class:`Outcome`).

- :class:`CodeTask`: each completion is appended to its prompt, followed by the problem's
  tests, and run in a separate limited process (:mod:`packllm_integrations.eval.execution`);
  an item scores 1 when the tests pass (pass@1 with greedy decoding).
- :class:`ShortAnswerTask`: exact match of the first word (or the whole line) of the output
  against the accepted answers, case and surrounding punctuation ignored.

Example:
    >>> task = ShortAnswerTask("demo", ("Paris is to France as Rome is to",), answers=(("Italy",),))
    >>> task.grade([" Italy.\\n"]).values
    [1.0]
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..config import GenerationConfig
from ..engine import PackEngine
from ..errors import ConfigError
from ..events import GenerationResult
from .execution import run_programs

__all__ = ["Outcome", "RunTask", "GenerationTask", "CodeTask", "ShortAnswerTask", "normalize_answer"]


@dataclass
class Outcome:
    """One method's results on a run task: a value per item (0/1 for right/wrong), with what was generated.

    ``details`` holds, per item, why it scored what it did (a test's error, the parsed answer).
    """

    values: list[float]
    outputs: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    weights: list[dict[str, float]] = field(default_factory=list)
    """Per item, the fusion weights the pack gave its members (empty where a task does not record them)."""

    @property
    def score(self) -> float:
        """The task's metric: the mean value over items."""
        return sum(self.values) / len(self.values) if self.values else 0.0


@runtime_checkable
class RunTask(Protocol):
    """A task the suite runs once per method (generation, extraction, agent loops)."""

    name: str
    kind: str
    """``"generation"`` (or any other label for a report)."""
    metric: str
    """The metric's name (``"pass@1"``, ``"exact_match"``...)."""
    higher_is_better: bool
    binary: bool
    """Whether each item's value is 0 or 1 (then McNemar's test applies)."""

    def __len__(self) -> int:
        """The number of items."""
        ...

    def run(self, engine: PackEngine, config: GenerationConfig, *, batch_size: int, progress: bool) -> Outcome:
        """Answer every item with ``engine`` under ``config``; one value per item."""
        ...


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "an integer >= 1")


@dataclass(frozen=True)
class GenerationTask(ABC):
    """Greedy generation for each prompt, then :meth:`grade` (subclasses define it).

    Args:
        name: the task's name in reports.
        prompts: one prompt per item.
        max_new_tokens: most tokens generated per item.
        stop: stop strings (generation ends before the first one).
    """

    name: str
    prompts: Sequence[str]
    max_new_tokens: int = 32
    stop: Sequence[str] = ()
    kind: str = field(default="generation", init=False)
    metric: str = field(default="exact_match", init=False)
    higher_is_better: bool = field(default=True, init=False)
    binary: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        prompts = tuple(self.prompts) if isinstance(self.prompts, (list, tuple)) else self.prompts
        if not isinstance(prompts, tuple) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ConfigError("prompts", self.prompts, f"a non-empty list of non-empty prompts (task {self.name!r})")
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "stop", tuple(self.stop))
        _check_positive("max_new_tokens", self.max_new_tokens)

    def __len__(self) -> int:
        return len(self.prompts)

    @abstractmethod
    def grade(self, outputs: Sequence[str]) -> Outcome:
        """Each output's outcome, in prompt order."""

    def generate(
        self, engine: PackEngine, config: GenerationConfig, *, batch_size: int = 4, progress: bool = False
    ) -> list[str]:
        """Greedy outputs for every prompt (``batch_size`` prompts decoded together)."""
        return [r.text for r in self._results(engine, config, batch_size, progress)]

    def _results(
        self, engine: PackEngine, config: GenerationConfig, batch_size: int, progress: bool
    ) -> list[GenerationResult]:
        from tqdm.auto import tqdm

        _check_positive("batch_size", batch_size)
        settings = {"max_new_tokens": self.max_new_tokens, "stop": self.stop or None, "temperature": 0.0}
        results: list[GenerationResult] = []
        with tqdm(total=len(self.prompts), desc=self.name, unit="item", disable=not progress, leave=False) as bar:
            for start in range(0, len(self.prompts), batch_size):
                batch = list(self.prompts[start : start + batch_size])
                results += engine.generate_batch(batch, config, **settings)
                bar.update(len(batch))
        return results

    def run(
        self, engine: PackEngine, config: GenerationConfig, *, batch_size: int = 4, progress: bool = False
    ) -> Outcome:
        """Generate for every item, then grade; the outcome keeps each item's fusion weights."""
        results = self._results(engine, config, batch_size, progress)
        outcome = self.grade([r.text for r in results])
        outcome.weights = [dict(r.weights) for r in results]
        return outcome


@dataclass(frozen=True)
class CodeTask(GenerationTask):
    """Code generation graded by running tests (HumanEval's format).

    Each item's program is ``prompt + completion``, then ``tests[i]``, then
    ``check(entry_points[i])``; it passes when that program exits cleanly within ``timeout``
    seconds, run by :func:`~packllm_integrations.eval.execution.run_programs`.

    >>> task = CodeTask("demo", ("def add(a, b):\\n",), tests=("def check(f):\\n    assert f(1, 2) == 3\\n",),
    ...                 entry_points=("add",))
    >>> task.grade(["    return a + b\\n"]).values, task.grade(["    return a - b\\n"]).values
    ([1.0], [0.0])
    """

    tests: Sequence[str] = ()
    entry_points: Sequence[str] = ()
    timeout: float = 10.0
    workers: int = 2
    max_new_tokens: int = 384
    stop: Sequence[str] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
    metric: str = field(default="pass@1", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "tests", tuple(self.tests))
        object.__setattr__(self, "entry_points", tuple(self.entry_points))
        for name in ("tests", "entry_points"):
            if len(getattr(self, name)) != len(self.prompts):
                raise ConfigError(name, f"<{len(getattr(self, name))} values>", f"{len(self.prompts)}, one per prompt")
        _check_positive("workers", self.workers)

    def program(self, index: int, completion: str) -> str:
        """The program that tests ``completion`` for item ``index``."""
        return f"{self.prompts[index]}{completion}\n\n{self.tests[index]}\n\ncheck({self.entry_points[index]})\n"

    def grade(self, outputs: Sequence[str]) -> Outcome:
        if len(outputs) != len(self.prompts):
            raise ConfigError("outputs", f"<{len(outputs)} outputs>", f"{len(self.prompts)}, one per prompt")
        programs = [self.program(i, out) for i, out in enumerate(outputs)]
        results = run_programs(programs, timeout=self.timeout, workers=self.workers)
        details = [
            r.status if r.passed else f"{r.status}: {r.detail.splitlines()[-1] if r.detail else ''}" for r in results
        ]
        return Outcome([1.0 if r.passed else 0.0 for r in results], list(outputs), details)


_STRIP = string.punctuation + string.whitespace + "“”‘’«»"


def normalize_answer(text: str, first_word: bool = True) -> str:
    """An answer as compared: the first word (or the first line), lower case, punctuation stripped.

    >>> normalize_answer(" Italy.\\nNext"), normalize_answer("New York City!", first_word=False)
    ('italy', 'new york city')
    """
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    if first_word:
        words = line.split()
        line = words[0] if words else ""
    return line.strip(_STRIP).lower()


@dataclass(frozen=True)
class ShortAnswerTask(GenerationTask):
    """Short answers by exact match: item ``i`` is right when its normalised output is one of ``answers[i]``.

    ``first_word`` compares the output's first word (single-word answers); else its first line.
    """

    answers: Sequence[Sequence[str]] = ()
    first_word: bool = True
    max_new_tokens: int = 8
    stop: Sequence[str] = ("\n",)

    def __post_init__(self) -> None:
        super().__post_init__()
        answers = tuple(tuple(a) for a in self.answers)
        if len(answers) != len(self.prompts) or not all(answers):
            raise ConfigError("answers", f"<{len(answers)} items>", f"{len(self.prompts)} non-empty answer lists")
        object.__setattr__(self, "answers", answers)

    def grade(self, outputs: Sequence[str]) -> Outcome:
        if len(outputs) != len(self.prompts):
            raise ConfigError("outputs", f"<{len(outputs)} outputs>", f"{len(self.prompts)}, one per prompt")
        values, details = [], []
        for out, accepted in zip(outputs, self.answers, strict=True):
            said = normalize_answer(out, self.first_word)
            right = said in {normalize_answer(a, self.first_word) for a in accepted}
            values.append(1.0 if right else 0.0)
            details.append(said)
        return Outcome(values, list(outputs), details)
