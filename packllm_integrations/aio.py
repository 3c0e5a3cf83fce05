"""Async access to the engine: its blocking event generator stepped in worker threads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

__all__ = ["iterate_in_threads"]

T = TypeVar("T")

_DONE = object()


def _step(iterator: Iterator[Any]) -> Any:
    return next(iterator, _DONE)


async def iterate_in_threads(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Step a blocking iterator in the loop's worker threads, one item per thread call.

    The event loop stays free while a decoding step runs. A step's error is raised here.
    If the consumer is cancelled, the step in progress is awaited (a running forward pass
    cannot be interrupted) before the iterator is closed, so no thread outlives the call.
    """
    loop = asyncio.get_running_loop()
    try:
        while True:
            step = loop.run_in_executor(None, _step, iterator)
            try:
                item = await asyncio.shield(step)
            except asyncio.CancelledError:
                await asyncio.wait([step])
                raise
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
