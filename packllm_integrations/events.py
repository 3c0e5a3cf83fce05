"""What the engine returns: stream events and final results (plain frozen dataclasses)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "Usage",
    "WeightsEvent",
    "TextEvent",
    "FinishEvent",
    "GenerationResult",
    "ScoreResult",
    "Event",
    "collect_results",
]


@dataclass(frozen=True)
class Usage:
    """Token counts, in the reference vocabulary."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class WeightsEvent:
    """The fusion weights of one prompt, emitted once, before any text.

    ``prompt_perplexity`` holds the perplexities the weights were computed from (None for
    every member when the prompt had no token to score; the weights are then uniform).
    """

    index: int
    weights: dict[str, float]
    prompt_perplexity: dict[str, float | None]
    reference: str
    prompt_tokens: int
    dropped: dict[str, str] = field(default_factory=dict)
    """Members dropped so far (``on_member_error="drop"``): name -> why."""


@dataclass(frozen=True)
class TextEvent:
    """A piece of generated text for prompt ``index``."""

    index: int
    text: str


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of one prompt: its text, why it ended, weights, perplexities and usage."""

    text: str
    finish_reason: str
    """'eos' (the reference member's end-of-sequence token), 'stop' (a stop string) or 'length'."""
    weights: dict[str, float]
    prompt_perplexity: dict[str, float | None]
    reference: str
    usage: Usage
    index: int = 0
    dropped: dict[str, str] = field(default_factory=dict)
    """Members dropped during the request (``on_member_error="drop"``): name -> why; their
    weight is 0 from then on."""

    def to_dict(self) -> dict[str, object]:
        """The CLI's JSON object (``dropped`` only when a member was dropped)."""
        out: dict[str, object] = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "weights": self.weights,
            "prompt_perplexity": self.prompt_perplexity,
            "reference": self.reference,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
            },
        }
        if self.dropped:
            out["dropped"] = dict(self.dropped)
        return out


@dataclass(frozen=True)
class FinishEvent:
    """The last event of prompt ``index``: its final result."""

    index: int
    result: GenerationResult


@dataclass(frozen=True)
class ScoreResult:
    """The fused log-likelihood of a continuation after a context.

    ``logprob`` is the sum of the continuation tokens' fused log-probabilities (natural log);
    ``tokens`` their number in the reference vocabulary; ``num_bytes`` the continuation's
    UTF-8 length; ``is_greedy`` whether greedy decoding would have produced it.
    """

    logprob: float
    tokens: int
    num_bytes: int
    is_greedy: bool
    weights: dict[str, float]
    prompt_perplexity: dict[str, float | None]
    reference: str
    token_logprobs: list[float] = field(default_factory=list)


Event = WeightsEvent | TextEvent | FinishEvent


def collect_results(events: Iterable[Event], count: int) -> list[GenerationResult]:
    """The final results of ``count`` prompts from an event stream, in prompt order."""
    results: dict[int, GenerationResult] = {}
    for event in events:
        if isinstance(event, FinishEvent):
            results[event.index] = event.result
    missing = [i for i in range(count) if i not in results]
    if missing:  # the engine ends every prompt with a FinishEvent
        raise RuntimeError(f"the event stream ended without a result for prompts {missing}")
    return [results[i] for i in range(count)]
