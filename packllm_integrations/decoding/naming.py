"""Which candidates a served member is asked to score after a step, and when none need asking.

A member whose server scores tokens the caller names (vLLM's ``logprob_token_ids``) gives a
top-k set at each step; after it, the session names to it the candidates the other members
propose, so that every candidate of the union is scored by every member
(:meth:`~..backends.base.MemberBackend.named_scores`). That is a second request, after the
first, in every step.

Greedy decoding needs it only where the choice could change. A token outside a member's
top-k set has a log-probability no higher than the set's k-th best, so the fused score of
every token has an upper bound; where the fused pick is in every member's set (its score
exact) and beats every other token's upper bound, the named scores could not change it and
the row is not named (:func:`greedy_settled`). It holds for the ``logits`` rule (a weighted
sum of scores) and the ``mixture`` rule (a weighted sum of probabilities: a served member's
set holds exact probabilities, since it is bounded only in its own vocabulary, and a token
outside it has at most the k-th best's), at ``temperature=0`` without a grammar; sampling,
the other rules and grammars always name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..config import GenerationConfig

__all__ = ["Bounds", "greedy_settled", "named_candidates"]

Bounds = tuple[torch.Tensor, torch.Tensor | None, float]
"""A member's next-token scores [V] in a reference vocabulary, which of them it gave ([V]
bool; None: all), and the most a score it did not give can be."""

_MARGIN = 1e-4  # float32 sums: a pick must beat the other bounds by more than rounding


def greedy_settled(parts: Sequence[tuple[float, Bounds]], fusion: str = "logits") -> bool:
    """Whether the greedy pick of the members' fused scores is the same whatever the scores
    the members did not give (each at most its bound); ``fusion``: 'logits' (the weighted sum
    of scores) or 'mixture' (the weighted sum of probabilities).

    >>> known = torch.tensor([True, True, False])
    >>> served = (torch.tensor([-0.1, -3.0, -9.0]), known, -3.0)  # gave tokens 0 and 1; the rest <= -3
    >>> sure = [(0.5, served), (0.5, (torch.tensor([0.0, 1.0, 2.0]), None, 0.0))]
    >>> greedy_settled(sure)
    True
    >>> greedy_settled([sure[0], (0.5, (torch.tensor([0.0, 1.0, 9.0]), None, 0.0))])
    False
    >>> greedy_settled(sure, "mixture")  # token 2: at most 0.5 * e^-3 + 0.5 * 0.67 = 0.36, below token 0's 0.50
    True
    """
    if fusion == "mixture":  # in probabilities: a full row normalised, a served set's log-probabilities as they are
        parts = [
            (w, (torch.softmax(s.float(), -1) if known is None else s.float().exp(), known, math.exp(bound)))
            for w, (s, known, bound) in parts
        ]
    fused = sum(w * scores for w, (scores, _, _) in parts)
    best = int(fused.argmax())  # what the session picks, with its floors for unknown tokens
    upper = torch.zeros_like(fused)
    exact = 0.0
    for w, (scores, known, bound) in parts:
        if known is not None and not bool(known[best]):
            return False  # the pick's own score is not exact
        exact += w * float(scores[best])
        upper += w * (scores if known is None else torch.where(known, scores, scores.new_tensor(bound)))
    upper[best] = -torch.inf
    top = float(upper.max())
    if fusion == "mixture":  # compared as log-probabilities, so the margin is relative
        return top <= 0 or (exact > 0 and math.log(top) < math.log(exact) - _MARGIN)
    return top < exact - _MARGIN


def named_candidates(
    aligners: Sequence[Any], members: Sequence[Any], rows: Sequence[Any], config: GenerationConfig, n: int
) -> dict[int, list[int]]:
    """Each live row's candidates to name: the union of every weighted member's best ``n``
    tokens in the row's reference vocabulary; rows whose greedy choice is settled are left out.
    ``aligners``, ``rows``: the session's (:class:`~.aligners.Aligner`, :class:`~.rows.Row`)."""
    greedy = config.temperature == 0 and config.fusion in ("logits", "mixture")
    union: dict[int, list[int]] = {}
    for row in rows:
        if row.finish is not None:
            continue
        r, one = row.plan.reference, torch.tensor([row.index])
        vocab = members[r].vocab_size
        weighted = [(k, a) for k, a in enumerate(aligners) if a.live and float(row.weights[k]) > 0]
        scores = {k: a.reference_scores(one, r, vocab)[0] for k, a in weighted}
        if greedy and row.matcher is None:
            parts = [(float(row.weights[k]), a.bounds(row.index, r, scores[k])) for k, a in weighted]
            if all(b is not None for _, b in parts) and greedy_settled(parts, config.fusion):  # type: ignore[arg-type]
                continue
        found: set[int] = set()
        for s in scores.values():
            found.update(s.topk(min(n, s.numel())).indices.tolist())
        union[row.index] = sorted(found)
    return union
