"""Planning a request: each prompt's reference member and what every member reads.

With ``reference`` None, each member first scores its own tokenization of the prompt and
the lowest negative log-likelihood per byte wins (``reference_by="byte"``, the default) or
the lowest perplexity per token (``"token"``, the authors' rule); those passes are kept for
reuse. Then the reference's ids are translated for every member ("mined" inputs). Natural
alignment walks a member over the reference's text instead (:mod:`.aligners`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..alignment.mined import VocabMap
from ..alignment.natural import check_window, common_prefix, start_ids, token_ends
from ..alignment.projection import Projection
from ..backends.base import MemberBackend, Prefill
from ..errors import PackLLMError
from .faults import prefill_faults
from .fusion import nll_per_token

__all__ = [
    "PackView",
    "PromptPlan",
    "Planned",
    "OwnScore",
    "Spans",
    "plan_prompts",
    "scored_from",
    "leading_specials",
    "start_state",
]


def _no_deadline() -> None:
    return None


@dataclass(frozen=True)
class PackView:
    """A request's members and the engine's look-ups between their vocabularies.

    ``maps(r, k)`` is the vocabulary map from member r's vocabulary to member k's (None: the
    same vocabulary); ``projections(r, k)`` natural alignment's projection (None likewise);
    ``checkpoint()`` is called before every forward pass of the request and raises once its
    deadline has passed.
    """

    members: Sequence[MemberBackend]
    maps: Callable[[int, int], VocabMap | None]
    projections: Callable[[int, int], Projection | None]
    checkpoint: Callable[[], None] = _no_deadline


Spans = Sequence[Sequence[tuple[int, int]]] | None
"""Per member, the character ranges of a prompt's text that its prompt score counts (a chat
prompt's messages in each member's rendering); None: all of it."""


@dataclass(frozen=True)
class OwnScore:
    """A member's score of a prompt in its own tokenization."""

    total: float  # summed NLL of the scored tokens
    tokens: int  # number of scored tokens
    num_bytes: int  # UTF-8 bytes of the text those tokens stand for
    per_token: torch.Tensor | None = field(default=None, compare=False, repr=False)  # each token's NLL [tokens]

    @property
    def mean(self) -> float:
        return self.total / self.tokens


@dataclass
class PromptPlan:
    """How one prompt is read by the pack: its reference member and each member's input ids.

    ``inputs[k]``: what member k reads in "mined" alignment: its own leading special ids
    (its BOS, if its tokenizer adds one) and the reference's text ids translated one-for-one;
    member k's position ``t + shifts[k]`` stands for the reference's position ``t``.
    ``first_target``: the first reference position whose token is scored (see
    :func:`scored_from`).
    """

    reference: int
    ref_ids: list[int]
    inputs: list[list[int]]
    shifts: list[int]
    first_target: int


@dataclass
class Planned:
    """What :func:`plan_prompts` found: plans, and each member's own-tokenization pass."""

    plans: list[PromptPlan]
    own_ids: list[list[list[int]]]  # [member][prompt] the member's own tokenization
    own_passes: dict[int, Prefill]  # member -> its prefill on own_ids
    own_nll: list[list[OwnScore | None]]  # [prompt][member]
    translated: dict[int, Prefill] = field(default_factory=dict)

    def translated_states(self, pack: PackView, k: int, b: int, start: int, stop: int) -> torch.Tensor:
        """Member k's states at the reference positions ``start`` to ``stop`` of prompt b ("mined").

        A position before the member's first (the reference's BOS, for a member whose
        tokenizer adds none) gets the member's state after its start of text. A prompt whose
        inputs for member k are its own tokens (k is the reference, or shares its tokenizer)
        reads them from k's own pass: a batch whose prompts chose other references for the
        rest costs no second pass for it."""
        shift = self.plans[b].shifts[k]
        done = self.own_passes.get(k)
        if done is None or self.plans[b].inputs[k] != self.own_ids[k][b]:
            done = self.translated_pass(pack, k)
        states = done.row(b)[max(0, start + shift) : stop + shift]
        if start + shift < 0:
            before = start_state(pack.members[k])[None].expand(-(start + shift), -1)
            states = torch.cat([before.to(states.device, states.dtype), states])
        return states

    def translated_pass(self, pack: PackView, k: int) -> Prefill:
        """Member k's pass on its "mined" inputs: its own pass when that is the same ids, else run once."""
        if k not in self.translated:
            done = self.own_passes.get(k)
            if done is None or any(p.inputs[k] != self.own_ids[k][b] for b, p in enumerate(self.plans)):
                pack.checkpoint()
                with prefill_faults(pack.members[k].name, range(len(self.plans))):
                    done = pack.members[k].prefill([p.inputs[k] for p in self.plans], checkpoint=pack.checkpoint)
            self.translated[k] = done
        return self.translated[k]


def plan_prompts(
    pack: PackView,
    texts: Sequence[Sequence[str]],
    reference: int | None,
    prompt_texts: Sequence[Sequence[str]] | None = None,
    own_scoring: bool = False,
    rollback: bool = False,
    by_bytes: bool = False,
    spans: Sequence[Spans] | None = None,
) -> Planned:
    """Choose each prompt's reference member and translate its tokens for every member.

    ``texts[b][k]`` is sequence b as member k reads it; ``reference`` a fixed reference
    member's index (None: chosen per prompt). Only the leading tokens that encode
    ``prompt_texts[b][k]`` are scored when given (a context before a continuation).
    ``own_scoring`` computes the own-tokenization scores even when the reference is fixed;
    ``rollback`` makes the passes' caches croppable (natural alignment); ``by_bytes`` chooses
    the reference by the lowest NLL per byte instead of per token (``reference_by="byte"``).
    ``spans[b]`` (None: all of it) limits prompt b's own-tokenization scores to the tokens
    that overlap those character ranges of each member's text (a chat prompt's messages).
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
    leads = [[leading_specials(m, ids) for ids in own[k]] for k, m in enumerate(members)]
    all_bos = [all(leads[k][b] > 0 for k in range(len(members))) for b in range(len(texts))]
    passes: dict[int, Prefill] = {}
    own_nll: list[list[OwnScore | None]] = [[None] * len(members) for _ in texts]
    if (reference is None or own_scoring) and len(members) > 1:
        for k in range(len(members)):
            passes[k] = _own_pass(
                pack,
                k,
                own[k],
                scored[k],
                [scored_from(leads[k][b], all_bos[b]) for b in range(len(texts))],
                rollback,
                own_nll,
                [None if spans is None or spans[b] is None else (texts[b][k], spans[b][k]) for b in range(len(texts))],
            )
    if reference is None and len(members) > 1:
        count = range(len(members))
        refs = [min(count, key=lambda k, b=b: (_mean_or_inf(own_nll[b][k], by_bytes), k)) for b in range(len(texts))]
    else:
        refs = [reference or 0] * len(texts)
    plans = []
    for b, r in enumerate(refs):
        ref_ids, lead = own[r][b], leads[r][b]
        inputs, shifts = [], []
        for k, m in enumerate(members):
            vmap = pack.maps(r, k)
            if vmap is None:
                inputs.append(list(ref_ids))
            else:  # the member starts the text as its own tokenizer does, then reads the translation
                text = vmap.input[torch.tensor(ref_ids[lead:], dtype=torch.long)].tolist()
                inputs.append(own[k][b][: leads[k][b]] + text)
            shifts.append(len(inputs[k]) - len(ref_ids))
            check_window(m, len(inputs[k]))
        first = scored_from(lead, all_bos[b])
        plans.append(PromptPlan(r, list(ref_ids), inputs, shifts, first))
    return Planned(plans=plans, own_ids=own, own_passes=passes, own_nll=own_nll)


def _own_pass(
    pack: PackView,
    k: int,
    own: list[list[int]],
    scored: list[int],
    firsts: list[int],
    rollback: bool,
    own_nll: list[list[OwnScore | None]],
    within: Sequence[tuple[str, Sequence[tuple[int, int]]] | None],
) -> Prefill:
    """Member k's pass on its own tokenization of every prompt; each prompt's score of the
    tokens from ``firsts[b]`` to ``scored[b]`` goes into ``own_nll[b][k]``, of those of them
    that overlap the character ranges ``within[b] = (text, ranges)`` where it is given (and
    some token does)."""
    m = pack.members[k]
    pack.checkpoint()
    with prefill_faults(m.name, range(len(own))):
        done = m.prefill(own, rollback, pack.checkpoint)
        for b, ids in enumerate(own):
            n, first = scored[b], firsts[b]
            if n > first:
                states = done.row(b, n - 1)[first - 1 :]
                per_token = nll_per_token(m, states, torch.tensor(ids[first:n]), None, m.vocab_size)
                text = m.decode(ids[first:n])
                own_nll[b][k] = OwnScore(float(per_token.sum()), n - first, len(text.encode("utf-8")), per_token)
                if within[b] is not None:
                    own_nll[b][k] = _within(m, ids, first, per_token, *within[b]) or own_nll[b][k]  # type: ignore[misc]
    return done


def _within(
    member: MemberBackend,
    ids: list[int],
    first: int,
    per_token: torch.Tensor,
    text: str,
    ranges: Sequence[tuple[int, int]],
) -> OwnScore | None:
    """The score of the tokens ``ids[first:]`` that overlap ``ranges`` of ``text`` (None: no token
    does, or the tokenizer gives no character offsets)."""
    try:
        ends = token_ends(member, text, ids)
    except PackLLMError:  # a tokenizer without offsets: the whole text is scored
        return None
    keep, num_bytes = [], 0
    for i in range(first, first + len(per_token)):
        start, end = ends[i - 1] if i else 0, ends[i]
        if any(start < e and end > s for s, e in ranges):  # overlaps (a token inside a character: within)
            keep.append(i - first)
            num_bytes += len(text[start:end].encode("utf-8"))
    if not keep:
        return None
    kept = per_token[keep]
    return OwnScore(float(kept.sum()), len(keep), num_bytes, kept)


def leading_specials(member: MemberBackend, ids: Sequence[int]) -> int:
    """How many ids the member's tokenizer put in front of the text (its BOS: 0 or 1, mostly)."""
    return common_prefix(member.encode(""), ids)


def scored_from(lead: int, every_member_adds_bos: bool) -> int:
    """The first position whose token a prompt perplexity scores, given ``lead`` leading
    special ids: the first text token only when every member has a BOS to predict it from
    (a member whose tokenizer adds none has nothing before it), else the second.

    So every member is scored on the same span of the text, whichever member's tokenizer
    is the reference and whether that one adds a BOS; a pack of one tokenizer scores what it
    always did (everything after the BOS, or after the first token without one).

    >>> scored_from(1, True), scored_from(1, False), scored_from(0, False)
    (1, 2, 1)
    """
    return lead if every_member_adds_bos else lead + 1


def start_state(member: MemberBackend) -> torch.Tensor:
    """The member's state after its start of text alone (its BOS, else its EOS) [S]."""
    return member.prefill([start_ids(member)]).last[0]


def _mean_or_inf(score: OwnScore | None, by_bytes: bool = False) -> float:
    """A member's own mean NLL per token (per byte with ``by_bytes``) for choosing the
    reference (never one that is not finite)."""
    if score is None:
        return math.inf
    mean = score.total / max(score.num_bytes, 1) if by_bytes else score.mean
    return mean if math.isfinite(mean) else math.inf
