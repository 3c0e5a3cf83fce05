"""The evaluation suite: every method and every member on tasks users run, with paired significance.

The suite runs each task once per method (each member alone, and each pack method: a
:class:`~packllm_integrations.GenerationConfig` named on the command line, e.g. ``sim``,
``opt`` or ``mined:weighting=sim,alignment=mined``), timing each run, then compares every
method with the best member alone on the same items (:func:`compare`): a seeded paired
bootstrap interval of the difference and, for right/wrong items, McNemar's exact test.
This module is the runner; the tasks are in :mod:`.suite_tasks`, methods from specs in
:mod:`.method_specs` and the comparisons in :mod:`.comparison`.

Tasks (:data:`SUITE_TASKS`; ``packllm eval suite --list``):

- ``humaneval``: HumanEval pass@1, greedy, tests run in a separate limited process;
- ``medmcqa``, ``logiqa``, ``socialiqa`` (and ``hitom``): multiple choice from the evals wheel;
- ``analogies`` (gensim's word analogies) and ``tomi``: exact-match short answers;
- ``prose`` and ``code``: bits per byte on news prose and on Python code, and their pooled
  mixture ``prose+code`` as its own row (computed from the same windows, no extra pass).

A method whose fusion only scores (``sequence``) runs the scored tasks and is left out of
the generation tasks (and so of the mean over tasks that include one).

Other tasks join through :func:`register_task` (the suite's script adds structured
extraction and agent loops that way). ``limit`` caps the items of every task (for a
quick run); each task otherwise uses its own size.

Example:
    >>> from packllm_integrations import PackEngine  # doctest: +SKIP
    >>> from packllm_integrations.eval.suite import build_tasks, parse_methods, run_suite, compare
    >>> engine = PackEngine.from_models()  # doctest: +SKIP
    >>> report = run_suite(engine, build_tasks(["medmcqa", "prose", "code"], limit=20),
    ...                    parse_methods(engine, ["sim", "opt"]))  # doctest: +SKIP
    >>> [(c.task, c.method, c.difference.low) for c in compare(report)]  # doctest: +SKIP
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ..config import TOKEN_FUSIONS, GenerationConfig
from ..engine import PackEngine
from ..errors import ConfigError
from .comparison import Comparison, best_member, compare, compare_means, item_values
from .generation import RunTask
from .method_specs import default_methods, parse_method, parse_methods
from .methods import Method
from .results import EvalReport, TaskResult
from .stats import weighted_mean
from .suite_tasks import DEFAULT_TASKS, SUITE_TASKS, SuiteTask, build_tasks, register_task

__all__ = [
    "SUITE_TASKS",
    "DEFAULT_TASKS",
    "MIXTURES",
    "SuiteTask",
    "Comparison",
    "register_task",
    "build_tasks",
    "parse_method",
    "parse_methods",
    "default_methods",
    "run_suite",
    "pool_text_results",
    "item_values",
    "best_member",
    "compare",
    "compare_means",
]


MIXTURES: tuple[tuple[str, tuple[str, ...]], ...] = (("prose+code", ("prose", "code")),)
"""Bits-per-byte rows pooled from other tasks' windows: (name, parts)."""


def _is_run_task(task: Any) -> bool:
    return isinstance(task, RunTask)


def _item_weights(task: Any) -> list[float]:
    if getattr(task, "kind", None) == "bits_per_byte":
        return [float(len(c.encode("utf-8"))) for _, c in task.pairs()]
    return []


def run_suite(
    engine: PackEngine,
    tasks: Sequence[Any],
    methods: Sequence[Method] | None = None,
    *,
    batch_size: int = 8,
    generation_batch: int = 4,
    progress: bool = True,
    mixtures: Sequence[tuple[str, Sequence[str]]] = MIXTURES,
) -> EvalReport:
    """Run every task under every method, each (task, method) on its own and timed.

    Args:
        engine: the pack (its members serve the members-alone methods too).
        tasks: built tasks (:func:`build_tasks`): scored tasks go through
            :func:`~packllm_integrations.eval.harness.evaluate`, run tasks through their ``run``.
        methods: the columns (default: each member alone and :func:`default_methods`).
        batch_size: pairs per scoring call.
        generation_batch: prompts decoded together by generation tasks.
        progress: progress bars (on standard error).
        mixtures: pooled bits-per-byte rows (name, parts), added when every part ran.

    Returns an :class:`EvalReport`; each task's ``method_seconds`` holds the wall time of
    each method, and ``item_weights`` each window's bytes for bits per byte.
    """
    from tqdm.auto import tqdm

    from .harness import checked_tasks, evaluate

    tasks = checked_tasks(tasks)
    for name in ("batch_size", "generation_batch"):
        value = locals()[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, value, "an integer >= 1")
    methods = list(methods) if methods is not None else parse_methods(engine, ["pack", "paper", "opt"])
    if not methods:
        raise ConfigError("methods", [], "at least one method")
    for m in methods:
        if m.member is not None and m.member not in engine.names:
            raise ConfigError("methods", m.name, f"methods over this pack's members ({', '.join(engine.names)})")
    solos: dict[str, PackEngine] = {}
    results: list[TaskResult] = []
    started = time.perf_counter()
    with tqdm(total=len(tasks) * len(methods), desc="suite", unit="run", disable=not progress) as bar:
        for task in tasks:
            result: TaskResult | None = None
            for m in methods:
                bar.set_postfix_str(f"{task.name} / {m.name}")
                if _is_run_task(task) and m.config is not None and m.config.fusion not in TOKEN_FUSIONS:
                    bar.update(1)  # a scoring-only rule ('sequence') does not generate: no result here
                    continue
                t0 = time.perf_counter()
                if _is_run_task(task):
                    if m.kind == "member":
                        member = engine.members[engine.names.index(m.member or "")]
                        solo = solos.setdefault(m.name, PackEngine([member], progress=False))
                        outcome = task.run(solo, solo.config, batch_size=generation_batch, progress=progress)
                    else:
                        assert m.config is not None
                        outcome = task.run(engine, m.config, batch_size=generation_batch, progress=progress)
                    one = TaskResult(
                        task=task.name,
                        kind=task.kind,
                        metric=task.metric,
                        higher_is_better=task.higher_is_better,
                        items=len(task),
                        pairs=len(task),
                        scores={m.name: outcome.score},
                        per_item={m.name: list(outcome.values)},
                        outputs={m.name: list(outcome.outputs)},
                        details={m.name: list(outcome.details)},
                        weights={m.name: list(outcome.weights)} if m.kind != "member" and outcome.weights else {},
                        settings={"binary": bool(task.binary)},
                    )
                else:
                    one = evaluate(engine, [task], [m], batch_size=batch_size, progress=False, reuse=False).tasks[0]
                    one.item_weights = _item_weights(task)
                one.method_seconds = {m.name: round(time.perf_counter() - t0, 4)}
                result = one if result is None else result.join(one)
                bar.update(1)
            if result is None:  # no method applies to this task
                continue
            result.seconds = round(sum(result.method_seconds.values()), 1)
            results.append(result)
    by_name = {r.task: r for r in results}
    for name, parts in mixtures:
        if all(p in by_name for p in parts) and name not in by_name:
            results.append(pool_text_results(name, [by_name[p] for p in parts]))
    settings = {
        "suite": True,
        "batch_size": batch_size,
        "generation_batch": generation_batch,
        "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
        "configs": {m.name: _config_dict(m.config) for m in methods if m.config is not None},
    }
    return EvalReport(engine.names, [m.describe() for m in methods], results, settings)


def _config_dict(config: GenerationConfig) -> dict[str, Any]:
    """A config's settings that differ from :class:`GenerationConfig`'s defaults (for reports)."""
    base = GenerationConfig()
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if value != getattr(base, f.name):
            out[f.name] = list(value) if isinstance(value, tuple) else value if f.name != "constraint" else str(value)
    return out


def pool_text_results(name: str, parts: Sequence[TaskResult]) -> TaskResult:
    """Bits per byte over the windows of several tasks together (their bits over their bytes).

    >>> a = TaskResult("a", "bits_per_byte", "bits_per_byte", False, 1, 1, {"m": 1.0}, {"m": [1.0]}, item_weights=[100])
    >>> b = TaskResult("b", "bits_per_byte", "bits_per_byte", False, 1, 1, {"m": 0.5}, {"m": [0.5]}, item_weights=[300])
    >>> pool_text_results("a+b", [a, b]).scores
    {'m': 0.625}
    """
    if not parts or any(p.kind != "bits_per_byte" for p in parts):
        raise ConfigError("parts", [p.task for p in parts], "bits-per-byte results")
    methods = [m for m in parts[0].scores if all(m in p.scores for p in parts)]
    per_item = {m: [v for p in parts for v in p.per_item[m]] for m in methods}
    weights = [w for p in parts for w in (p.item_weights or [1.0] * len(p.per_item[methods[0]]))]
    return TaskResult(
        task=name,
        kind="bits_per_byte",
        metric="bits_per_byte",
        higher_is_better=False,
        items=sum(p.items for p in parts),
        pairs=sum(p.pairs for p in parts),
        scores={m: weighted_mean(per_item[m], weights) for m in methods},
        per_item=per_item,
        scored_bytes=sum(p.scored_bytes or 0 for p in parts) or None,
        seconds=round(sum(p.seconds for p in parts), 1),
        settings={"pooled_from": [p.task for p in parts]},
        method_seconds={m: round(sum(p.method_seconds.get(m, 0.0) for p in parts), 4) for m in methods},
        item_weights=weights,
    )
