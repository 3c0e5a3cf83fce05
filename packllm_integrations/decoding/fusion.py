"""Fusion: members' scores in the reference vocabulary, and their one weighted sum.

PACKLLM.md section 1: the fused next-token distribution is the softmax of the weighted sum
of the members' logits in the reference vocabulary. :func:`fuse` is that sum, used by
generation and by scoring alike; :func:`reference_scores` puts one member's scores into the
reference vocabulary (through its vocabulary map, or natural alignment's projection).
Shapes: T positions (or G prompts), K members, W a member's logits width, V the reference
vocabulary.

:func:`fuse_by` is the seam where a fusion rule is chosen (``GenerationConfig.fusion``):

- ``"logits"`` (PackLLM): the weighted sum of the members' logits (:func:`fuse`);
- ``"mixture"``: the weighted mixture (linear interpolation) of the members' probabilities
  over the whole vocabulary. Where a member is overweighted, a mixture loses at most
  ``-log(1 - w)`` nats a token to the member it dilutes, where a sum of logits can lose
  without bound; measured, it keeps a much weaker member from costing the pack
  (docs/RESULTS.md);
- ``"union"`` (top-k union, after UniTE): the weighted mixture of the members'
  probabilities, with only the union of each member's ``union_k`` best tokens allowed;
- ``"gated"``: the leading member's own distribution where it is confident (its best
  token's probability at least ``gate``) or where every member's best token is the same,
  the weighted sum of logits elsewhere;
- ``"contrastive"``: the pack without its weakest member (the expert) against that member
  (the amateur): ``(1 + contrast) * log p_expert - contrast * log p_amateur``, among the
  tokens whose expert probability is at least a tenth of the expert's best.

A rule returns :class:`Fused`: scores over the whole vocabulary, and which tokens it allows
(``support``; None: all). Generation picks among the allowed tokens (those a grammar also
allows, else every token the grammar allows); scoring normalises over the allowed tokens
and the scored one, so no scored token gets probability 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..alignment.mined import VocabMap
from ..alignment.projected_nll import projected_nll
from ..alignment.projected_scores import projected_scores
from ..alignment.projection import NaturalStates
from ..backends.base import MemberBackend, Scores, dense
from ..config import GenerationConfig
from ..errors import PackLLMError

__all__ = ["Fused", "FusionRule", "fuse", "fuse_by", "reference_scores", "in_reference", "nll_per_token"]

_CHUNK = 64  # prompt positions per chunk when turning states into logits
_FLOOR = -1e4
PLAUSIBLE = 0.1
"""Contrastive fusion keeps the tokens whose expert probability is at least this share of the
expert's best token's (the plausibility constraint of contrastive decoding)."""


def in_reference(member: MemberBackend, scores: Scores, vmap: VocabMap | None, vocab: int) -> torch.Tensor:
    """A member's next-token scores [N, W] (dense or sparse) as reference logits [N, V]."""
    logits = dense(scores, member.logits_width)
    return logits[..., :vocab] if vmap is None else vmap.member_logits(logits)


def reference_scores(
    member: MemberBackend, states: torch.Tensor | NaturalStates, vmap: VocabMap | None, vocab: int, rows: int = 0
) -> torch.Tensor:
    """A member's states at T positions as logits in the reference vocabulary [T, V] (float32).

    :class:`NaturalStates` (natural alignment) go through their projection; with ``rows``, that
    many rows at a time, so that its dozen passes over the reference vocabulary run on rows
    that stay in the processor's cache and only the result is written out whole (the member's
    logits are then computed per chunk too, which can move float32 roundings)."""
    if isinstance(states, NaturalStates):
        proj = states.projection
        if proj is not None:
            if not 0 < rows < len(states):
                return projected_scores(proj, member, states)[0]
            first = projected_scores(proj, member, states[:rows])[0]
            out = first.new_empty(len(states), proj.vocab)
            out[:rows] = first
            for start in range(rows, len(states), rows):
                out[start : start + rows] = projected_scores(proj, member, states[start : start + rows])[0]
            return out
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
    if isinstance(states, NaturalStates) and states.projection is not None:  # without the [T, V] scores
        return projected_nll(states.projection, member, states, targets.cpu())
    out = []
    for start in range(0, states.shape[0], _CHUNK):
        logits = reference_scores(member, states[start : start + _CHUNK], vmap, vocab)
        picked = logits.gather(-1, targets[start : start + _CHUNK, None].to(logits.device)).squeeze(-1)
        out.append((torch.logsumexp(logits, dim=-1) - picked).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class FusionRule:
    """How the members' reference scores become one distribution (see the module).

    >>> FusionRule("union", union_k=5).name
    'union'
    """

    name: str = "logits"
    union_k: int = 10
    gate: float = 0.5
    contrast: float = 0.5

    @classmethod
    def of(cls, config: GenerationConfig) -> FusionRule:
        """The rule a config names, with its settings."""
        return cls(config.fusion, config.union_k, config.gate, config.contrast)


@dataclass(frozen=True)
class Fused:
    """Fused scores [G, V] (log-space: their softmax is the fused distribution) and the tokens
    the rule allows [G, V] (None: every token)."""

    logits: torch.Tensor
    support: torch.Tensor | None = None

    def allowed(self) -> torch.Tensor:
        """The scores with the tokens outside the support at ``-inf``."""
        if self.support is None:
            return self.logits
        return self.logits.masked_fill(~self.support, float("-inf"))

    def restrict(self, masked: torch.Tensor) -> torch.Tensor:
        """``masked`` (these scores under a grammar's mask) cut to the support, per row; a row
        where the grammar allows no supported token keeps every token the grammar allows."""
        if self.support is None:
            return masked
        cut = masked.masked_fill(~self.support.to(masked.device), float("-inf"))
        empty = ~torch.isfinite(cut).any(dim=-1, keepdim=True)
        return torch.where(empty, masked, cut)

    def log_probs(self, targets: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [G] of ``targets`` [G], normalised over the support and the target."""
        scores = self.logits
        if self.support is not None:
            keep = self.support.clone()
            keep.scatter_(-1, targets[:, None].to(keep.device), True)
            scores = scores.masked_fill(~keep, float("-inf"))
        logp = torch.log_softmax(scores, dim=-1)
        return logp.gather(-1, targets[:, None].to(logp.device)).squeeze(-1)


def fuse_by(rule: FusionRule, scores: Sequence[torch.Tensor | None], weights: torch.Tensor) -> Fused:
    """The members' reference scores ``scores[k]`` [G, V] fused under ``rule`` with ``weights``
    [G, K]; members with no positive weight (or None scores) take no part.

    >>> a, b = torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[4.0, 0.0, 0.0]])
    >>> fuse_by(FusionRule("union", union_k=1), [a, b], torch.tensor([[0.5, 0.5]])).support
    tensor([[ True,  True, False]])
    """
    if rule.name == "logits":
        return Fused(fuse(scores, weights))
    if rule.name == "mixture":
        part = _taking_part(scores, weights)
        if len(part) == 1:  # one member: the mixture is its own distribution, its scores' softmax
            return Fused(scores[part[0]].float())  # type: ignore[union-attr]
        return Fused(_mixture(scores, weights))
    if rule.name == "union":
        return _union(scores, weights, rule.union_k)
    if rule.name == "gated":
        return _gated(scores, weights, rule.gate)
    if rule.name == "contrastive":
        return _contrastive(scores, weights, rule.contrast)
    raise PackLLMError(f"unknown fusion rule {rule.name!r}")


def _taking_part(scores: Sequence[torch.Tensor | None], weights: torch.Tensor) -> list[int]:
    return [k for k, s in enumerate(scores) if s is not None and bool((weights[:, k] > 0).any())]


def _mixture(scores: Sequence[torch.Tensor | None], weights: torch.Tensor) -> torch.Tensor:
    """``log sum_k w_k softmax(scores[k])`` [G, V]: the log of the members' weighted mixture.

    Summed as probabilities: one exponential per member and column and one logarithm, where
    adding log-probabilities pair by pair costs three transcendental passes per member. That
    is exact up to float32 rounding wherever the mixture's probability is a normal float. In
    a row where some column's mixture underflows to 0 (every member puts it below about
    ``exp(-87)``, or rules it out), the row is summed again in log space, so that such
    columns keep their true, finite scores and their order.

    >>> a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, -200.0]])
    >>> _mixture([a, b], torch.tensor([[0.5, 0.5]])).exp()
    tensor([[0.7500, 0.2500]])
    >>> _mixture([b, b], torch.tensor([[0.5, 0.5]]))[0, 1].item()
    -200.0
    """
    part = _taking_part(scores, weights)
    if not part:
        raise PackLLMError("fusion needs a member with a positive weight and scores; none has both")
    total: torch.Tensor | None = None
    for k in part:
        term = scores[k]
        assert term is not None
        p = torch.softmax(term.float(), dim=-1).mul_(weights[:, k].to(term.device, torch.float32)[:, None])
        total = p if total is None else total.add_(p)
    assert total is not None
    mix = total.log_()
    rows = (mix == -math.inf).any(dim=-1).nonzero().squeeze(-1)
    if rows.numel():  # columns that are -inf: ruled out by every member, or underflowed
        cut = [None if s is None else s[rows] for s in scores]
        finite = torch.zeros_like(mix[rows], dtype=torch.bool)
        for k in part:
            finite |= torch.isfinite(cut[k])  # type: ignore[arg-type]
        under = rows[((mix[rows] == -math.inf) & finite).any(dim=-1)]
        if under.numel():
            mix[under] = _mixture_in_logs([None if s is None else s[under] for s in scores], weights[under], part)
    return mix


def _mixture_in_logs(scores: Sequence[torch.Tensor | None], weights: torch.Tensor, part: Sequence[int]) -> torch.Tensor:
    """:func:`_mixture` added in log space, pair by pair: no column underflows."""
    mix: torch.Tensor | None = None
    for k in part:
        term = scores[k]
        assert term is not None
        logp = torch.log_softmax(term.float(), dim=-1) + torch.log(weights[:, k].to(term.device))[:, None]
        mix = logp if mix is None else torch.logaddexp(mix, logp)
    assert mix is not None
    return mix


def _union(scores: Sequence[torch.Tensor | None], weights: torch.Tensor, k_best: int) -> Fused:
    """Mixture of probabilities, allowed only on the union of each member's best tokens."""
    support: torch.Tensor | None = None
    for k in _taking_part(scores, weights):
        term = scores[k]
        assert term is not None
        best = term.topk(min(k_best, term.shape[-1]), dim=-1).indices
        hit = torch.zeros_like(term, dtype=torch.bool).scatter_(-1, best, True)
        hit &= (weights[:, k] > 0).to(term.device)[:, None]
        support = hit if support is None else support | hit
    return Fused(_mixture(scores, weights), support)


def _gated(scores: Sequence[torch.Tensor | None], weights: torch.Tensor, gate: float) -> Fused:
    """The leader's own scores where it is confident or every member agrees; the weighted sum elsewhere."""
    summed = fuse(scores, weights)
    part = _taking_part(scores, weights)
    lead = weights.argmax(dim=-1).tolist()
    leader = torch.stack([scores[k][g] for g, k in enumerate(lead)])  # type: ignore[index]
    confident = torch.softmax(leader.float(), dim=-1).max(dim=-1).values >= gate
    best = leader.argmax(dim=-1)
    agree = torch.ones_like(confident)
    for k in part:
        term = scores[k]
        assert term is not None
        listens = weights[:, k].to(term.device) > 0
        agree &= ~listens | (term.argmax(dim=-1) == best)
    follow = (confident | agree)[:, None]
    return Fused(torch.where(follow, leader.to(summed.dtype), summed))


def _contrastive(scores: Sequence[torch.Tensor | None], weights: torch.Tensor, contrast: float) -> Fused:
    """Expert (the pack without its weakest member) against amateur (that member), per row."""
    part = _taking_part(scores, weights)
    positive = weights > 0
    if len(part) < 2 or contrast == 0:
        return Fused(fuse(scores, weights))
    out: torch.Tensor | None = None
    support: torch.Tensor | None = None
    ranked = weights.masked_fill(~positive, math.inf)
    amateur = ranked.argmin(dim=-1)  # the smallest positive weight (ties: the first such member)
    two = positive.sum(dim=-1) >= 2
    for a in set(amateur.tolist()):
        rows = (amateur == a).nonzero().squeeze(-1)
        w = weights[rows].clone()
        contrasted = two[rows]
        w[contrasted, a] = 0
        w = w / w.sum(dim=-1, keepdim=True)
        expert = torch.log_softmax(fuse([None if s is None else s[rows] for s in scores], w).float(), dim=-1)
        if out is None:
            out = torch.empty(weights.shape[0], expert.shape[-1], device=expert.device)
            support = torch.ones(weights.shape[0], expert.shape[-1], dtype=torch.bool, device=expert.device)
        amateur_scores = scores[a]
        assert amateur_scores is not None
        novice = torch.log_softmax(amateur_scores[rows].float(), dim=-1).clamp(min=_FLOOR)  # 0 probability: a floor
        mixed = (1 + contrast) * expert - contrast * novice
        plausible = expert >= expert.max(dim=-1, keepdim=True).values + math.log(PLAUSIBLE)
        on = contrasted[:, None].to(expert.device)
        out[rows] = torch.where(on, mixed.masked_fill(~torch.isfinite(mixed), float("-inf")), expert)
        support[rows] = plausible | ~on  # type: ignore[index]
    assert out is not None
    return Fused(out, support)
