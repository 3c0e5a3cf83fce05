"""One prompt's state in a decoding session: its plan, weights, text and how it ended.

A :class:`Row` turns chosen tokens into text (incremental detokenization, stop strings,
end of sequence, length) and reports itself as the engine's events.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch

from ..events import GenerationResult, Usage, WeightsEvent
from ..structured.constraints import RowMatcher
from .planning import PromptPlan
from .stopping import Detokenizer, StopMatcher

__all__ = ["Row"]


@dataclass
class Row:
    """One prompt's state in a session."""

    index: int
    plan: PromptPlan
    weights: torch.Tensor  # [K] float64
    nll: list[float | None]
    detok: Detokenizer
    stops: StopMatcher
    max_tokens: int
    texts: Sequence[str] = ()  # the prompt as each member reads it
    pieces: list[str] = field(default_factory=list)
    generated: int = 0
    finish: str | None = None
    read: Detokenizer | None = None  # decodes the fed tokens for members reading their own tokenization
    read_text: str = ""
    fed_ids: list[int] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # member -> why (on_member_error="drop")
    matcher: RowMatcher | None = None  # the constraint's state (GenerationConfig.constraint)

    def accept(self, token: int, eos_token_ids: Collection[int]) -> str:
        """Record ``token`` (``eos_token_ids``: the reference member's); return the text that may be emitted now.

        Under a constraint, an end token (allowed only where the grammar is complete) and a
        grammar that admits nothing more both end the row with ``"stop"``."""
        self.generated += 1
        complete = self.matcher is not None and self.matcher.advance(token)
        if token in eos_token_ids:
            self.finish = "eos" if self.matcher is None else "stop"
            return self.stops.push(self.detok.flush()) + self.stops.flush()
        text = self.stops.push(self.detok.add(token))
        if complete:
            self.finish = "stop"
            text += self.stops.push(self.detok.flush()) + self.stops.flush()
        elif self.stops.stopped:
            self.finish = "stop"
        elif self.generated >= self.max_tokens:
            self.finish = "length"
            text += self.stops.push(self.detok.flush())
            if self.stops.stopped:
                self.finish = "stop"
            text += self.stops.flush()
        if self.matcher is not None:
            self.matcher.read(text)
        return text

    def feed(self, token: int) -> None:
        """Record a chosen token for the members that read the text (natural alignment)."""
        if self.read is not None and self.finish is None:
            self.fed_ids.append(token)
            self.read_text += self.read.add(token)

    def weights_event(self, names: Sequence[str]) -> WeightsEvent:
        """The prompt's weights and perplexities (``names``: the members', in pack order)."""
        return WeightsEvent(
            index=self.index,
            weights={n: float(w) for n, w in zip(names, self.weights, strict=True)},
            prompt_perplexity={
                n: (math.exp(v) if v is not None else None) for n, v in zip(names, self.nll, strict=True)
            },
            reference=names[self.plan.reference],
            prompt_tokens=len(self.plan.ref_ids),
            dropped=dict(self.dropped),
        )

    def result(self, names: Sequence[str]) -> GenerationResult:
        """The prompt's final result."""
        event = self.weights_event(names)
        return GenerationResult(
            text="".join(self.pieces),
            finish_reason=self.finish or "length",
            weights=event.weights,
            prompt_perplexity=event.prompt_perplexity,
            reference=event.reference,
            usage=Usage(prompt_tokens=event.prompt_tokens, completion_tokens=self.generated),
            index=self.index,
            dropped=event.dropped,
        )
