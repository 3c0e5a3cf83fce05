"""Multiple-choice accuracy: the question, the authors' prompt and the task, zero-shot or k-shot.

:class:`MultipleChoiceTask` follows the authors' format (PACKLLM.md section 5). The context is
``"Question: {q}\\nChoices:\\nA. ...\\nB. ...\\nAnswer:"`` (after ``k`` solved demonstrations
for k-shot), each option is scored as the continuation ``" " + option text``, and the
option with the lowest length-normalised negative log-likelihood is the prediction.

Example:
    >>> task = MultipleChoiceTask("demo", [MCItem("2 + 2 =", ("3", "4"), 1)])
    >>> task.pairs()[1]
    ('Question: 2 + 2 =\\nChoices:\\nA. 3\\nB. 4\\nAnswer:', ' 4')
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError
from .tasks import Scored

__all__ = [
    "MCItem",
    "MultipleChoiceTask",
    "format_question",
    "NORMALIZATIONS",
]

LETTERS = string.ascii_uppercase
NORMALIZATIONS = ("tokens", "bytes", "none")
"""How an option's negative log-likelihood is normalised: per token (the authors'), per byte, or not at all."""


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
