"""Fusion: members' scores in the reference vocabulary, and their one weighted sum.

PACKLLM.md section 1: the fused next-token distribution is the softmax of the weighted sum
of the members' logits in the reference vocabulary. :func:`fuse` is that sum, used by
generation and by scoring alike; :func:`reference_scores` puts one member's scores into the
reference vocabulary (through its vocabulary map, or natural alignment's projection).
Shapes: T positions (or G prompts), K members, W a member's logits width, V the reference
vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..alignment.mined import VocabMap
from ..alignment.projection import NaturalStates
from ..backends.base import MemberBackend, Scores, dense
from ..errors import PackLLMError

__all__ = ["fuse", "reference_scores", "in_reference", "nll_per_token"]

_CHUNK = 64  # prompt positions per chunk when turning states into logits


def in_reference(member: MemberBackend, scores: Scores, vmap: VocabMap | None, vocab: int) -> torch.Tensor:
    """A member's next-token scores [N, W] (dense or sparse) as reference logits [N, V]."""
    logits = dense(scores, member.logits_width)
    return logits[..., :vocab] if vmap is None else vmap.member_logits(logits)


def reference_scores(
    member: MemberBackend, states: torch.Tensor | NaturalStates, vmap: VocabMap | None, vocab: int
) -> torch.Tensor:
    """A member's states at T positions as logits in the reference vocabulary [T, V] (float32).

    :class:`NaturalStates` (natural alignment) go through their projection."""
    if isinstance(states, NaturalStates):
        if states.projection is not None:
            return states.projection.scores(member, states)
        states = states.last
    return in_reference(member, member.scores(states), vmap, vocab)


def fuse(scores: Sequence[torch.Tensor | None], weights: torch.Tensor) -> torch.Tensor:
    """The weighted sum [G, V] of members' reference logits ``scores[k]`` [G, V] with
    ``weights`` [G, K] (float32); members with no positive weight (or None scores) are skipped.

    >>> fuse([torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, 0.0]])], torch.tensor([[0.5, 0.5]]))
    tensor([[2., 1.]])
    """
    total = None
    for k, term in enumerate(scores):
        w = weights[:, k]
        if term is None or not bool((w > 0).any()):
            continue
        if not bool((w == 1).all()):
            term = term * w[:, None].to(term.device)
        total = term if total is None else total + term
    if total is None:  # weights always sum to 1, so some member has a positive weight
        raise PackLLMError("fusion needs a member with a positive weight and scores; none has both")
    return total


def nll_per_token(
    member: MemberBackend,
    states: torch.Tensor | NaturalStates,
    targets: torch.Tensor,
    vmap: VocabMap | None,
    vocab: int,
) -> torch.Tensor:
    """Negative log-likelihoods [T] (float64) of ``targets`` [T] given states [T, ...], in chunks."""
    out = []
    for start in range(0, states.shape[0], _CHUNK):
        logits = reference_scores(member, states[start : start + _CHUNK], vmap, vocab)
        picked = logits.gather(-1, targets[start : start + _CHUNK, None].to(logits.device)).squeeze(-1)
        out.append((torch.logsumexp(logits, dim=-1) - picked).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
