"""Planning a request: each prompt's reference member, what every member reads, and the
prompt's weights.

With ``reference`` None, each member first scores its own tokenization of the prompt and
the lowest perplexity wins (the authors' rule); those passes are kept for reuse. Then the
reference's ids are translated for every member ("mined" inputs). Natural alignment walks
a member over the reference's text instead (:func:`walk_states`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .alignment import VocabMap
from .backends.base import MemberBackend, Prefill
from .config import GenerationConfig
from .fusion import nll_per_token, reference_scores
from .natural import check_window, common_prefix, natural_states, token_ends
from .projection import NaturalStates, Projection
from .weighting import compute_weights

__all__ = [
    "Pack",
    "PromptPlan",
    "Planned",
    "OwnScore",
    "plan_prompts",
    "own_scale_nll",
    "walk_states",
    "prompt_weights",
]


@dataclass(frozen=True)
class Pack:
    """A request's members and the engine's look-ups between their vocabularies.

    ``maps(r, k)`` is the vocabulary map from member r's vocabulary to member k's (None: the
    same vocabulary); ``projections(r, k)`` natural alignment's projection (None likewise).
    """

    members: Sequence[MemberBackend]
    maps: Callable[[int, int], VocabMap | None]
    projections: Callable[[int, int], Projection | None]


@dataclass(frozen=True)
class OwnScore:
    """A member's score of a prompt in its own tokenization."""

    total: float  # summed NLL of the scored tokens
    tokens: int  # number of scored tokens
    num_bytes: int  # UTF-8 bytes of the text those tokens stand for

    @property
    def mean(self) -> float:
        return self.total / self.tokens


def own_scale_nll(scores: Sequence[OwnScore | None], reference: int) -> torch.Tensor | None:
    """Members' own-tokenization NLLs per byte, put on the reference's per-token scale.

    ``total_k / bytes_k * bytes_r / tokens_r``: comparable across tokenizers (per byte),
    and equal to the reference member's own mean NLL per token. None when a member had
    nothing to score.
    """
    ref = scores[reference]
    if ref is None or any(s is None or s.num_bytes == 0 for s in scores):
        return None
    scale = ref.num_bytes / ref.tokens
    return torch.tensor([s.total / s.num_bytes * scale for s in scores if s is not None], dtype=torch.float64)


@dataclass
class PromptPlan:
    """How one prompt is read by the pack: its reference member and each member's input ids."""

    reference: int
    ref_ids: list[int]
    inputs: list[list[int]]  # per member: the reference ids, translated for "mined" alignment


@dataclass
class Planned:
    """What :func:`plan_prompts` found: plans, and each member's own-tokenization pass."""

    plans: list[PromptPlan]
    own_ids: list[list[list[int]]]  # [member][prompt] the member's own tokenization
    own_passes: dict[int, Prefill]  # member -> its prefill on own_ids
    own_nll: list[list[OwnScore | None]]  # [prompt][member]
    translated: dict[int, Prefill] = field(default_factory=dict)

    def translated_pass(self, members: Sequence[MemberBackend], k: int) -> Prefill:
        """Member k's pass on its "mined" inputs: its own pass when that is the same ids, else run once."""
        if k not in self.translated:
            done = self.own_passes.get(k)
            if done is None or any(p.inputs[k] != self.own_ids[k][b] for b, p in enumerate(self.plans)):
                done = members[k].prefill([p.inputs[k] for p in self.plans])
            self.translated[k] = done
        return self.translated[k]


def plan_prompts(
    pack: Pack,
    texts: Sequence[Sequence[str]],
    reference: int | None,
    prompt_texts: Sequence[Sequence[str]] | None = None,
    own_scoring: bool = False,
    rollback: bool = False,
) -> Planned:
    """Choose each prompt's reference member and translate its tokens for every member.

    ``texts[b][k]`` is sequence b as member k reads it; ``reference`` a fixed reference
    member's index (None: chosen per prompt). Only the leading tokens that encode
    ``prompt_texts[b][k]`` are scored when given (a context before a continuation).
    ``own_scoring`` computes the own-tokenization scores even when the reference is fixed;
    ``rollback`` makes the passes' caches croppable (natural alignment).
    """
    members = pack.members
    own = [[m.encode(row[k]) for row in texts] for k, m in enumerate(members)]
    scored = [[len(ids) for ids in own_k] for own_k in own]
    if prompt_texts is not None:
        scored = [
            [common_prefix(own[k][b], m.encode(prompt_texts[b][k])) for b in range(len(texts))]
            for k, m in enumerate(members)
        ]
    for k, m in enumerate(members):
        for ids in own[k]:
            check_window(m, len(ids))
    passes: dict[int, Prefill] = {}
    own_nll: list[list[OwnScore | None]] = [[None] * len(members) for _ in texts]
    if (reference is None or own_scoring) and len(members) > 1:
        for k, m in enumerate(members):
            passes[k] = done = m.prefill(own[k], rollback)
            for b, ids in enumerate(own[k]):
                n = scored[k][b]
                if n > 1:
                    per_token = nll_per_token(m, done.row(b, n - 1), torch.tensor(ids[1:n]), None, m.vocab_size)
                    text = m.decode(ids[1:n])
                    own_nll[b][k] = OwnScore(float(per_token.sum()), n - 1, len(text.encode("utf-8")))
    if reference is None and len(members) > 1:
        count = range(len(members))
        refs = [min(count, key=lambda k, b=b: (_mean_or_inf(own_nll[b][k]), k)) for b in range(len(texts))]
    else:
        refs = [reference or 0] * len(texts)
    plans = []
    for b, r in enumerate(refs):
        ref_ids = own[r][b]
        inputs = []
        for k, m in enumerate(members):
            vmap = pack.maps(r, k)
            inputs.append(list(ref_ids) if vmap is None else vmap.input[torch.tensor(ref_ids)].tolist())
            check_window(m, len(inputs[k]))
        plans.append(PromptPlan(reference=r, ref_ids=list(ref_ids), inputs=inputs))
    return Planned(plans=plans, own_ids=own, own_passes=passes, own_nll=own_nll)


def walk_states(pack: Pack, texts: Sequence[Sequence[str]], planned: Planned, k: int, b: int) -> NaturalStates:
    """Member k's states at each reference position of sequence b, reading its own tokenization
    of the reference's text up to that position (natural alignment), with its projection."""
    plan = planned.plans[b]
    r = plan.reference
    text = texts[b][r]
    member = pack.members[k]
    ends = token_ends(pack.members[r], text, plan.ref_ids)
    prefilled = None
    done = planned.own_passes.get(k)
    if done is not None and texts[b][k] == text:
        prefilled = (done.row(b, len(planned.own_ids[k][b])), member.fork(done.cache, b))
    return natural_states(member, text, ends, prefilled, pack.projections(r, k))


def prompt_weights(
    pack: Pack,
    texts: Sequence[Sequence[str]],
    planned: Planned,
    b: int,
    config: GenerationConfig,
    reading: Sequence[bool],
) -> tuple[torch.Tensor, list[float | None]]:
    """Prompt b's weights [K] and the members' prompt NLLs (log prompt perplexities; None
    each when the prompt has no token to score). ``reading[k]``: member k reads its own
    tokenization (natural alignment) and is scored from there."""
    members = pack.members
    plan = planned.plans[b]
    r, length = plan.reference, len(plan.ref_ids)
    vocab = members[r].vocab_size
    targets = torch.tensor(plan.ref_ids[1:])
    walked: dict[int, NaturalStates] = {}

    def states(k: int) -> torch.Tensor | NaturalStates:
        if reading[k]:
            if k not in walked:
                walked[k] = walk_states(pack, texts, planned, k, b)[: length - 1]
            return walked[k]
        return planned.translated_pass(members, k).row(b, length - 1)

    nll_t = None
    if length > 1:
        nll_t = own_scale_nll(planned.own_nll[b], r) if config.scoring == "own" else None
        if nll_t is None:
            per_member = []
            for k, m in enumerate(members):
                score = planned.own_nll[b][k]
                if pack.maps(r, k) is None and score is not None and planned.own_ids[k][b] == plan.inputs[k]:
                    per_member.append(torch.tensor(score.mean, dtype=torch.float64))  # same tokens: reuse
                else:
                    per_member.append(nll_per_token(m, states(k), targets, pack.maps(r, k), vocab).mean())
            nll_t = torch.stack(per_member)
    else:
        warnings.warn(
            f"prompt {b} has no token to score (one token): using uniform weights", RuntimeWarning, stacklevel=4
        )

    def all_logits() -> list[torch.Tensor]:
        return [reference_scores(m, states(k), pack.maps(r, k), vocab) for k, m in enumerate(members)]

    weights = compute_weights(config, nll_t, all_logits, targets, len(members))
    return weights, [float(v) for v in nll_t] if nll_t is not None else [None] * len(members)


def _mean_or_inf(score: OwnScore | None) -> float:
    return math.inf if score is None else score.mean
