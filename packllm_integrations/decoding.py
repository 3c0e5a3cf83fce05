"""The decoding session: prefill, weights, then one fused step at a time.

A :class:`Session` holds all mutable state of one request (a batch of prompts): each
member's KV cache, attention mask and positions, and per prompt its weights, text buffer
and stop matcher. Nothing is shared between sessions; streaming and non-streaming use
this one loop (:meth:`Session.events`).

Shapes: B prompts, K members, L padded length, W_k member k's logit width, V the
reference vocabulary of a prompt.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .alignment import VocabMap
from .config import GenerationConfig
from .errors import PromptTooLongError
from .events import Event, FinishEvent, GenerationResult, ScoreResult, TextEvent, Usage, WeightsEvent
from .members import Member
from .natural import (
    BatchReader,
    NaturalStates,
    common_prefix,
    natural_states,
    new_cache,
    projection,
    row_cache,
    token_ends,
)
from .sampling import sample
from .stopping import Detokenizer, StopMatcher
from .weighting import fixed_weights, opt_weights, sim_weights, top1_weights, uniform_weights

__all__ = ["Session", "MapLookup", "PromptPlan", "plan_prompts", "forward_rows", "reference_logits", "score_batch"]

MapLookup = Callable[[int, int], VocabMap | None]
"""(reference index, member index) -> the vocabulary map, or None for the same vocabulary."""

_CHUNK = 64  # prompt positions per chunk when turning hidden states into logits


@dataclass
class MemberRun:
    """One member's batched state: KV cache, attention mask, next positions, last logits."""

    cache: Any
    mask: torch.Tensor | None  # [B, L] or None when no row is padded
    positions: torch.Tensor  # [B] position of the next token
    logits: torch.Tensor  # [B, W] logits for the next token


def forward_rows(
    member: Member, rows: Sequence[Sequence[int]], full_cache: bool = False
) -> tuple[torch.Tensor, MemberRun, list[int]]:
    """Prefill ``member`` on a batch of id lists (left-padded).

    Returns the per-position states ([B, L, H] hidden states, or logits for members without
    a separable head), the member's run state, and each row's number of pad positions.
    ``full_cache``: keep every position in every cache layer (so rows can be split off and
    cropped, see :mod:`.natural`).
    """
    lengths = [len(r) for r in rows]
    width = max(lengths)
    pads = [width - n for n in lengths]
    pad_id = member.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    ids = torch.tensor([[pad_id] * p + list(r) for p, r in zip(pads, rows, strict=True)], dtype=torch.long)
    ids = ids.to(member.device)
    mask = position_ids = None
    if any(pads):
        mask = (torch.arange(width)[None, :] >= torch.tensor(pads)[:, None]).long().to(member.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    states, cache = member.run(ids, new_cache() if full_cache else None, mask, position_ids)
    run = MemberRun(
        cache=cache,
        mask=mask,
        positions=torch.tensor(lengths, device=member.device),
        logits=member.logits(states[:, -1, :]),
    )
    return states, run, pads


def reference_logits(
    member: Member, states: torch.Tensor | NaturalStates, vmap: VocabMap | None, vocab: int
) -> torch.Tensor:
    """A row's states [T, ...] as logits in the reference vocabulary [T, V] (float32).

    :class:`NaturalStates` (natural alignment) go through their projection."""
    if isinstance(states, NaturalStates):
        if states.projection is not None:
            return states.projection.scores(member, states)
        states = states.last
    logits = member.logits(states)
    return logits[..., :vocab] if vmap is None else vmap.member_logits(logits)


def _nll_per_token(member: Member, states: torch.Tensor, targets: torch.Tensor, vmap: VocabMap | None, vocab: int):
    """Negative log-likelihoods [T] of ``targets`` [T] given states [T, ...] (chunked)."""
    out = []
    for start in range(0, states.shape[0], _CHUNK):
        logits = reference_logits(member, states[start : start + _CHUNK], vmap, vocab)
        picked = logits.gather(-1, targets[start : start + _CHUNK, None].to(logits.device)).squeeze(-1)
        out.append((torch.logsumexp(logits, dim=-1) - picked).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


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
    own_runs: dict[int, tuple[torch.Tensor, MemberRun, list[int]]]  # member -> forward_rows on own_ids
    own_nll: list[list[OwnScore | None]]  # [prompt][member]
    translated: dict[int, tuple[torch.Tensor, MemberRun, list[int]]] = field(default_factory=dict)

    def translated_run(self, members: Sequence[Member], k: int) -> tuple[torch.Tensor, MemberRun, list[int]]:
        """Member k's pass on its "mined" inputs: its own pass when that is the same ids, else run once."""
        if k not in self.translated:
            run = self.own_runs.get(k)
            if run is None or any(p.inputs[k] != self.own_ids[k][b] for b, p in enumerate(self.plans)):
                run = forward_rows(members[k], [p.inputs[k] for p in self.plans])
            self.translated[k] = run
        return self.translated[k]


def plan_prompts(
    members: Sequence[Member],
    maps: MapLookup,
    texts: Sequence[Sequence[str]],
    reference: int | None,
    prompt_texts: Sequence[Sequence[str]] | None = None,
    own_scoring: bool = False,
    full_cache: bool = False,
) -> Planned:
    """Choose each prompt's reference member and translate its tokens for every member.

    ``texts[b][k]`` is sequence b as member k reads it. With ``reference`` None, each member
    first scores its own tokenization and the lowest perplexity wins (the authors' rule);
    only the leading tokens that encode ``prompt_texts[b][k]`` are scored when given (a
    context before a continuation). Those runs are kept for reuse. ``own_scoring`` computes
    the own-tokenization scores even when the reference is fixed; ``full_cache`` builds the
    runs' caches so that rows can be split off (natural alignment).
    """
    own = [[m.encode(row[k]) for row in texts] for k, m in enumerate(members)]
    scored = [[len(ids) for ids in own_k] for own_k in own]
    if prompt_texts is not None:
        scored = [
            [common_prefix(own[k][b], m.encode(prompt_texts[b][k])) for b in range(len(texts))]
            for k, m in enumerate(members)
        ]
    for k, m in enumerate(members):
        for ids in own[k]:
            if len(ids) >= m.context_window:
                raise PromptTooLongError(
                    "prompt", f"<{len(ids)} tokens>", f"at most {m.context_window - 1} tokens for member {m.name!r}"
                )
    runs: dict[int, tuple[torch.Tensor, MemberRun, list[int]]] = {}
    own_nll: list[list[OwnScore | None]] = [[None] * len(members) for _ in texts]
    if (reference is None or own_scoring) and len(members) > 1:
        for k, m in enumerate(members):
            states, run, pads = forward_rows(m, own[k], full_cache)
            runs[k] = (states, run, pads)
            for b, ids in enumerate(own[k]):
                n = scored[k][b]
                if n > 1:
                    row_states = states[b, pads[b] : pads[b] + n - 1]
                    targets = torch.tensor(ids[1:n])
                    per_token = _nll_per_token(m, row_states, targets, None, m.vocab_size)
                    text = m.tokenizer.decode(ids[1:n], skip_special_tokens=True)
                    own_nll[b][k] = OwnScore(float(per_token.sum()), n - 1, len(text.encode("utf-8")))
    if reference is None and len(members) > 1:
        refs = [min(range(len(members)), key=lambda k, b=b: (_inf(_mean(own_nll[b][k])), k)) for b in range(len(texts))]
    else:
        refs = [reference or 0] * len(texts)
    plans = []
    for b, r in enumerate(refs):
        ref_ids = own[r][b]
        inputs = []
        for k in range(len(members)):
            vmap = maps(r, k)
            inputs.append(list(ref_ids) if vmap is None else vmap.input[torch.tensor(ref_ids)].tolist())
        for k, m in enumerate(members):
            if len(inputs[k]) >= m.context_window:
                raise PromptTooLongError(
                    "prompt",
                    f"<{len(inputs[k])} tokens>",
                    f"at most {m.context_window - 1} tokens for member {m.name!r}",
                )
        plans.append(PromptPlan(reference=r, ref_ids=list(ref_ids), inputs=inputs))
    return Planned(plans=plans, own_ids=own, own_runs=runs, own_nll=own_nll)


def walk_states(
    members: Sequence[Member], maps: MapLookup, texts: Sequence[Sequence[str]], planned: Planned, k: int, b: int
) -> NaturalStates:
    """Member k's states at each reference position of sequence b, reading its own tokenization
    of the reference's text up to that position (natural alignment), with its projection."""
    plan = planned.plans[b]
    r = plan.reference
    text = texts[b][r]
    ends = token_ends(members[r], text, plan.ref_ids)
    prefilled = None
    run = planned.own_runs.get(k)
    if run is not None and texts[b][k] == text:
        states, member_run, pads = run
        n, pad = len(planned.own_ids[k][b]), pads[b]
        prefilled = (states[b, pad : pad + n], row_cache(member_run.cache, b, pad))
    vmap = maps(r, k)
    proj = projection(members[r], members[k], vmap) if vmap is not None else None
    return natural_states(members[k], text, ends, prefilled, proj)


def _exp(value: float | None) -> float | None:
    return None if value is None else math.exp(value)


def _mean(score: OwnScore | None) -> float | None:
    return None if score is None else score.mean


def _inf(value: float | None) -> float:
    return math.inf if value is None else value


@dataclass
class _Row:
    """One prompt's state in a session."""

    index: int
    plan: PromptPlan
    weights: torch.Tensor  # [K] float64
    nll: list[float | None]
    detok: Detokenizer
    stops: StopMatcher
    max_tokens: int
    texts: Sequence[str] = ()  # the prompt as each member reads it
    pieces: list[str] = field(default_factory=list)
    generated: int = 0
    finish: str | None = None
    read: Detokenizer | None = None  # decodes the fed tokens for members reading their own tokenization
    read_text: str = ""
    fed_ids: list[int] = field(default_factory=list)


def compute_weights(
    config: GenerationConfig,
    nll: torch.Tensor | None,
    logits: Callable[[], list[torch.Tensor]],
    targets: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """The prompt's weights [K] for ``config.weighting`` (uniform when ``nll`` is None)."""
    if config.weighting == "fixed":
        return fixed_weights(config.weights or (), k)
    if config.weighting == "uniform" or nll is None:
        return uniform_weights(k)
    if config.weighting == "sim":
        return sim_weights(nll, config.tau)
    if config.weighting == "top1":
        return top1_weights(nll)
    return opt_weights(nll, logits(), targets)


class Session:
    """One request: a batch of prompts decoded together, each with its own weights."""

    def __init__(
        self,
        members: Sequence[Member],
        maps: MapLookup,
        texts: Sequence[Sequence[str]],
        config: GenerationConfig,
        reference: int | None,
    ) -> None:
        self.members = list(members)
        self.maps = maps
        self.texts = texts
        self.config = config
        self.reference = reference
        self.generator: torch.Generator | None = None
        if config.temperature > 0 and config.seed is not None:
            self.generator = torch.Generator().manual_seed(config.seed)
        self.rows: list[_Row] = []
        self.runs: list[MemberRun | None] = []
        self.readers: list[BatchReader | None] = []
        self._width = 0  # the widest reference vocabulary of the batch

    # ---- prefill ------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self) -> list[WeightsEvent]:
        """Run every member once on the prompts; compute weights; return one event per prompt."""
        members, k_count, cfg = self.members, len(self.members), self.config
        own_scoring = cfg.scoring == "own"
        natural = cfg.alignment == "natural"
        planned = plan_prompts(
            members, self.maps, self.texts, self.reference, own_scoring=own_scoring or natural, full_cache=natural
        )
        plans = planned.plans
        # With natural alignment, a member that differs from some prompt's reference reads its
        # own tokenization through a BatchReader; the others decode in lockstep.
        reading = [natural and any(self.maps(p.reference, k) is not None for p in plans) for k in range(k_count)]
        self.readers = [self._readers(k, planned) if reading[k] else None for k in range(k_count)]
        walked: dict[tuple[int, int], NaturalStates] = {}
        limit = min(m.context_window for m in members)
        events = []
        for b, plan in enumerate(plans):
            r = plan.reference
            vocab = members[r].vocab_size
            length = len(plan.ref_ids)
            targets = torch.tensor(plan.ref_ids[1:])

            def row_states(k: int, b: int = b, length: int = length) -> torch.Tensor | NaturalStates:
                if reading[k]:
                    if (k, b) not in walked:
                        walked[k, b] = walk_states(members, self.maps, self.texts, planned, k, b)[: length - 1]
                    return walked[k, b]
                states, _, pads = planned.translated_run(members, k)
                return states[b, pads[b] : pads[b] + length - 1]

            nll_t = None
            nll: list[float | None] = [None] * k_count
            if length > 1:
                nll_t = own_scale_nll(planned.own_nll[b], r) if own_scoring else None
                if nll_t is None:
                    per_member = []
                    for k, m in enumerate(members):
                        score = planned.own_nll[b][k]
                        if self.maps(r, k) is None and score is not None and planned.own_ids[k][b] == plan.inputs[k]:
                            per_member.append(torch.tensor(score.mean, dtype=torch.float64))  # same tokens: reuse
                        else:
                            per_member.append(_nll_per_token(m, row_states(k), targets, self.maps(r, k), vocab).mean())
                    nll_t = torch.stack(per_member)
                nll = [float(v) for v in nll_t]
            else:
                warnings.warn(
                    f"prompt {b} has no token to score (one token): using uniform weights", RuntimeWarning, stacklevel=3
                )

            def all_logits(b: int = b, r: int = r, vocab: int = vocab) -> list[torch.Tensor]:
                return [reference_logits(m, row_states(k, b), self.maps(r, k), vocab) for k, m in enumerate(members)]

            weights = compute_weights(cfg, nll_t, all_logits, targets, k_count)
            ref_member = members[r]
            row = _Row(
                index=b,
                plan=plan,
                weights=weights,
                nll=nll,
                detok=Detokenizer(ref_member.tokenizer, plan.ref_ids),
                stops=StopMatcher(cfg.stop),
                max_tokens=min(cfg.max_new_tokens, limit - length),
                texts=self.texts[b],
            )
            if any(reading):
                row.read = Detokenizer(ref_member.tokenizer, plan.ref_ids)
            self.rows.append(row)
            events.append(self._weights_event(row))
        self.runs = []
        self._width = max(members[p.reference].vocab_size for p in plans)
        for k, m in enumerate(members):
            readers = self.readers[k]
            if readers is None:
                self.runs.append(planned.translated_run(members, k)[1])
                continue
            logits = torch.cat([self._reader_scores(k, b) for b in range(len(plans))]).to(m.device)
            self.runs.append(MemberRun(cache=None, mask=None, positions=torch.zeros(len(plans)), logits=logits))
        return events

    def _reader_scores(self, k: int, b: int) -> torch.Tensor:
        """Member k's reader of prompt b, in its reference's vocabulary [1, V_max] (padded with -inf)."""
        m, reader = self.members[k], self.readers[k]
        assert reader is not None
        r = self.rows[b].plan.reference
        vmap = self.maps(r, k)
        if vmap is None:
            scores = m.logits(reader.state[b][None])[:, : self.members[r].vocab_size]
        else:
            proj = projection(self.members[r], m, vmap)
            scores, logprobs = proj.scores_and_logprobs(m, reader.view(b, proj))
            reader.last_logprobs[b] = logprobs[0]
        width = self._width
        if scores.shape[-1] < width:
            scores = torch.cat([scores, scores.new_full((1, width - scores.shape[-1]), -math.inf)], dim=-1)
        return scores

    def _target(self, k: int, row: _Row) -> list[int]:
        """What member k reads for ``row`` now (natural alignment)."""
        if self.maps(row.plan.reference, k) is None:
            return row.plan.inputs[k] + row.fed_ids
        return self.members[k].encode(row.texts[k] + row.read_text)

    def _readers(self, k: int, planned: Planned) -> BatchReader:
        """Member k's :class:`BatchReader` over the prompts, started from its own pass when it has one."""
        m = self.members[k]
        targets = [
            plan.inputs[k] if self.maps(plan.reference, k) is None else planned.own_ids[k][b]
            for b, plan in enumerate(planned.plans)
        ]
        run = planned.own_runs.get(k)
        if run is None or targets != planned.own_ids[k]:
            run = forward_rows(m, targets, full_cache=True)
        states, member_run, pads = run
        return BatchReader.from_prefill(m, targets, states, member_run.cache, member_run.mask, pads)

    def _weights_event(self, row: _Row) -> WeightsEvent:
        names = [m.name for m in self.members]
        return WeightsEvent(
            index=row.index,
            weights={n: float(w) for n, w in zip(names, row.weights, strict=True)},
            prompt_perplexity={
                n: (math.exp(v) if v is not None else None) for n, v in zip(names, row.nll, strict=True)
            },
            reference=names[row.plan.reference],
            prompt_tokens=len(row.plan.ref_ids),
        )

    # ---- decode -------------------------------------------------------------------------

    def _fused(self, rows: list[int], r: int) -> torch.Tensor:
        """Fused logits [G, V] of the rows ``rows``, all with reference member ``r``."""
        vocab = self.members[r].vocab_size
        index = torch.tensor(rows)
        weights = torch.stack([self.rows[b].weights for b in rows]).float()  # [G, K]
        total = None
        for k, run in enumerate(self.runs):
            if run is None or not bool((weights[:, k] > 0).any()):
                continue
            logits = run.logits[index.to(run.logits.device)].to(self.members[r].device)
            vmap = self.maps(r, k)
            if self.readers[k] is not None:  # already in the reference vocabulary
                mapped = logits[:, :vocab]
            else:
                mapped = logits[:, :vocab] if vmap is None else vmap.member_logits(logits)
            term = mapped if bool((weights[:, k] == 1).all()) else mapped * weights[:, k, None].to(mapped.device)
            total = term if total is None else total + term
        if total is None:  # weights always sum to 1, so some member has a positive weight
            raise RuntimeError(f"no member has a positive weight for prompts {rows}")
        return total

    @torch.inference_mode()
    def choose(self) -> list[int]:
        """The next reference-vocabulary token of every prompt."""
        tokens = [0] * len(self.rows)
        groups: dict[int, list[int]] = {}
        for row in self.rows:
            groups.setdefault(row.plan.reference, []).append(row.index)
        cfg = self.config
        for r, rows in groups.items():
            picked = sample(self._fused(rows, r), cfg.temperature, cfg.top_k, cfg.top_p, self.generator)
            for b, t in zip(rows, picked.tolist(), strict=True):
                tokens[b] = int(t)
        return tokens

    @torch.inference_mode()
    def feed(self, tokens: list[int]) -> None:
        """Give every member the chosen tokens (mapped to its vocabulary) and step it once."""
        for row, t in zip(self.rows, tokens, strict=True):
            if row.read is not None and row.finish is None:
                row.fed_ids.append(t)
                row.read_text += row.read.add(t)
        for k, m in enumerate(self.members):
            run = self.runs[k]
            if run is None:
                continue
            reader = self.readers[k]
            if reader is not None:
                active = [b for b, row in enumerate(self.rows) if row.finish is None and float(row.weights[k]) > 0]
                reader.advance({b: self._target(k, self.rows[b]) for b in active})
                for b in active:
                    run.logits[b] = self._reader_scores(k, b)[0]
                continue
            if not any(float(row.weights[k]) > 0 for row in self.rows):
                self.runs[k] = None  # a member no prompt listens to stops here
                continue
            ids = []
            for row, t in zip(self.rows, tokens, strict=True):
                vmap = self.maps(row.plan.reference, k)
                ids.append(t if vmap is None else int(vmap.input[t]))
            step = torch.tensor(ids, device=m.device)[:, None]
            position_ids = None
            if run.mask is not None:
                run.mask = torch.cat([run.mask, run.mask.new_ones(len(ids), 1)], dim=1)
                position_ids = run.positions[:, None]
            run.logits, run.cache = m.run(step, run.cache, run.mask, position_ids, last_only=True)
            run.positions = run.positions + 1

    def _accept(self, row: _Row, token: int) -> str:
        """Record ``token`` for ``row``; return the text that may be emitted now."""
        row.generated += 1
        ref = self.members[row.plan.reference]
        if token in ref.eos_token_ids:
            row.finish = "eos"
            return row.stops.push(row.detok.flush()) + row.stops.flush()
        text = row.stops.push(row.detok.add(token))
        if row.stops.stopped:
            row.finish = "stop"
        elif row.generated >= row.max_tokens:
            row.finish = "length"
            text += row.stops.push(row.detok.flush())
            if row.stops.stopped:
                row.finish = "stop"
            text += row.stops.flush()
        return text

    def _result(self, row: _Row) -> GenerationResult:
        event = self._weights_event(row)
        return GenerationResult(
            text="".join(row.pieces),
            finish_reason=row.finish or "length",
            weights=event.weights,
            prompt_perplexity=event.prompt_perplexity,
            reference=event.reference,
            usage=Usage(prompt_tokens=event.prompt_tokens, completion_tokens=row.generated),
            index=row.index,
        )

    def events(self) -> Iterator[Event]:
        """The whole request as events: weights per prompt, text pieces, then results."""
        yield from self.prefill()
        for row in self.rows:
            if row.max_tokens < 1:
                row.finish = "length"
                yield FinishEvent(row.index, self._result(row))
        while any(row.finish is None for row in self.rows):
            tokens = self.choose()
            for row, token in zip(self.rows, tokens, strict=True):
                if row.finish is not None:
                    continue
                text = self._accept(row, token)
                if text:
                    row.pieces.append(text)
                    yield TextEvent(row.index, text)
                if row.finish is not None:
                    yield FinishEvent(row.index, self._result(row))
            if any(row.finish is None for row in self.rows):
                self.feed(tokens)


@torch.inference_mode()
def score_batch(
    members: Sequence[Member],
    maps: MapLookup,
    texts: Sequence[Sequence[str]],
    contexts: Sequence[Sequence[str]],
    configs: Sequence[GenerationConfig],
    reference: int | None,
    weights_on: str = "context",
) -> list[list[ScoreResult]]:
    """Fused log-likelihoods of continuations, for several weightings from one forward pass.

    ``texts[b][k]`` is context + continuation as member k reads it, ``contexts[b][k]`` the
    context alone. Weights come from the context's tokens (``weights_on="context"``, the
    default) or from the whole sequence (``"full"``, as the authors' code scored options).
    Configs may differ in alignment: each alignment's member states are computed once.
    Returns one list of results per config, in prompt order.
    """
    own_scoring = any(c.scoring == "own" for c in configs)
    natural = any(c.alignment == "natural" for c in configs)
    prompt_texts = None if weights_on == "full" else contexts
    planned = plan_prompts(
        members, maps, texts, reference, prompt_texts, own_scoring=own_scoring or natural, full_cache=natural
    )
    names = [m.name for m in members]
    out: list[list[ScoreResult]] = [[] for _ in configs]
    for b, plan in enumerate(planned.plans):
        r = plan.reference
        vocab = members[r].vocab_size
        ids = plan.ref_ids
        total = len(ids)
        n_ctx = max(1, common_prefix(ids, members[r].encode(contexts[b][r])))
        n_w = total if weights_on == "full" else n_ctx
        targets = torch.tensor(ids[1:n_w])
        cont = torch.tensor(ids[n_ctx:])
        text = texts[b][r]
        context = contexts[b][r]
        num_bytes = len(text[len(context) :].encode("utf-8")) if text.startswith(context) else len(text.encode("utf-8"))
        nll_own = own_scale_nll(planned.own_nll[b], r) if own_scoring and n_w > 1 else None
        for alignment in dict.fromkeys(c.alignment for c in configs):
            states = []  # per member [total, S]
            for k in range(len(members)):
                if alignment == "natural" and maps(r, k) is not None:
                    states.append(walk_states(members, maps, texts, planned, k, b)[:total])
                else:
                    st, _, pads = planned.translated_run(members, k)
                    states.append(st[b, pads[b] : pads[b] + total])
            nll_t = None
            if n_w > 1:
                nll_t = torch.stack(
                    [
                        _nll_per_token(m, states[k][: n_w - 1], targets, maps(r, k), vocab).mean()
                        for k, m in enumerate(members)
                    ]
                )
            chosen = [c for c, cfg in enumerate(configs) if cfg.alignment == alignment]
            weights, perplexity = {}, {}
            for c in chosen:
                cfg = configs[c]
                nll = nll_own if cfg.scoring == "own" and nll_own is not None else nll_t
                perplexity[c] = {n: (math.exp(float(nll[k])) if nll is not None else None) for k, n in enumerate(names)}
                weights[c] = compute_weights(
                    cfg,
                    nll,
                    lambda r=r, vocab=vocab, n_w=n_w, states=states: [
                        reference_logits(m, states[k][: n_w - 1], maps(r, k), vocab) for k, m in enumerate(members)
                    ],
                    targets,
                    len(members),
                )
            token_lp, greedy = _fused_continuation(members, maps, r, vocab, states, n_ctx, cont, weights)
            for c in chosen:
                out[c].append(
                    ScoreResult(
                        logprob=float(token_lp[c].sum()),
                        tokens=int(cont.numel()),
                        num_bytes=num_bytes,
                        is_greedy=greedy[c],
                        weights={n: float(w) for n, w in zip(names, weights[c], strict=True)},
                        prompt_perplexity=perplexity[c],
                        reference=names[r],
                        token_logprobs=token_lp[c].tolist(),
                    )
                )
    return out


def _fused_continuation(
    members: Sequence[Member],
    maps: MapLookup,
    r: int,
    vocab: int,
    states: Sequence[torch.Tensor],
    n_ctx: int,
    cont: torch.Tensor,
    weights: dict[int, torch.Tensor],
) -> tuple[dict[int, torch.Tensor], dict[int, bool]]:
    """Log-probabilities [C] of the continuation ``cont`` under each weighting (keyed like
    ``weights``), and whether it is the greedy choice; positions go in chunks so a long
    continuation never holds all its logits at once."""
    token_lp: dict[int, list[torch.Tensor]] = {c: [] for c in weights}
    greedy = dict.fromkeys(weights, True)
    used = [k for k in range(len(members)) if any(float(w[k]) > 0 for w in weights.values())]
    for start in range(0, cont.numel(), _CHUNK * 4):
        stop = min(start + _CHUNK * 4, cont.numel())
        at = slice(n_ctx - 1 + start, n_ctx - 1 + stop)
        mapped = {k: reference_logits(members[k], states[k][at], maps(r, k), vocab) for k in used}
        targets = cont[start:stop]
        for c, w in weights.items():
            fused = None
            for k in used:
                if float(w[k]) > 0:
                    term = mapped[k] * float(w[k])
                    fused = term if fused is None else fused + term
            if fused is None:  # weights always sum to 1
                raise RuntimeError("no member has a positive weight")
            logp = torch.log_softmax(fused, dim=-1)
            token_lp[c].append(logp.gather(-1, targets[:, None].to(logp.device)).squeeze(-1).double().cpu())
            greedy[c] = greedy[c] and bool((fused.argmax(dim=-1).cpu() == targets).all())
    empty = torch.zeros(0, dtype=torch.float64)
    return {c: torch.cat(v) if v else empty for c, v in token_lp.items()}, greedy
