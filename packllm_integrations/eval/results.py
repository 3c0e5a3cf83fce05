"""The measured numbers of a run: one :class:`TaskResult` per task, gathered in an :class:`EvalReport`.

An :class:`EvalReport` is saved and loaded as JSON, and reports of several runs over the
same members merge into one; :mod:`packllm_integrations.eval.report` renders them as tables
and plots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["TaskResult", "EvalReport"]


@dataclass
class TaskResult:
    """One task's measured numbers under every method.

    ``scores`` maps each method to the task's metric; ``per_item`` to each item's prediction
    (multiple choice) or bits per byte (text windows). ``weights`` holds, per pack method,
    the fusion weights of each item (of its first pair); ``references`` the reference member
    of each item and ``perplexity`` each member's prompt perplexity per item (from the pack).
    Runs of the suite (:mod:`packllm_integrations.eval.suite`) also fill ``method_seconds``
    (each method's wall time on the task), ``item_weights`` (each item's weight in the
    metric: a window's bytes for bits per byte) and, for generation tasks, ``outputs`` and
    ``details`` (what each method generated and how each item was graded).
    """

    task: str
    kind: str
    metric: str
    higher_is_better: bool
    items: int
    pairs: int
    scores: dict[str, float]
    per_item: dict[str, list[Any]] = field(default_factory=dict)
    weights: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    perplexity: list[dict[str, float | None]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    scored_bytes: int | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    method_seconds: dict[str, float] = field(default_factory=dict)
    item_weights: list[float] = field(default_factory=list)
    outputs: dict[str, list[str]] = field(default_factory=dict)
    details: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        """A copy built from :func:`dataclasses.asdict` of a result (or its JSON)."""
        return cls(**json.loads(json.dumps(data)))

    def join(self, other: TaskResult) -> TaskResult:
        """Add ``other``'s methods (the same task, items and answers, no method twice); returns self."""

        def key(t: TaskResult) -> tuple[Any, ...]:
            return t.task, t.kind, t.metric, t.items, t.answers

        if key(self) != key(other):
            raise ConfigError("reports", f"{self.task} / {other.task}", "runs of one task over the same items")
        twice = sorted(set(self.scores) & set(other.scores))
        if twice:
            raise ConfigError("reports", f"{self.task}: {', '.join(twice)}", "distinct task names or distinct methods")
        for name in ("scores", "per_item", "weights", "method_seconds", "outputs", "details"):
            getattr(self, name).update(getattr(other, name))
        if not self.references and other.references:
            self.references, self.perplexity = other.references, other.perplexity
        self.seconds = round(self.seconds + other.seconds, 1)
        return self

    def best(self) -> str:
        """The method with the best score (ties: the first in column order)."""
        sign = -1.0 if self.higher_is_better else 1.0
        return min(self.scores, key=lambda m: sign * self.scores[m])

    def mean_weights(self, method: str) -> dict[str, float]:
        """Each member's mean weight under ``method`` over the task's items."""
        rows = self.weights.get(method, [])
        if not rows:
            return {}
        return {name: sum(r[name] for r in rows) / len(rows) for name in rows[0]}


@dataclass
class EvalReport:
    """The results of one run: members, methods and one :class:`TaskResult` per task."""

    members: list[str]
    methods: list[dict[str, Any]]
    tasks: list[TaskResult]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def method_names(self) -> list[str]:
        return [m["name"] for m in self.methods]

    def task(self, name: str) -> TaskResult:
        """The result of task ``name``."""
        for t in self.tasks:
            if t.task == name:
                return t
        raise ConfigError("task", name, f"one of {', '.join(t.task for t in self.tasks)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "methods": self.methods,
            "settings": self.settings,
            "tasks": [asdict(t) for t in self.tasks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        return cls(
            members=list(data["members"]),
            methods=list(data["methods"]),
            tasks=[TaskResult.from_dict(t) for t in data["tasks"]],
            settings=dict(data.get("settings", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """Read a report written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def rename(self, old: str, new: str, settings: dict[str, Any] | None = None) -> EvalReport:
        """Call method ``old`` ``new`` everywhere in the report; returns self.

        ``settings`` (optional) records what the method ran with, replacing its entry in
        ``settings["configs"]`` and the matching fields of its method record: for a run whose
        method meant "the defaults" under defaults that have changed since.

        >>> report.rename("pack", "paper", {"tau": 1.0, "reference_by": "token"})  # doctest: +SKIP
        """
        if old not in self.method_names:
            raise ConfigError("method", old, f"one of {', '.join(self.method_names)}")
        if new != old and new in self.method_names:
            raise ConfigError("method", new, "a name no other method of the report has")
        for record in self.methods:
            if record["name"] == old:
                record["name"] = new
                record.update(settings or {})
        for task in self.tasks:
            for name in ("scores", "per_item", "weights", "method_seconds", "outputs", "details"):
                table = getattr(task, name)
                if old in table:
                    table[new] = table.pop(old)
        # a merged report keeps each part's settings too, and the next merge reads its configs there
        for holder in [self.settings, *(self.settings.get("parts") or [])]:
            configs = holder.get("configs") if isinstance(holder, dict) else None
            if isinstance(configs, dict) and (old in configs or (settings is not None and holder is self.settings)):
                config = configs.pop(old, {})
                configs[new] = dict(settings) if settings is not None else config
        return self

    @classmethod
    def merge(cls, reports: Sequence[EvalReport]) -> EvalReport:
        """One report holding the tasks of several runs over the same members.

        Methods keep the first run's order; a method missing from a run has no score there.
        A task in several runs (the same items, each run with other methods) gets every
        run's methods; the same method twice on one task is an error.
        """
        if not reports:
            raise ConfigError("reports", [], "at least one report")
        members = reports[0].members
        methods: list[dict[str, Any]] = []
        for report in reports:
            if report.members != members:
                raise ConfigError("reports", report.members, f"reports over the same members ({', '.join(members)})")
            methods += [m for m in report.methods if m["name"] not in {x["name"] for x in methods}]
        tasks: dict[str, TaskResult] = {}
        for task in (t for r in reports for t in r.tasks):
            if task.task in tasks:
                tasks[task.task].join(task)
            else:
                tasks[task.task] = TaskResult.from_dict(asdict(task))
        return cls(members, methods, list(tasks.values()), {"merged": [r.settings for r in reports]})
