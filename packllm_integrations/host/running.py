"""The runner: the engine's event stream with a deadline and out-of-memory retries.

:meth:`Runner.events` walks the engine's event stream (a plain generator); its async twin
:meth:`Runner.aevents` steps the same generator in worker threads, one decoding step per
thread call, so the event loop is never blocked and no thread outlives the call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..aio import iterate_in_threads
from ..config import GenerationConfig
from ..engine import PackEngine, Prompt
from ..errors import ConfigError, GenerationTimeoutError
from ..events import Event, FinishEvent, GenerationResult, TextEvent, collect_results

__all__ = ["Runner", "acollect_results"]

BACKOFF_S = 0.5
"""The first wait before a retry, in seconds; doubled for each further one."""


@dataclass(frozen=True)
class Runner:
    """Runs calls on ``engine`` within ``timeout`` seconds, with ``max_retries`` out-of-memory retries.

    The deadline starts at the call; the engine checks it before every forward pass (a long
    prompt is read in chunks) and the runner after each event
    (:class:`~packllm_integrations.errors.GenerationTimeoutError`, a ``TimeoutError``). A
    call whose device runs out of memory (``torch.OutOfMemoryError``) is started again,
    after waits of 0.5 s, 1 s, 2 s..., at most ``max_retries`` times: a stream only before
    its first event, a call that keeps only the final results at any point. Other errors
    are raised at once.

    Example:
        >>> runner = Runner(engine, timeout=30, max_retries=2)  # doctest: +SKIP
        >>> [r.text for r in runner.results(["def f(x):", "import os"], engine.config)]  # doctest: +SKIP
    """

    engine: PackEngine
    timeout: float | None = None
    max_retries: int = 0

    def __post_init__(self) -> None:
        t = self.timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
            raise ConfigError("timeout", t, "a number of seconds > 0, or None")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError("max_retries", self.max_retries, "an integer >= 0")

    def events(
        self, prompts: Sequence[Prompt], config: GenerationConfig, *, restart_after_output: bool = False
    ) -> Iterator[Event]:
        """The engine's events for ``prompts``; a bad prompt raises here, at the call.

        ``restart_after_output`` retries out-of-memory even after events were yielded (for
        callers that only keep the final results: a restart yields every event again).
        """
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        first = self.engine.stream_batch(prompts, config, timeout=self.timeout)
        return self._retried(prompts, config, first, restart_after_output, deadline)

    def _retried(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig,
        stream: Iterator[Event],
        restart_after_output: bool,
        deadline: float | None,
    ) -> Iterator[Event]:
        attempt = 0
        while True:
            yielded = False
            partial: dict[int, str] = {}
            try:
                for event in stream:
                    if deadline is not None and time.monotonic() > deadline:
                        raise GenerationTimeoutError(self.timeout or 0.0, partial)
                    if isinstance(event, TextEvent):
                        partial[event.index] = partial.get(event.index, "") + event.text
                    yielded = True
                    yield event
                return
            except torch.OutOfMemoryError:
                if attempt >= self.max_retries or (yielded and not restart_after_output):
                    raise
                attempt += 1
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # frees the session's caches now, not when it is collected
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise GenerationTimeoutError(self.timeout or 0.0)
            stream = self.engine.stream_batch(prompts, config, timeout=left)

    def aevents(
        self, prompts: Sequence[Prompt], config: GenerationConfig, *, restart_after_output: bool = False
    ) -> AsyncIterator[Event]:
        """:meth:`events` stepped in worker threads (the event loop stays free)."""
        return iterate_in_threads(self.events(prompts, config, restart_after_output=restart_after_output))

    def results(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[GenerationResult]:
        """The final results of ``prompts``, in prompt order (out-of-memory retried at any step)."""
        return collect_results(self.events(prompts, config, restart_after_output=True), len(prompts))

    async def aresults(self, prompts: Sequence[Prompt], config: GenerationConfig) -> list[GenerationResult]:
        """:meth:`results` stepped in worker threads."""
        return await acollect_results(self.aevents(prompts, config, restart_after_output=True), len(prompts))


async def acollect_results(events: AsyncIterable[Event], count: int) -> list[GenerationResult]:
    """:func:`~packllm_integrations.events.collect_results` for an async event stream."""
    return collect_results([e async for e in events if isinstance(e, FinishEvent)], count)
