"""One aligner per member: how it reads the prompts and the chosen tokens, and its
next-token scores in each prompt's reference vocabulary.

The session sees every member through the same small surface, so its step has no
alignment branch::

    prompt_states(b, start, stop)   states that predict prompt b's reference tokens (weights)
    start(rows)                     first next-token scores, after the prompts
    reference_scores(rows, r, V)    scores [G, V] of some rows, in reference member r's vocabulary
    feed(tokens, rows)              read the chosen tokens (one step)
    name(union, rows)               score named candidates too (a member that ``names_tokens``;
                                    a Natural one: its own tokens the projection sends there)
    bounds(b, r, scores)            which scores are exact, and a bound on the rest (greedy naming)
    bad_rows(), close()             rows whose scores are unusable; stop stepping

Two kinds:

- :class:`Lockstep`: a member that shares the reference's vocabulary, or reads its tokens
  translated one-for-one through the MinED vocabulary map ("mined" alignment). One
  ``step`` per token.
- :class:`Natural`: a member that reads its own tokenization of the text ("natural"
  alignment), re-tokenized as text is generated (:class:`~..alignment.natural.BatchReader`),
  its next-token distribution projected into the reference vocabulary
  (:class:`~..alignment.projection.Projection`).

Shapes: B prompts, W the member's logits width, V a reference vocabulary.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..alignment.natural import BatchReader, natural_states, token_ends
from ..alignment.projected_scores import projected_scores
from ..alignment.projection import NaturalStates
from ..backends.base import Scores, SparseScores
from .faults import bad_rows, prefill_faults
from .fusion import in_reference
from .naming import Bounds
from .planning import PackView, Planned
from .rows import Row

__all__ = ["Aligner", "Lockstep", "Natural", "open_aligners", "walk_states", "NAMED_PER_ROW"]

NAMED_PER_ROW = 128
"""The most member tokens a :class:`Natural` member is asked for in one row and step (one
vLLM request's worth)."""


class Aligner(ABC):
    """Member ``k`` of a session, as the step sees it (see the module docstring)."""

    def __init__(self, pack: PackView, k: int, planned: Planned) -> None:
        self.pack, self.k, self.planned = pack, k, planned
        self.member = pack.members[k]
        self.next: Any = None  # next-token scores of every row; None once closed
        self.live = True

    @abstractmethod
    def prompt_states(self, b: int, start: int, stop: int) -> torch.Tensor | NaturalStates:
        """States [stop - start, ...] at prompt b's reference positions ``start`` to ``stop``."""

    @abstractmethod
    def start(self, rows: Sequence[Row]) -> None:
        """The first next-token scores of every row, after the prompts."""

    @abstractmethod
    def reference_scores(self, rows: torch.Tensor, r: int, vocab: int) -> torch.Tensor:
        """The next-token scores [G, V] of the rows indexed by ``rows`` [G] (all with reference
        member r) in r's vocabulary."""

    @abstractmethod
    def feed(self, tokens: Sequence[int], rows: Sequence[Row]) -> None:
        """Read each row's chosen token (a reference-vocabulary id) and step once."""

    def forget(self, b: int) -> None:  # noqa: B027 (most aligners keep nothing per prompt)
        """Prompt b is weighed: what was kept for its prompt states may go."""

    @property
    def names_tokens(self) -> bool:
        """Whether :meth:`name` asks the member for more (its backend scores named tokens)."""
        return False

    def name(self, union: Mapping[int, Sequence[int]], rows: Sequence[Row]) -> None:  # noqa: B027
        """Extend row b's next-token scores with the member's own scores of ``union[b]``
        (reference-vocabulary ids of row b's reference member)."""

    def set_size(self) -> int:
        """How many tokens a next-token set of the member holds (a sparse member's top-k, plus
        its padding); called only when :attr:`names_tokens`."""
        return int(self.next.ids.shape[-1])

    def bounds(self, b: int, r: int, scores: torch.Tensor) -> Bounds | None:
        """Row b's next-token ``scores`` [V] in r's vocabulary (its :meth:`reference_scores`),
        which of them the member gave, and the most the others can be (see :mod:`.naming`);
        None where no such bound is known."""
        return None if self.member.sparse else (scores, None, 0.0)

    def bad_rows(self) -> list[int]:
        """The rows whose next-token scores hold NaN, +inf or nothing finite."""
        return bad_rows(self.next) if self.live else []

    def close(self) -> None:
        """Stop stepping (no live prompt listens to this member any more)."""
        self.live = False
        self.next = None


class Lockstep(Aligner):
    """A member that reads the reference's tokens (translated through the vocabulary map when
    its vocabulary differs) and steps once per chosen token."""

    cache: Any = None

    def prompt_states(self, b: int, start: int, stop: int) -> torch.Tensor:
        with prefill_faults(self.member.name, (b,)):
            return self.planned.translated_states(self.pack, self.k, b, start, stop)

    def start(self, rows: Sequence[Row]) -> None:
        with prefill_faults(self.member.name, range(len(rows))):
            done = self.planned.translated_pass(self.pack, self.k)
            self.cache = done.cache
            self.next = self.member.scores(done.last)  # [B, W]

    def reference_scores(self, rows: torch.Tensor, r: int, vocab: int) -> torch.Tensor:
        scores: Scores = self.next
        picked = scores[rows.to(_device(scores))]
        return in_reference(self.member, picked, self.pack.maps(r, self.k), vocab)

    def feed(self, tokens: Sequence[int], rows: Sequence[Row]) -> None:
        ids = []
        for row, t in zip(rows, tokens, strict=True):
            vmap = self.pack.maps(row.plan.reference, self.k)
            ids.append(t if vmap is None else int(vmap.input[t]))
        self.next = self.member.step(self.cache, ids)

    @property
    def names_tokens(self) -> bool:
        return self.member.names_tokens

    def bounds(self, b: int, r: int, scores: torch.Tensor) -> Bounds | None:
        if not isinstance(self.next, SparseScores):
            return super().bounds(b, r, scores)
        top = getattr(self.member, "k", None)
        if top is None or self.pack.maps(r, self.k) is not None:
            return None
        given = dict(zip(self.next.ids[b].tolist(), self.next.logprobs[b].tolist(), strict=True))
        if len(given) < top:
            return None
        known = torch.zeros(scores.numel(), dtype=torch.bool)
        known[[t for t in given if 0 <= t < scores.numel()]] = True
        return scores, known, sorted(given.values(), reverse=True)[top - 1]  # a token outside is below the k-th

    def name(self, union: Mapping[int, Sequence[int]], rows: Sequence[Row]) -> None:
        named = {}
        for b, ids in union.items():
            vmap = self.pack.maps(rows[b].plan.reference, self.k)
            named[b] = list(ids) if vmap is None else [int(vmap.input[t]) for t in ids]
        self.next = self.member.named_scores(self.cache, self.next, named)

    def close(self) -> None:
        super().close()
        self.cache = None


class Natural(Aligner):
    """A member that reads its own tokenization of each prompt's text and of the text chosen so
    far; its scores are projected into each prompt's reference vocabulary."""

    def __init__(self, pack: PackView, k: int, planned: Planned, texts: Sequence[Sequence[str]]) -> None:
        super().__init__(pack, k, planned)
        self.texts = texts
        self._walks: dict[int, NaturalStates] = {}
        self._width = 0  # the widest reference vocabulary of the batch
        with prefill_faults(self.member.name, range(len(texts))):
            self.reader = self._reader()
        self._set_size = int(self.member.scores(self.reader.state[0][None]).ids.shape[-1]) if self.member.sparse else 0

    def _reader(self) -> BatchReader:
        """A reader over the prompts, started from the member's own pass when it has one."""
        planned, k = self.planned, self.k
        targets = [
            plan.inputs[k] if self.pack.maps(plan.reference, k) is None else planned.own_ids[k][b]
            for b, plan in enumerate(planned.plans)
        ]
        done = planned.own_passes.get(k)
        if done is None or targets != planned.own_ids[k]:
            self.pack.checkpoint()
            done = self.member.prefill(targets, rollback=True, checkpoint=self.pack.checkpoint)
        return BatchReader.from_prefill(self.member, targets, done)

    def prompt_states(self, b: int, start: int, stop: int) -> NaturalStates:
        if b not in self._walks:
            with prefill_faults(self.member.name, (b,)):
                self._walks[b] = walk_states(self.pack, self.texts, self.planned, self.k, b)
        return self._walks[b][start:stop]

    def forget(self, b: int) -> None:
        self._walks.pop(b, None)

    def start(self, rows: Sequence[Row]) -> None:
        self._width = max(self.pack.members[row.plan.reference].vocab_size for row in rows)
        with prefill_faults(self.member.name, range(len(rows))):
            scores = self._scores_of(rows)
        self.next = scores.to(self.member.device)  # [B, V_max], padded with -inf

    def reference_scores(self, rows: torch.Tensor, r: int, vocab: int) -> torch.Tensor:
        return self.next[rows.to(self.next.device)][:, :vocab]

    def feed(self, tokens: Sequence[int], rows: Sequence[Row]) -> None:
        live = [row for row in rows if row.finish is None and float(row.weights[self.k]) > 0]
        self.reader.advance({row.index: self._reading(row) for row in live})
        if live:
            self.next[[row.index for row in live]] = self._scores_of(live).to(self.next.device)

    @property
    def names_tokens(self) -> bool:
        return self.member.names_tokens

    def set_size(self) -> int:
        return self._set_size

    def name(self, union: Mapping[int, Sequence[int]], rows: Sequence[Row]) -> None:
        """Ask the member for its own tokens that the projection sends to each row's named
        reference candidates, and project those rows again: a candidate outside the member's
        top-k is then scored from its own log-probabilities, not the set's floor.

        Two sets per row, one request each (at most ``NAMED_PER_ROW`` tokens): after the
        member's last token u, the tokens the partition sends to the candidates
        (:meth:`~..alignment.projection.Projection.sources`); where the projection heals,
        before u, u itself and its extensions that reach the candidates
        (:meth:`~..alignment.projection.Projection.extension_sources`).
        """
        reader, member = self.reader, self.member
        prefixes: list[list[int]] = []  # what the member has read before each asked set
        sets: list[SparseScores] = []
        named: dict[int, list[int]] = {}
        asked: dict[int, tuple[int, int | None]] = {}  # row -> (its set after u, before u)

        def ask(ids: list[int], state: torch.Tensor, tokens: list[int]) -> int:
            prefixes.append(ids)
            sets.append(member.scores(state[None]))
            named[len(sets) - 1] = tokens
            return len(sets) - 1

        for b, columns in union.items():
            if float(rows[b].weights[self.k]) <= 0:
                continue  # the reader does not follow this row
            proj = self.pack.projections(rows[b].plan.reference, self.k)
            if proj is None:
                asked[b] = (ask(reader.ids[b], reader.state[b], list(columns)), None)
                continue
            now = ask(reader.ids[b], reader.state[b], proj.sources(columns, NAMED_PER_ROW))
            before = None
            if proj.heal and bool(reader.view(b, proj).has_prev[0]):
                u = reader.ids[b][-1]
                extending = proj.extension_sources(u, columns, NAMED_PER_ROW - 1)
                before = ask(reader.ids[b][:-1], reader.prev[b], [u, *extending])
            asked[b] = (now, before)
        if not asked:
            return
        wider = member.named_scores(prefixes, SparseScores.stacked(sets), named)  # a served member's cache: its ids

        def packed(i: int) -> torch.Tensor:
            return torch.cat([wider.ids[i].to(wider.logprobs.dtype), wider.logprobs[i]])

        for b, (now, before) in asked.items():
            reader.rescored(b, packed(now), None if before is None else packed(before))
            self.next[b] = self._scores_of([rows[b]])[0].to(self.next.device)

    def _reading(self, row: Row) -> list[int]:
        """What the member reads for ``row`` now."""
        if self.pack.maps(row.plan.reference, self.k) is None:
            return row.plan.inputs[self.k] + row.fed_ids
        return self.member.encode(row.texts[self.k] + row.read_text)

    def _scores_of(self, rows: Sequence[Row]) -> torch.Tensor:
        """The reader's scores for ``rows`` in their references' vocabularies [len(rows), V_max] (padded
        with -inf): one call per reference (head and projection batched); a sparse member's sets, per row."""
        m, reader = self.member, self.reader
        out = torch.full((len(rows), self._width), -math.inf, device=m.device)
        for r in sorted({row.plan.reference for row in rows}):
            at = [i for i, row in enumerate(rows) if row.plan.reference == r]
            proj = self.pack.projections(r, self.k)
            for part in [[i] for i in at] if m.sparse else [at]:
                index = [rows[i].index for i in part]
                if proj is None:
                    state = torch.stack([reader.state[b] for b in index])
                    scores = in_reference(m, m.scores(state), None, self.pack.members[r].vocab_size)
                else:
                    scores, logprobs = projected_scores(proj, m, reader.views(index, proj))
                    for j, b in enumerate(index):
                        reader.last_logprobs[b] = logprobs[j]
                out[part, : scores.shape[-1]] = scores.to(out.device)
        return out


def open_aligners(pack: PackView, texts: Sequence[Sequence[str]], planned: Planned, natural: bool) -> list[Aligner]:
    """One aligner per member: with natural alignment, a member whose vocabulary differs from
    some prompt's reference reads its own tokenization (:class:`Natural`); every other member
    steps in lockstep."""
    out: list[Aligner] = []
    for k in range(len(pack.members)):
        reads = natural and any(pack.maps(p.reference, k) is not None for p in planned.plans)
        out.append(Natural(pack, k, planned, texts) if reads else Lockstep(pack, k, planned))
    return out


def walk_states(pack: PackView, texts: Sequence[Sequence[str]], planned: Planned, k: int, b: int) -> NaturalStates:
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
    return natural_states(member, text, ends, prefilled, pack.projections(r, k), pack.checkpoint)


def _device(scores: Any) -> torch.device:
    return scores.ids.device if hasattr(scores, "ids") else scores.device
