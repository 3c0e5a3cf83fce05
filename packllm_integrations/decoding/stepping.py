"""Stepping a pack's members together.

Members that wait on something other than this process's CPU (a server, a GPU: a backend
whose ``concurrent`` is true) step in threads, while the CPU members step in the calling
thread, so one decoding step costs about the slowest member rather than the sum. CPU
members stay in one thread: they already use every core, and more threads only contend.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Stepper"]

T = TypeVar("T")


class Stepper:
    """Runs one step's member calls; its thread pool lives as long as the request."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: ThreadPoolExecutor | None = None

    def run(self, calls: Mapping[int, Callable[[], T]], concurrent: Collection[int]) -> dict[int, T]:
        """Every call's result by key; the keys in ``concurrent`` run in threads, the rest here."""
        if concurrent and self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="packllm-step")
        futures = {k: self._pool.submit(call) for k, call in calls.items() if k in concurrent}  # type: ignore[union-attr]
        out = {k: call() for k, call in calls.items() if k not in futures}
        out.update({k: f.result() for k, f in futures.items()})
        return dict(sorted(out.items()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
