"""Run tasks over a pack with several methods side by side, from one forward pass per member.

Every fused method (``uniform``, ``top1``, ``sim``, ``opt``, ``fixed``) is a
:class:`~packllm_integrations.GenerationConfig`, and one call of
:meth:`PackEngine.score_many <packllm_integrations.PackEngine.score_many>` scores a batch of
pairs under all of them from one forward pass per member. A member alone is scored one of
two ways:

- ``"native"`` (default): as a one-member pack, reading its own tokenization of the text:
  the honest single-model baseline. Where the pack chose that member as the reference, its
  tokens and logits are exactly the pack's, so the pack run's result is reused and no extra
  forward pass is made.
- ``"pack"``: fixed one-hot weights inside the pack (free). A member that is not the
  prompt's reference is then scored on the reference tokens translated to its vocabulary
  (MinED), which is not how the member reads text on its own; such methods are named
  ``"<member>[pack]"``.

Example:
    >>> from packllm_integrations import PackEngine  # doctest: +SKIP
    >>> from packllm_integrations.eval import evaluate, bigbench_task, lee_task
    >>> engine = PackEngine.from_models()  # doctest: +SKIP
    >>> report = evaluate(engine, [bigbench_task("general_knowledge", limit=60), lee_task()])  # doctest: +SKIP
    >>> report.tasks[0].scores["opt"]  # doctest: +SKIP
    0.55
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import GenerationConfig
from ..engine import PackEngine
from ..errors import ConfigError
from ..events import ScoreResult
from .tasks import Task

__all__ = [
    "FUSED_METHODS",
    "MEMBER_MODES",
    "Method",
    "TaskResult",
    "EvalReport",
    "standard_methods",
    "evaluate",
]

FUSED_METHODS = ("uniform", "top1", "sim", "opt")
"""The pack's weightings evaluated by default (``fixed`` joins them when weights are given)."""
MEMBER_MODES = ("native", "pack", "both", "none")
"""How members alone are evaluated: see the module docstring (``both``: both kinds; ``none``: not at all)."""


@dataclass(frozen=True)
class Method:
    """One column of the results.

    Args:
        name: the column's name.
        kind: ``"member"`` (a member alone, its own tokenizer), ``"member-in-pack"``
            (one-hot weights inside the pack) or ``"fused"`` (a pack weighting).
        config: the pack config for ``member-in-pack`` and ``fused`` methods.
        member: the member's name for the two member kinds.

    >>> Method("sim", "fused", GenerationConfig(weighting="sim")).describe()["weighting"]
    'sim'
    """

    name: str
    kind: str
    config: GenerationConfig | None = None
    member: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("member", "member-in-pack", "fused"):
            raise ConfigError("kind", self.kind, "'member', 'member-in-pack' or 'fused'")
        if (self.kind == "member") != (self.config is None):
            raise ConfigError("config", self.config, "None for a member alone, else a GenerationConfig")
        if self.kind != "fused" and not self.member:
            raise ConfigError("member", self.member, "a member name")

    def describe(self) -> dict[str, Any]:
        """The method as plain data (saved with the results)."""
        cfg = self.config
        return {
            "name": self.name,
            "kind": self.kind,
            "member": self.member,
            "weighting": cfg.weighting if cfg else None,
            "weights": list(cfg.weights) if cfg and cfg.weights else None,
            "tau": cfg.tau if cfg else None,
            "reference": cfg.reference if cfg else None,
            "scoring": getattr(cfg, "scoring", None) if cfg else None,
            "alignment": getattr(cfg, "alignment", None) if cfg else None,
        }


def _one_hot(engine: PackEngine, index: int, **overrides: Any) -> GenerationConfig:
    weights = tuple(1.0 if j == index else 0.0 for j in range(len(engine.members)))
    return engine.resolve(weighting="fixed", weights=weights, **overrides)


def standard_methods(
    engine: PackEngine,
    methods: Sequence[str] = ("members", *FUSED_METHODS),
    *,
    fixed: Sequence[float] | None = None,
    members: str = "native",
    scorings: Sequence[str] | None = None,
    alignments: Sequence[str] | None = None,
    **overrides: Any,
) -> list[Method]:
    """The methods to compare: each member alone, then the pack's weightings.

    Args:
        engine: the pack.
        methods: ``"members"`` and weighting names, in column order; ``"fixed"`` is added at
            the end when ``fixed`` weights are given.
        fixed: member weights for the ``fixed`` method (renormalised).
        members: how members alone are scored: one of :data:`MEMBER_MODES`.
        scorings: values of the config's ``scoring`` field to compare side by side (all
            from the same forward passes): ``top1``, ``sim`` and ``opt`` are repeated for each,
            the first keeping the plain names and the others named ``"sim[own]"``...;
            ``uniform`` and ``fixed`` do not depend on it and appear once.
        alignments: values of the config's ``alignment`` field to compare side by side;
            every fused method is repeated for each (``"sim[natural]"``,
            ``"sim[natural,own]"`` with scorings too).
        **overrides: config fields shared by every fused method (``reference``, ``tau``...).

    >>> [m.name for m in standard_methods(engine)]  # doctest: +SKIP
    ['smollm2-135m', 'gemma3-270m', 'qwen2.5-coder-0.5b', 'uniform', 'top1', 'sim', 'opt']
    """
    if members not in MEMBER_MODES:
        raise ConfigError("members", members, f"one of {', '.join(MEMBER_MODES)}")
    for key in ("weighting", "weights"):
        if key in overrides:
            raise ConfigError(key, overrides[key], "no value here: choose weightings with 'methods' and 'fixed'")
    choices = (("scoring", scorings, "reference', 'own"), ("alignment", alignments, "mined', 'natural"))
    for key, values, example in choices:
        if values is None:
            continue
        if key in overrides:
            raise ConfigError(key, overrides[key], f"no value here when '{key}s' is given")
        if isinstance(values, str) or not values or len(set(values)) != len(values):
            raise ConfigError(f"{key}s", values, f"a list of distinct {key} modes, e.g. ['{example}']")
    kinds: list[str | None] = list(alignments) if alignments is not None else [None]
    modes: list[str | None] = list(scorings) if scorings is not None else [None]
    names = list(methods)
    if fixed is not None and "fixed" not in names:
        names.append("fixed")
    out: list[Method] = []
    for name in names:
        if name == "members":
            for k, member in enumerate(engine.names):
                if members in ("native", "both"):
                    out.append(Method(member, "member", member=member))
                if members in ("pack", "both"):
                    out.append(Method(f"{member}[pack]", "member-in-pack", _one_hot(engine, k, **overrides), member))
        elif name in ("fixed", "uniform") or name in FUSED_METHODS:
            if name == "fixed" and fixed is None:
                raise ConfigError("fixed", None, "member weights when the 'fixed' method is asked for")
            extra = {"weights": tuple(fixed)} if name == "fixed" and fixed is not None else {}
            variants = [(a, None) for a in kinds] if name in ("fixed", "uniform") else _variants(kinds, modes)
            for i, (kind, mode) in enumerate(variants):
                tags = [v for v, given in ((kind, alignments), (mode, scorings)) if given is not None and v is not None]
                label = name if i == 0 or not tags else f"{name}[{','.join(tags)}]"
                settings = {**overrides, **extra}
                if kind is not None:
                    settings["alignment"] = kind
                if mode is not None:
                    settings["scoring"] = mode
                out.append(Method(label, "fused", engine.resolve(weighting=name, **settings)))
        else:
            raise ConfigError("methods", name, f"'members', 'fixed' or one of {', '.join(FUSED_METHODS)}")
    seen = [m.name for m in out]
    if len(set(seen)) != len(seen):
        raise ConfigError("methods", seen, "distinct methods")
    return out


def _variants(kinds: Sequence[str | None], modes: Sequence[str | None]) -> list[tuple[str | None, str | None]]:
    return [(kind, mode) for kind in kinds for mode in modes]


@dataclass
class TaskResult:
    """One task's measured numbers under every method.

    ``scores`` maps each method to the task's metric; ``per_item`` to each item's prediction
    (multiple choice) or bits per byte (text windows). ``weights`` holds, per pack method,
    the fusion weights of each item (of its first pair); ``references`` the reference member
    of each item and ``perplexity`` each member's prompt perplexity per item (from the pack).
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
            tasks=[TaskResult(**t) for t in data["tasks"]],
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

    @classmethod
    def merge(cls, reports: Sequence[EvalReport]) -> EvalReport:
        """One report holding the tasks of several runs over the same members.

        Methods keep the first run's order; a method missing from a run has no score there.
        """
        if not reports:
            raise ConfigError("reports", [], "at least one report")
        members = reports[0].members
        methods: list[dict[str, Any]] = []
        for report in reports:
            if report.members != members:
                raise ConfigError("reports", report.members, f"reports over the same members ({', '.join(members)})")
            methods += [m for m in report.methods if m["name"] not in {x["name"] for x in methods}]
        tasks = [t for r in reports for t in r.tasks]
        names = [t.task for t in tasks]
        if len(set(names)) != len(names):
            raise ConfigError("reports", names, "reports with distinct task names")
        return cls(members, methods, tasks, {"merged": [r.settings for r in reports]})


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def evaluate(
    engine: PackEngine,
    tasks: Sequence[Task],
    methods: Sequence[Method] | None = None,
    *,
    batch_size: int = 8,
    weights_on: str = "context",
    progress: bool = True,
    reuse: bool = True,
) -> EvalReport:
    """Score ``tasks`` under every method and compute each task's metric.

    Args:
        engine: the pack.
        tasks: :class:`~packllm_integrations.eval.tasks.MultipleChoiceTask` and
            :class:`~packllm_integrations.eval.tasks.TextTask` objects (or any :class:`Task`).
        methods: the columns (default: :func:`standard_methods`).
        batch_size: pairs per engine call (rows are padded to the longest).
        weights_on: ``"context"`` (weights from the prompt only, the default) or ``"full"``
            (from prompt and continuation, as the authors' code scored options).
        progress: show a progress bar with an ETA (on standard error).
        reuse: reuse the pack's forward pass for a member alone where it was the reference
            (exactly the same tokens and logits); False recomputes every member alone.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "an integer >= 1")
    if weights_on not in ("context", "full"):
        raise ConfigError("weights_on", weights_on, "'context' or 'full'")
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("tasks", [], "at least one task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError("tasks", names, "tasks with distinct names")
    methods = list(methods) if methods is not None else standard_methods(engine)
    if not methods:
        raise ConfigError("methods", [], "at least one method")
    for m in methods:
        if m.member is not None and m.member not in engine.names:
            raise ConfigError("methods", m.name, f"methods over this pack's members ({', '.join(engine.names)})")
    pack_methods = [m for m in methods if m.config is not None]
    natives = [m for m in methods if m.kind == "member"]
    configs = [m.config for m in pack_methods if m.config is not None]
    # Hidden one-hot configs let a member alone reuse the pack's pass where it was the reference.
    reusable = {}
    if reuse and natives and configs:
        base = configs[0]
        for m in natives:
            k = engine.names.index(m.member or "")
            reusable[m.name] = len(configs)
            configs.append(_one_hot(engine, k, reference=base.reference))
    solo = {m.name: PackEngine([engine.members[engine.names.index(m.member or "")]], progress=False) for m in natives}

    all_pairs = [t.pairs() for t in tasks]
    total = sum(len(c) + len(x) for pairs in all_pairs for c, x in pairs)
    results: list[TaskResult] = []
    started = time.perf_counter()
    with tqdm(total=total, unit="char", unit_scale=True, disable=not progress, dynamic_ncols=True) as bar:
        for task, pairs in zip(tasks, all_pairs, strict=True):
            bar.set_description(task.name)
            t0 = time.perf_counter()
            scored: dict[str, list[ScoreResult | None]] = {m.name: [None] * len(pairs) for m in methods}
            hidden: dict[str, list[ScoreResult | None]] = {name: [None] * len(pairs) for name in reusable}
            extra = 0
            for chunk in _chunks(len(pairs), batch_size):
                batch = [pairs[i] for i in chunk]
                if configs:
                    outs = engine.score_many(batch, configs, weights_on=weights_on)
                    for m, out in zip(pack_methods, outs, strict=False):
                        for i, r in zip(chunk, out, strict=True):
                            scored[m.name][i] = r
                    for name, c in reusable.items():
                        for i, r in zip(chunk, outs[c], strict=True):
                            hidden[name][i] = r
                for m in natives:
                    need = [
                        i
                        for i in chunk
                        if m.name not in reusable or (h := hidden[m.name][i]) is None or h.reference != m.member
                    ]
                    for i in chunk:
                        if i not in need:
                            scored[m.name][i] = hidden[m.name][i]
                    if need:
                        out = solo[m.name].score([pairs[i] for i in need], weights_on=weights_on)
                        extra += len(need)
                        for i, r in zip(need, out, strict=True):
                            scored[m.name][i] = r
                bar.update(sum(len(c) + len(x) for c, x in batch))
                bar.set_postfix_str(f"pairs {chunk.stop}/{len(pairs)}")
            results.append(_task_result(task, methods, scored, time.perf_counter() - t0, extra))
    settings = {
        "weights_on": weights_on,
        "batch_size": batch_size,
        "reuse": reuse,
        "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
    }
    return EvalReport(engine.names, [m.describe() for m in methods], results, settings)


def _task_result(
    task: Task, methods: Sequence[Method], scored: dict[str, list[ScoreResult | None]], seconds: float, extra: int
) -> TaskResult:
    scores: dict[str, float] = {}
    per_item: dict[str, list[Any]] = {}
    for m in methods:
        rows = scored[m.name]
        if any(r is None for r in rows):  # every pair is scored by every method above
            raise RuntimeError(f"method {m.name!r} left pairs of task {task.name!r} unscored")
        value, records = task.score([r for r in rows if r is not None])
        scores[m.name], per_item[m.name] = float(value), records
    starts = task.groups()
    weights: dict[str, list[dict[str, float]]] = {}
    references: list[str] = []
    perplexity: list[dict[str, float | None]] = []
    for m in methods:
        if m.config is None:
            continue
        firsts = [scored[m.name][s] for s in starts]
        weights[m.name] = [dict(r.weights) for r in firsts if r is not None]
        if not references:
            references = [r.reference for r in firsts if r is not None]
            perplexity = [dict(r.prompt_perplexity) for r in firsts if r is not None]
    settings: dict[str, Any] = {"solo_pairs": extra}
    for key in ("fewshot", "normalize", "seed", "window_chars", "context_chars"):
        if hasattr(task, key):
            settings[key] = getattr(task, key)
    items = getattr(task, "items", None)
    return TaskResult(
        task=task.name,
        kind=task.kind,
        metric=task.metric,
        higher_is_better=task.higher_is_better,
        items=len(starts),
        pairs=len(scored[methods[0].name]),
        scores=scores,
        per_item=per_item,
        weights=weights,
        references=references,
        perplexity=perplexity,
        answers=[i.answer for i in items] if items is not None else [],
        scored_bytes=getattr(task, "scored_bytes", None),
        seconds=round(seconds, 1),
        settings=settings,
    )
