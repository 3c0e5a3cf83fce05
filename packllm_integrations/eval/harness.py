"""The evaluation loop: run tasks over a pack with several methods side by side.

Every pack method (a fused weighting, or a member inside the pack; see
:mod:`packllm_integrations.eval.methods`) is a :class:`~packllm_integrations.GenerationConfig`,
and one call of :meth:`PackEngine.score_many <packllm_integrations.PackEngine.score_many>`
scores a batch of pairs under all of them from one forward pass per member. A member alone
(``"native"``) is scored as a one-member pack, except where the pack chose it as the
reference: its tokens and logits are then exactly the pack's, so the pack run's result is
reused. The numbers come back as an :class:`~packllm_integrations.eval.results.EvalReport`.

Example:
    >>> from packllm_integrations import PackEngine  # doctest: +SKIP
    >>> from packllm_integrations.eval import evaluate, bigbench_task, lee_task
    >>> engine = PackEngine.from_models()  # doctest: +SKIP
    >>> report = evaluate(engine, [bigbench_task("general_knowledge", limit=60), lee_task()])  # doctest: +SKIP
    >>> report.tasks[0].scores["opt"]  # doctest: +SKIP
    0.55
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..engine import PackEngine
from ..errors import ConfigError
from ..events import ScoreResult
from .methods import Method, one_hot, standard_methods
from .results import EvalReport, TaskResult
from .tasks import Task

__all__ = ["evaluate"]


def _chunks(n: int, size: int, starts: Sequence[int] = ()) -> list[range]:
    """Batches of at most ``size`` pairs (more only for an item that has more) that keep each
    item's pairs together (``starts``: each item's first pair), so its context is read once.

    >>> _chunks(9, 4, [0, 3, 6])
    [range(0, 3), range(3, 6), range(6, 9)]
    >>> _chunks(5, 2)
    [range(0, 2), range(2, 4), range(4, 5)]
    """
    bounds = sorted({0, *starts, n} if starts else {*range(0, n, size), n})
    out: list[range] = []
    begin = 0
    for here, following in zip(bounds, bounds[1:], strict=False):
        if following - begin > size and here > begin:
            out.append(range(begin, here))
            begin = here
    if begin < n:
        out.append(range(begin, n))
    return out


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
        tasks: :class:`~packllm_integrations.eval.multiple_choice.MultipleChoiceTask` and
            :class:`~packllm_integrations.eval.tasks.TextTask` objects (or any :class:`Task`).
        methods: the columns (default: :func:`standard_methods`).
        batch_size: pairs per engine call (rows are padded to the longest); a batch holds whole
            items (a question's options together, so its context is read once).
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
    tasks = checked_tasks(tasks)
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
            configs.append(one_hot(engine, k, reference=base.reference))
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
            for chunk in _chunks(len(pairs), batch_size, task.groups()):
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


def checked_tasks(tasks: Iterable[Any]) -> list[Any]:
    """``tasks`` as a list: at least one, with distinct names (else a :class:`ConfigError`)."""
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("tasks", [], "at least one task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError("tasks", names, "tasks with distinct names")
    return tasks
