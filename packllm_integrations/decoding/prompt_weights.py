"""A prompt's weights: the members' prompt log-likelihoods, checked, then a weighting strategy.

Generation (the session's prefill) and scoring (``PackEngine.score``) weigh prompts with the
same two functions: :func:`prompt_nll` (each member's mean negative log-likelihood of the
prompt's scored tokens, the log of its prompt perplexity) and :func:`prompt_weights` (the
fault check, then the strategy of :mod:`.weighting`). They differ only in where a member's
states come from, which the caller passes as ``states(k)``: its aligner's prompt states in
generation, the context's states in scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..alignment.projection import NaturalStates
from ..errors import MemberError
from .faults import non_finite_members, prefill_faults
from .fusion import nll_per_token, reference_scores
from .planning import OwnScore, PackView, Planned
from .weighting import compute_weights, fixed_weights

__all__ = ["States", "own_scale_nll", "prompt_nll", "prompt_weights"]

_ROWS = 4
"""Prompt positions projected at a time for 'opt' (see :func:`~.fusion.reference_scores`)."""

States = Callable[[int], torch.Tensor | NaturalStates]
"""Member k's states at the positions that predict the prompt's scored tokens [T, ...]."""


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


def prompt_nll(
    pack: PackView,
    planned: Planned,
    b: int,
    states: States,
    scoring: str,
    end: int,
    per_token: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """The members' mean NLLs [K] (float64) of prompt b's reference tokens from its first
    scored one to ``end``; None when there is none to score.

    ``scoring="own"`` uses every member's own tokenization (:func:`own_scale_nll`) where each
    member had some; otherwise each member is scored on the reference's tokens from
    ``states(k)``, and ``per_token`` (when given) receives member k's NLL of each of them
    (for :func:`prompt_weights`). A member that shares the reference's tokens reuses its own
    pass's score."""
    plan = planned.plans[b]
    r, first = plan.reference, plan.first_target
    if end <= first:
        return None
    if scoring == "own":
        nll = own_scale_nll(planned.own_nll[b], r)
        if nll is not None:
            return nll
    targets = torch.tensor(plan.ref_ids[first:end], dtype=torch.long)
    vocab = pack.members[r].vocab_size
    per_member = []
    for k, m in enumerate(pack.members):
        score = planned.own_nll[b][k]
        same_tokens = score is not None and score.tokens == end - first and planned.own_ids[k][b] == plan.inputs[k]
        if pack.maps(r, k) is None and same_tokens:
            per_member.append(torch.tensor(score.mean, dtype=torch.float64))  # the same tokens: reuse
            values = score.per_token
        else:
            with prefill_faults(m.name, (b,)):
                values = nll_per_token(m, states(k), targets, pack.maps(r, k), vocab)
            per_member.append(values.mean())
        if per_token is not None and values is not None:
            per_token[k] = values
    return torch.stack(per_member)


def prompt_weights(
    pack: PackView,
    planned: Planned,
    b: int,
    nll: torch.Tensor | None,
    states: States,
    end: int,
    strategy: tuple[str, float, Sequence[float] | None, str],
    on_fault: Callable[[list[int]], None],
    per_token: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Prompt b's weights [K] (float64) from the members' prompt NLLs ``nll`` (None: uniform).

    ``strategy`` is ``(weighting, tau, fixed weights, fusion)``; 'opt' reads ``states(k)`` on
    the tokens up to ``end``: their logits in the reference vocabulary, or under
    ``fusion="mixture"`` only their NLL of each token (taken from ``per_token``, filled by
    :func:`prompt_nll`, where it has them). Members whose NLL is not a finite
    number go to ``on_fault``, which raises to stop the request or returns to drop them: the
    weights are then computed among the others, and theirs are 0."""
    weighting, tau, fixed, fusion = strategy
    members = pack.members
    plan = planned.plans[b]
    r = plan.reference
    bad = non_finite_members(nll)
    if bad:
        on_fault(bad)
    keep = [k for k in range(len(members)) if k not in bad]
    targets = torch.tensor(plan.ref_ids[plan.first_target : end], dtype=torch.long)
    vocab = members[r].vocab_size

    def all_logits() -> list[torch.Tensor]:
        out = []
        for k in keep:
            with prefill_faults(members[k].name, (b,)):
                out.append(reference_scores(members[k], states(k), pack.maps(r, k), vocab, rows=_ROWS))
        return out

    def token_nlls() -> list[torch.Tensor]:
        out = []
        for k in keep:
            if per_token is not None and k in per_token:
                out.append(per_token[k])
                continue
            with prefill_faults(members[k].name, (b,)):
                out.append(nll_per_token(members[k], states(k), targets, pack.maps(r, k), vocab))
        return out

    weights = torch.zeros(len(members), dtype=torch.float64)
    if bad and weighting == "fixed":
        weights[keep] = fixed_weights(fixed or (), len(members))[keep]
        if not float(weights.sum()) > 0:
            reason = "its prompt perplexity is not a finite number; no other member has a fixed weight"
            raise MemberError(members[bad[0]].name, None, reason, (b,))
        return weights / weights.sum()
    kept_nll = None if nll is None else nll[keep]
    weights[keep] = compute_weights(
        weighting, kept_nll, all_logits, targets, len(keep), tau=tau, fixed=fixed, fusion=fusion, token_nlls=token_nlls
    )
    return weights
