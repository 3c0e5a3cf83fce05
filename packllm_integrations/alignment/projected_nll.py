"""A member's negative log-likelihood of reference tokens through natural alignment's
projection, without its [N, V] scores.

A member's prompt perplexity (its weight) and its own score of a continuation need, at each
position, one column of :meth:`~.projection.Projection.scores` and the log-sum-exp of all of
them. Both follow from the member's own distribution in O(W) per position instead of the
projection's dozen passes over the reference vocabulary V (262k columns for Gemma 3), because
every column of the projection is one of three kinds with a known total:

- reached (a member token's bytes start with it, or, healing, the rest of an extension of the
  cut token u does): the sum of those tokens' probabilities; all of them together sum to S,
  the partition's whole mass times p_prev(u) plus the extensions' mass;
- free (no token reaches it, and its MinED token is used by no other column): its MinED
  token's probability (times p_prev(u)) split among the columns mapped to that token;
- shared (the rest): together ``UNREACHED_SHARE`` times S, in proportion to their MinED
  tokens' probabilities.

So the log-sum-exp is ``log(S + F + 0.01 S)`` (F the free columns' mass), and a column's own
value needs only its own sources. The result equals :meth:`Projection.scores` followed by a
log-softmax at the target up to float32 rounding (tested). A position where a reached column
could round to probability 0 (all of it below float32's least positive number) goes through
the full scores instead, which then treat that column as unreached.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from ..backends.base import MemberBackend
from .projection import UNREACHED_SHARE, NaturalStates, Projection, _logits

__all__ = ["projected_nll"]

_BLOCK = 4096  # columns summed in float32 at a time (see _masses)
_TINY = torch.finfo(torch.float32).tiny * 2**-23  # float32's least positive (subnormal) number


@dataclass
class _Tables:
    reachable: torch.Tensor  # [V] bool: a partition target
    free_cols: torch.Tensor  # [F] the free columns
    free_mined: torch.Tensor  # [F] their MinED tokens (index into the floor-extended row)
    free_inv: torch.Tensor  # [F] 1 / columns mapped to that token
    is_free: torch.Tensor  # [V] bool
    free_pos: torch.Tensor  # [V] a free column's index in free_cols (-1: not free)
    shared_count: torch.Tensor  # [W + 1]: shared columns mapped to each member token
    free_weight: torch.Tensor  # [W + 1]: the free columns' shares of each member token, summed
    kinds: torch.Tensor  # [W, 3]: per member token, its weight in the partition, free and shared masses
    is_shared: torch.Tensor  # [V] bool (before any extension reaches a column)
    n_shared: int
    by_token: dict[int, tuple[torch.Tensor, torch.Tensor, set[int]]]  # see _reached


_tables: weakref.WeakKeyDictionary[Projection, _Tables] = weakref.WeakKeyDictionary()


def _tables_of(proj: Projection, width: int) -> _Tables:
    found = _tables.get(proj)
    if found is None:
        mined = proj.vmap.output[: proj.vocab]
        reachable = torch.zeros(proj.vocab, dtype=torch.bool)
        reachable[proj._dst] = True
        free_cols = proj._free.nonzero().squeeze(-1)
        shared = ~reachable & ~proj._free
        free_pos = torch.full((proj.vocab,), -1, dtype=torch.long)
        free_pos[free_cols] = torch.arange(len(free_cols))
        shared_count = torch.bincount(mined[shared], minlength=width + 1).float()
        free_share = (-proj._free_shift[free_cols]).exp().float()  # 1 / columns sharing a free column's token
        free_weight = torch.zeros(width + 1).index_add_(0, mined[free_cols], free_share)
        found = _Tables(
            reachable=reachable,
            free_cols=free_cols,
            free_mined=mined[free_cols],
            free_inv=free_share,
            is_free=proj._free.clone(),
            free_pos=free_pos,
            shared_count=shared_count,
            free_weight=free_weight,
            kinds=torch.stack(
                [torch.zeros(width).index_fill_(0, proj._src, 1.0), free_weight[:width], shared_count[:width]], 1
            ),
            is_shared=shared,
            n_shared=int(shared.sum()),
            by_token={},
        )
        _tables[proj] = found
    return found


@torch.inference_mode()
def projected_nll(
    proj: Projection, member: MemberBackend, states: NaturalStates, targets: torch.Tensor
) -> torch.Tensor:
    """``-log softmax(proj.scores(member, states))[i, targets[i]]`` for each position i [N]
    (float64), computed from the member's own distribution (see the module docstring)."""
    lp = torch.log_softmax(_logits(member, states.last), dim=-1)  # [N, W]
    width = lp.shape[-1]
    t = _tables_of(proj, width)
    least = lp.min(dim=-1).values.exp()  # [N]: no partition source's probability is below it
    floor = least if proj.vmap.has_floor else lp.new_zeros(len(lp))

    def pf(i: int, cols: torch.Tensor) -> torch.Tensor:  # row i's probabilities at cols (width: the floor's)
        return torch.where(cols < width, lp[i, cols.clamp(max=width - 1)].exp(), floor[i])

    # The partition's, the free and the shared columns' masses: products with per-token weights
    masses = _masses(lp, t.kinds)  # [N, 3], no [N, sources] copy
    part = masses[:, 0]
    free_mass = masses[:, 1] + floor.double() * float(t.free_weight[width])
    shared_mass = masses[:, 2] + floor.double() * float(t.shared_count[width])  # only a shared target reads it

    def smallest(i: int, scale: float) -> float:  # the least partition source's probability, times scale
        if float(least[i]) * scale >= _TINY * 2 or not len(proj._src):
            return 1.0  # no source can round to 0: the bound is enough
        return float(lp[i].index_select(0, proj._src).min().exp()) * scale

    heal = states.has_prev.tolist() if proj.heal else [False] * len(states)
    prev_rows = [i for i, h in enumerate(heal) if h]
    prev_at = {i: j for j, i in enumerate(prev_rows)}  # position -> its row of lp_prev
    lp_prev = None
    if prev_rows:
        lp_prev = (
            states.prev_logprobs[prev_rows]
            if states.prev_logprobs is not None
            else torch.log_softmax(_logits(member, states.prev[prev_rows]), dim=-1)
        )
    out = torch.empty(len(states), dtype=torch.float64)
    slow: list[int] = []
    for i, y in enumerate(targets.tolist()):
        sources = proj.column_sources(y)
        own = float(lp[i, sources].exp().sum(dtype=torch.float64)) if len(sources) else 0.0
        scale, log_scale, n_shared = 1.0, 0.0, None
        total, free, shared = float(part[i]), float(free_mass[i]), float(shared_mass[i])
        ext_to_y = 0.0
        if heal[i]:
            j = prev_at[i]
            u = int(states.last_ids[i])
            log_scale = float(lp_prev[j, u])  # type: ignore[index]
            scale = math.exp(log_scale)
            src, dst = proj.extensions(u)
            p_ext = lp_prev[j].index_select(0, src).exp() if src.numel() else lp_prev.new_zeros(0)  # type: ignore[index]
            total = total * scale + float(p_ext.sum(dtype=torch.float64))
            free, shared = free * scale, shared * scale
            if p_ext.numel():
                positive = bool(p_ext.min() > 0)  # else a column only an underflowed token reaches stays unreached
                at, mined, columns = _reached(t, proj, u, dst) if positive else _reached(t, proj, None, dst[p_ext > 0])
                free -= float((pf(i, t.free_mined[at]) * t.free_inv[at]).sum(dtype=torch.float64)) * scale
                shared -= float(pf(i, mined).sum(dtype=torch.float64)) * scale
                n_shared = t.n_shared - mined.numel()
                if y in columns:
                    ext_to_y = float(p_ext[dst == y].sum(dtype=torch.float64))
            if smallest(i, scale) < _TINY * 2:
                slow.append(i)  # a partition column may round to 0 in float32
                continue
        elif smallest(i, 1.0) < _TINY * 2:
            slow.append(i)
            continue
        value = own * scale + ext_to_y
        if n_shared is None:
            n_shared = t.n_shared
        share = max(total, 1e-30) * UNREACHED_SHARE
        lse = math.log(total + max(free, 0.0) + (share if n_shared > 0 else 0.0))
        if value > 0:
            score = math.log(value)
        else:
            mined_y = int(proj.vmap.output[y])
            base = math.log(max(float(pf(i, torch.tensor([mined_y]))[0]), 1e-300)) + log_scale
            if bool(t.is_free[y]):
                score = base - float(proj._free_shift[y])
            else:
                score = base - math.log(max(shared, 1e-300)) + math.log(share)
        out[i] = lse - score
    if slow:
        rows = torch.tensor(slow)
        full = proj.scores(member, _rows(states, slow))
        picked = full.gather(-1, targets[rows, None]).squeeze(-1)
        out[rows] = (torch.logsumexp(full, dim=-1) - picked).double()
    return out


def _masses(lp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``lp.exp() @ weights`` [N, K] (float64), a block of ``_BLOCK`` columns at a time: each
    block's probabilities are made and used while in cache, its float32 products added in
    float64 (one float32 sum over 150k columns loses four digits)."""
    out = torch.zeros(len(lp), weights.shape[-1], dtype=torch.float64)
    for start in range(0, lp.shape[-1], _BLOCK):
        out += (lp[:, start : start + _BLOCK].exp() @ weights[start : start + _BLOCK]).double()
    return out


def _reached(
    t: _Tables, proj: Projection, u: int | None, dst: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, set[int]]:
    """The free columns (their index in ``t.free_cols``) and the MinED tokens of the shared
    columns that extensions reaching ``dst`` take out of those kinds, and all the columns
    they reach; kept per cut token ``u``."""
    hit = t.by_token.get(u) if u is not None else None
    if hit is None:
        alive = dst.unique()
        hit = (t.free_pos[alive[t.is_free[alive]]], proj.vmap.output[alive[t.is_shared[alive]]], set(alive.tolist()))
        if u is not None:
            t.by_token[u] = hit
    return hit


def _rows(states: NaturalStates, rows: list[int]) -> NaturalStates:
    index = torch.tensor(rows)
    return NaturalStates(
        states.last[index],
        states.prev[index],
        states.last_ids[index],
        states.has_prev[index],
        states.projection,
        None if states.prev_logprobs is None else states.prev_logprobs[index],
    )
