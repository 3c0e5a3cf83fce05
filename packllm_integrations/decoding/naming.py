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
the row is not named (:func:`greedy_settled`). It holds for the ``logits`` rule at
``temperature=0`` without a grammar; sampling, the other rules and grammars always name.
"""

from __future__ import annotations

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


def greedy_settled(parts: Sequence[tuple[float, Bounds]]) -> bool:
    """Whether the argmax of the weighted sum of members' scores is the same whatever the
    scores the members did not give (each at most its bound).

    >>> known = torch.tensor([True, True, False])
    >>> served = (torch.tensor([-0.1, -3.0, -9.0]), known, -3.0)  # gave tokens 0 and 1; the rest <= -3
    >>> sure = [(0.5, served), (0.5, (torch.tensor([0.0, 1.0, 2.0]), None, 0.0))]
    >>> greedy_settled(sure)
    True
    >>> greedy_settled([sure[0], (0.5, (torch.tensor([0.0, 1.0, 9.0]), None, 0.0))])
    False
    """
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
    return float(upper.max()) < exact - _MARGIN


def named_candidates(
    aligners: Sequence[Any], members: Sequence[Any], rows: Sequence[Any], config: GenerationConfig, n: int
) -> dict[int, list[int]]:
    """Each live row's candidates to name: the union of every weighted member's best ``n``
    tokens in the row's reference vocabulary; rows whose greedy choice is settled are left out.
    ``aligners``, ``rows``: the session's (:class:`~.aligners.Aligner`, :class:`~.rows.Row`)."""
    greedy = config.temperature == 0 and config.fusion == "logits"
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
            if all(b is not None for _, b in parts) and greedy_settled(parts):  # type: ignore[arg-type]
                continue
        found: set[int] = set()
        for s in scores.values():
            found.update(s.topk(min(n, s.numel())).indices.tolist())
        union[row.index] = sorted(found)
    return union
