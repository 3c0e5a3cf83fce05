"""Stepping a pack's members together.

Members that wait on something other than this process's CPU (a server, a GPU: a backend
whose ``concurrent`` is true) step in threads, while the CPU members step in the calling
thread, so one decoding step costs about the slowest member rather than the sum.

CPU members that can be told how many cores a step uses (``splits_cores``: llama.cpp, which
releases the GIL) are split into lanes instead (:func:`cpu_lanes`), one per core, balanced
by the bytes of weights each step reads: each lane steps its members one after another, on
its share of the cores, beside the others. Small models do not use two cores well (measured
on 2 cores: SmolLM2, Gemma 3 270M and Qwen2.5-Coder 0.5B step in 12, 25 and 41 ms on one
core, 8, 17 and 25 ms on two), so two lanes finish a step sooner than the members one after
another on both cores (``benchmarks/results/step.md``). That holds for one row at a time: a
batch's step is a matrix product that both cores share well, and lanes then lose
(:data:`LANE_ROWS`). Any other CPU member (transformers, whose threads are the process's)
keeps every member in the calling thread, on every core.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["LANE_ROWS", "Stepper", "cpu_lanes", "lanes_for"]

T = TypeVar("T")

LANE_ROWS = 1
"""The most live rows a step takes in lanes; with more, the members step one after another on
every core. Measured on 2 cores with the default pack (``benchmarks/results/step.md``,
``batch_scaling_llama_cpp.md``): one row, 39.9 ms in lanes against 50.2 ms one after another;
4 rows, 152 against 138 ms (one after another faster in 6 of 6 rounds); 8 rows, 248 against
237 ms (5 of 6)."""


class Stepper:
    """Runs one step's member calls; its thread pool lives as long as the request."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None

    def run(
        self,
        calls: Mapping[int, Callable[[], T]],
        concurrent: Collection[int],
        lanes: Sequence[Sequence[int]] = (),
    ) -> dict[int, T]:
        """Every call's result by key; the keys in ``concurrent`` run in threads, each of
        ``lanes`` but the first runs its keys in order in a thread, the rest run here."""
        if (concurrent or len(lanes) > 1) and self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers + len(lanes), thread_name_prefix="packllm-step")
        futures = {k: self._pool.submit(call) for k, call in calls.items() if k in concurrent}  # type: ignore[union-attr]
        laned = [[k for k in lane if k in calls and k not in futures] for lane in lanes[1:]]
        in_lanes = [
            self._pool.submit(lambda keys: {k: calls[k]() for k in keys}, keys)  # type: ignore[union-attr]
            for keys in laned
            if keys
        ]
        taken = set(futures) | {k for keys in laned for k in keys}
        out = {k: call() for k, call in calls.items() if k not in taken}
        for lane in in_lanes:
            out.update(lane.result())
        out.update({k: f.result() for k, f in futures.items()})
        return dict(sorted(out.items()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def cpu_lanes(members: Sequence[Any], cores: int) -> list[list[int]]:
    """The pack's CPU members in lanes, one per core (at most one per member), balanced by
    ``parameter_bytes`` (heaviest first, each into the lightest lane); none (``[]``: every
    CPU member in the calling thread, on every core) unless there are two cores and two CPU
    members and every CPU member ``splits_cores``.

    >>> class M:
    ...     concurrent, splits_cores = False, True
    ...     def __init__(self, size): self.parameter_bytes = size
    >>> cpu_lanes([M(100), M(250), M(400)], cores=2)
    [[2], [1, 0]]
    """
    cpu = [k for k, m in enumerate(members) if not m.concurrent]
    if cores < 2 or len(cpu) < 2 or not all(getattr(members[k], "splits_cores", False) for k in cpu):
        return []
    lanes: list[list[int]] = [[] for _ in range(min(cores, len(cpu)))]
    load = [0] * len(lanes)
    for k in sorted(cpu, key=lambda k: -int(members[k].parameter_bytes)):
        i = load.index(min(load))
        lanes[i].append(k)
        load[i] += int(members[k].parameter_bytes)
    return lanes


def lanes_for(lanes: Sequence[Sequence[int]], live_rows: int) -> Sequence[Sequence[int]]:
    """``lanes`` for a step of ``live_rows`` rows, or none where one member after another is
    faster (more than :data:`LANE_ROWS` rows).

    >>> lanes_for([[2], [1, 0]], 1), lanes_for([[2], [1, 0]], 8)
    ([[2], [1, 0]], [])
    """
    return lanes if live_rows <= LANE_ROWS else []
