"""One chat turn, tools or not: the pack's reply as pieces (text, whole calls) and how it ended.

Both adapters stream and collect chat replies through :class:`ChatTurn`, so both read calls
back the same way. With tools, a call the conversation already holds a result for is left
out (sub-1B members repeat their last call instead of answering); when a reply would be
only such repeats, the pack answers in text instead, from the conversation's tool results
(:data:`~packllm_integrations.host.tool_request.ANSWER_FROM_RESULTS`, tools off), and the turn
reports both runs' tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config import GenerationConfig
from ..events import Event, FinishEvent, GenerationResult, TextEvent, Usage, WeightsEvent
from ..structured.tools import InvalidCall, ToolCall
from .running import Runner
from .settings import SETTINGS
from .tool_request import ToolRequest

__all__ = ["ChatTurn", "TurnEnd", "cut_detail"]


@dataclass(frozen=True)
class TurnEnd:
    """How a turn ended: the engine's result (tokens of every run summed), the text, the calls."""

    result: GenerationResult
    content: str
    calls: list[ToolCall]
    invalid: list[InvalidCall]
    answered_from_results: bool = False
    """Whether the text is the answer the pack gave from the tool results, its calls being repeats."""
    detail: str | None = None
    """Why a constrained reply is not whole, and what to do (see :func:`cut_detail`); None when it is."""


def cut_detail(result: GenerationResult, max_new_tokens: int, what: str, host: str | None = None) -> str | None:
    """What ended a constrained output before it was whole (``finish_reason="length"``), and what to do.

    ``what``: the output's name ("the call", "the structured output"); ``host``: whose name
    for ``max_new_tokens`` to use (LangChain's ``max_tokens``). None when it is not cut.

    >>> from packllm_integrations.events import GenerationResult, Usage
    >>> cut = GenerationResult('{"a', "length", {}, {}, "m", Usage(5, 16))
    >>> cut_detail(cut, 16, "the call", "langchain")  # doctest: +NORMALIZE_WHITESPACE
    "max_tokens=16 ended the call before it was whole (cut after 16 tokens): raise max_tokens, ask for
    shorter values, or bound the schema's strings and arrays (maxLength, maxItems, enum)"
    """
    if result.finish_reason != "length":
        return None
    name = SETTINGS[0].host_name(host) if host is not None else SETTINGS[0].name
    n = result.usage.completion_tokens
    if n < max_new_tokens:
        return f"the context window ended {what} before it was whole (cut after {n} tokens): shorten the prompt"
    return (
        f"{name}={max_new_tokens} ended {what} before it was whole (cut after {n} tokens): raise {name}, "
        "ask for shorter values, or bound the schema's strings and arrays (maxLength, maxItems, enum)"
    )


Piece = WeightsEvent | str | ToolCall | TurnEnd
"""What a turn yields: the weights (first), text pieces, whole calls, then its :class:`TurnEnd`."""


class ChatTurn:
    """One reply to chat ``messages`` (engine dicts, or a prompt already rendered) under ``config``, with
    the tools of ``request``; ``host`` names the settings in what it says (see :func:`cut_detail`).

    Example:
        >>> turn = ChatTurn(Runner(engine), messages, engine.config, ToolRequest.of(tools))  # doctest: +SKIP
        >>> end = turn.end()  # doctest: +SKIP
        >>> end.calls or end.content  # doctest: +SKIP
    """

    def __init__(
        self,
        runner: Runner,
        messages: Sequence[Mapping[str, Any]] | str,
        config: GenerationConfig,
        request: ToolRequest | None,
        host: str | None = None,
    ) -> None:
        self.runner, self.config, self.host = runner, config, host
        self.messages: Any = messages if isinstance(messages, str) else list(messages)  # a str: a rendered prompt
        self.request = request.given(self.messages) if request is not None else None

    def _runs(self) -> tuple[Any, GenerationConfig]:
        prompt = self.messages if self.request is None else self.request.prompt(self.messages)
        return prompt, self.config

    def _explain(self, result: GenerationResult) -> str | None:
        """Why the reply is not whole, where a constraint was on and it was cut."""
        if self.config.constraint is None:
            return None
        what = "the structured output" if self.request is None else "the call"
        return cut_detail(result, self.config.max_new_tokens, what, self.host)

    def _answer_run(self) -> tuple[Any, GenerationConfig]:
        assert self.request is not None
        return self.request.answer_prompt(self.messages), replace(self.config, constraint=None)

    def pieces(self, *, restart_after_output: bool = False) -> Iterator[Piece]:
        """The reply's pieces as they come (see :data:`Piece`).

        ``restart_after_output``: retry out-of-memory even after pieces came (for callers
        that keep only the end: a restart begins the reply again).
        """
        prompt, config = self._runs()
        first = _State(self.request, explain=self._explain)
        for event in self.runner.events([prompt], config, restart_after_output=restart_after_output):
            yield from first(event)
        if first.answer_needed is not None:
            prompt, config = self._answer_run()
            answer = _State(None, before=first.answer_needed)
            for event in self.runner.events([prompt], config, restart_after_output=restart_after_output):
                yield from answer(event)

    async def apieces(self, *, restart_after_output: bool = False) -> AsyncIterator[Piece]:
        """:meth:`pieces` with the decoding steps in worker threads."""
        prompt, config = self._runs()
        first = _State(self.request, explain=self._explain)
        async for event in self.runner.aevents([prompt], config, restart_after_output=restart_after_output):
            for piece in first(event):
                yield piece
        if first.answer_needed is not None:
            prompt, config = self._answer_run()
            answer = _State(None, before=first.answer_needed)
            async for event in self.runner.aevents([prompt], config, restart_after_output=restart_after_output):
                for piece in answer(event):
                    yield piece

    def end(self) -> TurnEnd:
        """The whole reply (out-of-memory retried at any point, as :meth:`Runner.results` does)."""
        return _last(self.pieces(restart_after_output=True))

    async def aend(self) -> TurnEnd:
        """:meth:`end` with the decoding steps in worker threads."""
        out = None
        async for piece in self.apieces(restart_after_output=True):
            out = piece
        assert isinstance(out, TurnEnd)
        return out


def _last(pieces: Iterator[Piece]) -> TurnEnd:
    out = None
    for piece in pieces:
        out = piece
    assert isinstance(out, TurnEnd)
    return out


class _State:
    """One run's events as pieces; ``before``: the run this one answers for (its tokens are added)."""

    def __init__(
        self,
        request: ToolRequest | None,
        before: GenerationResult | None = None,
        explain: Callable[[GenerationResult], str | None] | None = None,
    ) -> None:
        self.request, self.before, self.explain = request, before, explain
        self.stream = request.stream() if request is not None else None
        self.answer_needed: GenerationResult | None = None

    def __call__(self, event: Event) -> list[Piece]:
        if isinstance(event, WeightsEvent):  # the reply (re)starts: a retry begins it again
            self.stream = self.request.stream() if self.request is not None else None
            return [event] if self.before is None else []
        if isinstance(event, TextEvent):
            return list(self.stream.feed(event.text)) if self.stream is not None else [event.text]
        if isinstance(event, FinishEvent):
            return self._finish(event.result)
        return []

    def _finish(self, result: GenerationResult) -> list[Piece]:
        detail = self.explain(result) if self.explain is not None else None
        if self.stream is None or self.request is None:
            return [TurnEnd(_summed(self.before, result), result.text, [], [], self.before is not None, detail)]
        out: list[Piece] = list(self.stream.close())
        s = self.stream
        if (
            self.request.choice == "auto"
            and s.repeats
            and not s.calls
            and not s.texts
            and result.finish_reason == "stop"
        ):
            self.answer_needed = result
            return out
        reply = self.request.reply(result.text, cut=detail)  # the content and invalid calls; the calls: as streamed
        return [*out, TurnEnd(result, reply.content, list(s.calls), reply.invalid, detail=detail)]


def _summed(before: GenerationResult | None, result: GenerationResult) -> GenerationResult:
    """``result`` with the tokens of ``before`` (the run it answers for) added."""
    if before is None:
        return result
    usage = Usage(
        prompt_tokens=before.usage.prompt_tokens + result.usage.prompt_tokens,
        completion_tokens=before.usage.completion_tokens + result.usage.completion_tokens,
    )
    return replace(result, usage=usage)
