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


def forward_rows(member: Member, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, MemberRun, list[int]]:
    """Prefill ``member`` on a batch of id lists (left-padded).

    Returns the per-position states ([B, L, H] hidden states, or logits for members without
    a separable head), the member's run state, and each row's number of pad positions.
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
    states, cache = member.run(ids, None, mask, position_ids)
    run = MemberRun(
        cache=cache,
        mask=mask,
        positions=torch.tensor(lengths, device=member.device),
        logits=member.logits(states[:, -1, :]),
    )
    return states, run, pads


def reference_logits(member: Member, states: torch.Tensor, vmap: VocabMap | None, vocab: int) -> torch.Tensor:
    """A row's states [T, ...] as logits in the reference vocabulary [T, V] (float32)."""
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
    inputs: list[list[int]]  # per member


def plan_prompts(
    members: Sequence[Member],
    maps: MapLookup,
    texts: Sequence[Sequence[str]],
    reference: int | None,
    prompt_texts: Sequence[Sequence[str]] | None = None,
    own_scoring: bool = False,
) -> tuple[list[PromptPlan], dict[int, tuple[torch.Tensor, MemberRun, list[int]]], list[list[OwnScore | None]]]:
    """Choose each prompt's reference member and translate its tokens for every member.

    ``texts[b][k]`` is sequence b as member k reads it. With ``reference`` None, each member
    first scores its own tokenization and the lowest perplexity wins (the authors' rule);
    only the leading tokens that encode ``prompt_texts[b][k]`` are scored when given (a
    context before a continuation). Those runs are returned for reuse when a member's input
    ids turn out to be the same. Also returns the own-tokenization scores (None: not
    computed); ``own_scoring`` computes them even when the reference is fixed.
    """
    own = [[m.encode(row[k]) for row in texts] for k, m in enumerate(members)]
    scored = [[len(ids) for ids in own_k] for own_k in own]
    if prompt_texts is not None:
        scored = [
            [prefix_length(own[k][b], m.encode(prompt_texts[b][k])) for b in range(len(texts))]
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
            states, run, pads = forward_rows(m, own[k])
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
    for k in list(runs):
        if any(plans[b].inputs[k] != own[k][b] for b in range(len(texts))):
            del runs[k]
    return plans, runs, own_nll


def prefix_length(full: Sequence[int], prefix: Sequence[int]) -> int:
    """How many leading ids of ``full`` encode ``prefix`` (fewer if the boundary merged)."""
    n = 0
    for a, b in zip(full, prefix, strict=False):
        if a != b:
            break
        n += 1
    return n


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
    pieces: list[str] = field(default_factory=list)
    generated: int = 0
    finish: str | None = None


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

    # ---- prefill ------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self) -> list[WeightsEvent]:
        """Run every member once on the prompts; compute weights; return one event per prompt."""
        members, k_count = self.members, len(self.members)
        own_scoring = self.config.scoring == "own"
        plans, reused, own_nll = plan_prompts(members, self.maps, self.texts, self.reference, own_scoring=own_scoring)
        prefilled = []
        for k, m in enumerate(members):
            prefilled.append(reused[k] if k in reused else forward_rows(m, [p.inputs[k] for p in plans]))
        limit = min(m.context_window for m in members)
        events = []
        for b, plan in enumerate(plans):
            r = plan.reference
            vocab = members[r].vocab_size
            length = len(plan.ref_ids)
            targets = torch.tensor(plan.ref_ids[1:])

            def row_states(k: int, b: int = b, length: int = length) -> torch.Tensor:
                states, _, pads = prefilled[k]
                return states[b, pads[b] : pads[b] + length - 1]

            nll_t = None
            nll: list[float | None] = [None] * k_count
            if length > 1:
                nll_t = own_scale_nll(own_nll[b], r) if own_scoring else None
                if nll_t is None:
                    per_member = []
                    for k, m in enumerate(members):
                        score = own_nll[b][k]
                        if k in reused and self.maps(r, k) is None and score is not None:
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

            weights = compute_weights(self.config, nll_t, all_logits, targets, k_count)
            ref_member = members[r]
            self.rows.append(
                _Row(
                    index=b,
                    plan=plan,
                    weights=weights,
                    nll=nll,
                    detok=Detokenizer(ref_member.tokenizer, plan.ref_ids),
                    stops=StopMatcher(self.config.stop),
                    max_tokens=min(self.config.max_new_tokens, limit - length),
                )
            )
            events.append(self._weights_event(self.rows[-1]))
        self.runs = [run for _, run, _ in prefilled]
        return events

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
        for k, m in enumerate(self.members):
            run = self.runs[k]
            if run is None:
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
    Returns one list of results per config, in prompt order.
    """
    own_scoring = any(c.scoring == "own" for c in configs)
    prompt_texts = None if weights_on == "full" else contexts
    plans, reused, own_nll = plan_prompts(members, maps, texts, reference, prompt_texts, own_scoring=own_scoring)
    prefilled = [
        reused[k] if k in reused else forward_rows(m, [p.inputs[k] for p in plans]) for k, m in enumerate(members)
    ]
    names = [m.name for m in members]
    out: list[list[ScoreResult]] = [[] for _ in configs]
    for b, plan in enumerate(plans):
        r = plan.reference
        vocab = members[r].vocab_size
        ids = plan.ref_ids
        total = len(ids)
        n_ctx = max(1, prefix_length(ids, members[r].encode(contexts[b][r])))
        n_w = total if weights_on == "full" else n_ctx
        states = [prefilled[k][0][b, prefilled[k][2][b] : prefilled[k][2][b] + total] for k in range(len(members))]
        targets = torch.tensor(ids[1:n_w])
        nll_t = None
        if n_w > 1:
            nll_t = torch.stack(
                [
                    _nll_per_token(m, states[k][: n_w - 1], targets, maps(r, k), vocab).mean()
                    for k, m in enumerate(members)
                ]
            )
        cont = torch.tensor(ids[n_ctx:])
        cont_logits = [
            reference_logits(m, states[k][n_ctx - 1 : total - 1], maps(r, k), vocab) for k, m in enumerate(members)
        ]
        text = texts[b][r]
        context = contexts[b][r]
        num_bytes = len(text[len(context) :].encode("utf-8")) if text.startswith(context) else len(text.encode("utf-8"))
        nll_own = own_scale_nll(own_nll[b], r) if own_scoring and n_w > 1 else None
        for c, cfg in enumerate(configs):
            nll = nll_own if cfg.scoring == "own" and nll_own is not None else nll_t
            perplexity = {n: (math.exp(float(nll[k])) if nll is not None else None) for k, n in enumerate(names)}
            weights = compute_weights(
                cfg,
                nll,
                lambda b=b, r=r, vocab=vocab, n_w=n_w, states=states: [
                    reference_logits(m, states[k][: n_w - 1], maps(r, k), vocab) for k, m in enumerate(members)
                ],
                targets,
                len(members),
            )
            fused = None
            for k, logits in enumerate(cont_logits):
                if float(weights[k]) > 0:
                    term = logits * float(weights[k])
                    fused = term if fused is None else fused + term
            if fused is None:  # weights always sum to 1
                raise RuntimeError("no member has a positive weight")
            logp = torch.log_softmax(fused, dim=-1)
            token_lp = logp.gather(-1, cont[:, None].to(logp.device)).squeeze(-1).double().cpu()
            greedy = bool((fused.argmax(dim=-1).cpu() == cont).all())
            out[c].append(
                ScoreResult(
                    logprob=float(token_lp.sum()),
                    tokens=int(cont.numel()),
                    num_bytes=num_bytes,
                    is_greedy=greedy,
                    weights={n: float(w) for n, w in zip(names, weights, strict=True)},
                    prompt_perplexity=perplexity,
                    reference=names[r],
                    token_logprobs=token_lp.tolist(),
                )
            )
    return out
