"""Natural alignment's reference-vocabulary scores in a few passes over the vocabulary.

:meth:`~.projection.Projection.scores_and_logprobs` builds a member's [N, V] scores with a
dozen passes over the reference vocabulary (262k columns for Gemma 3): it scatters the
member's probabilities into V columns, then finds which columns were reached, which are free
and which share the rest, by comparing all V of them. Decoding runs it at every step for
every member read through a projection, and scoring at every position of a continuation.

Which column is of which kind does not depend on the step, only on the cut token ``u`` where
the projection heals (its extensions reach a few more columns): so the columns are split
into the three kinds once (:func:`~.projected_nll` keeps the tables), and a step writes
each kind's values straight into its columns:

- reached: the log of the member tokens' summed probabilities, over the reachable columns
  only (a third or less of V);
- free: the MinED token's log-probability, less the log of the columns sharing that token;
- shared: the MinED log-probabilities, normalised over the shared columns to
  ``UNREACHED_SHARE`` of the reached mass.

The result equals the full scores up to float32 rounding (tested). A row where a reachable
column's probability rounds to 0 (the full scores then count that column as unreached) is
computed by the full scores instead.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from ..backends.base import MemberBackend
from .projected_nll import _rows, _tables_of
from .projection import UNREACHED_SHARE, NaturalStates, Projection, _logits

__all__ = ["projected_scores"]


@dataclass
class _Layout:
    reach: torch.Tensor  # [R] the reachable columns, sorted
    reach_at: torch.Tensor  # [sources] each partition source's target, as an index into ``reach``
    free_cols: torch.Tensor  # [F]
    free_mined: torch.Tensor  # [F] their MinED tokens (into the floor-extended row)
    free_shift: torch.Tensor  # [F] log of the columns sharing that token
    shared_cols: torch.Tensor  # [S]
    shared_mined: torch.Tensor  # [S]
    shared_pos: torch.Tensor  # [V] a shared column's index in shared_cols (-1: not shared)
    heals: dict[int, _Heal]


@dataclass
class _Heal:
    """Where cut token u's extensions go: into reachable columns, or into columns of their own."""

    src_reach: torch.Tensor  # extensions whose target is reachable
    at_reach: torch.Tensor  # their targets, as indices into ``reach``
    src_extra: torch.Tensor  # the other extensions
    at_extra: torch.Tensor  # their targets, as indices into ``extra``
    extra: torch.Tensor  # the columns only an extension reaches
    shared_at: torch.Tensor  # which of them are shared (indices into shared_cols)


_layouts: weakref.WeakKeyDictionary[Projection, _Layout] = weakref.WeakKeyDictionary()


def _layout_of(proj: Projection, width: int) -> _Layout:
    found = _layouts.get(proj)
    if found is None:
        t = _tables_of(proj, width)
        reach = proj._dst.unique()  # sorted
        shared_cols = t.is_shared.nonzero().squeeze(-1)
        shared_pos = torch.full((proj.vocab,), -1, dtype=torch.long)
        shared_pos[shared_cols] = torch.arange(len(shared_cols))
        found = _Layout(
            reach=reach,
            reach_at=torch.searchsorted(reach, proj._dst),
            free_cols=t.free_cols,
            free_mined=t.free_mined,
            free_shift=proj._free_shift[t.free_cols],
            shared_cols=shared_cols,
            shared_mined=proj.vmap.output[shared_cols],
            shared_pos=shared_pos,
            heals={},
        )
        _layouts[proj] = found
    return found


def _heal_of(lay: _Layout, proj: Projection, u: int) -> _Heal:
    found = lay.heals.get(u)
    if found is None:
        src, dst = proj.extensions(u)
        at = torch.searchsorted(lay.reach, dst).clamp(max=max(len(lay.reach) - 1, 0))
        inside = lay.reach[at] == dst if len(lay.reach) else torch.zeros_like(dst, dtype=torch.bool)
        extra = dst[~inside].unique()
        found = _Heal(
            src_reach=src[inside],
            at_reach=at[inside],
            src_extra=src[~inside],
            at_extra=torch.searchsorted(extra, dst[~inside]),
            extra=extra,
            shared_at=lay.shared_pos[extra][lay.shared_pos[extra] >= 0],
        )
        lay.heals[u] = found
    return found


@torch.inference_mode()
def projected_scores(
    proj: Projection, member: MemberBackend, states: NaturalStates
) -> tuple[torch.Tensor, torch.Tensor]:
    """``proj.scores_and_logprobs(member, states)``: the reference-vocabulary scores [N, V] and
    the member's own log-probabilities after ``states.last`` [N, W], each kind of column
    written once (see the module docstring)."""
    lp_last = torch.log_softmax(_logits(member, states.last), dim=-1)
    n, width = lp_last.shape
    lay = _layout_of(proj, width)
    p_last = lp_last.exp()
    reached = lp_last.new_zeros(n, len(lay.reach)).index_add_(1, lay.reach_at, p_last.index_select(1, proj._src))
    extended = proj.vmap.with_floor(lp_last)
    free = extended.index_select(1, lay.free_mined) - lay.free_shift
    shared = extended.index_select(1, lay.shared_mined)
    extras: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    rows = states.has_prev.nonzero().squeeze(-1).tolist() if proj.heal else []
    if rows:
        if states.prev_logprobs is not None:
            lp_prev = states.prev_logprobs[rows]
        else:
            lp_prev = torch.log_softmax(_logits(member, states.prev[rows]), dim=-1)
        cut = states.last_ids[rows]
        at = torch.tensor(rows)
        lp_cut = lp_prev.gather(1, cut[:, None].to(lp_prev.device))  # [rows, 1]: log p_prev(u)
        reached[at] *= lp_cut.exp()
        free[at] += lp_cut
        p_prev = lp_prev.exp()
        for j, (i, u) in enumerate(zip(rows, cut.tolist(), strict=True)):
            heal = _heal_of(lay, proj, u)
            if heal.src_reach.numel():
                reached[i].index_add_(0, heal.at_reach, p_prev[j].index_select(0, heal.src_reach))
            if heal.extra.numel():
                mass = p_prev.new_zeros(len(heal.extra)).index_add_(0, heal.at_extra, p_prev[j, heal.src_extra])
                extras[i] = (heal.extra, mass)
                shared[i, heal.shared_at] = -math.inf  # reached here: out of the shared columns' total
    total = reached.sum(-1)
    for i, (_, mass) in extras.items():
        total[i] += mass.sum()
    share = total.clamp(min=1e-30).log() + math.log(UNREACHED_SHARE)
    shared = shared - torch.logsumexp(shared, dim=-1, keepdim=True).clamp(min=-1e30) + share[:, None]
    scores = torch.empty(n, proj.vocab, dtype=torch.float32, device=lp_last.device)
    scores.index_copy_(1, lay.free_cols, free)
    scores.index_copy_(1, lay.shared_cols, shared)
    scores.index_copy_(1, lay.reach, reached.log())
    for i, (extra, mass) in extras.items():
        scores[i, extra] = mass.log()
    slow = (reached <= 0).any(-1)
    for i, (_, mass) in extras.items():
        slow[i] |= bool((mass <= 0).any())
    if bool(slow.any()):  # a reachable column rounded to 0: the full scores count it as unreached
        at = slow.nonzero().squeeze(-1)
        scores[at] = proj.scores(member, _rows(states, at.tolist()))
    return scores, lp_last
