"""Scoring: fused log-likelihoods of continuations after contexts (``PackEngine.score``).

One prefill per member serves every weighting asked for: the members' states over context
plus continuation are computed once, the weights come from the context (or the whole text),
and the continuation's tokens are scored under each weighting with the same fusion as
generation (:func:`~.fusion.fuse_by`).

Continuations after the same context (a question's options) share its weights: they are
computed for the first and reused (``weights_on="context"``).

``fusion="sequence"`` fuses whole continuations instead of tokens: each member scores the
continuation in its own tokenization (from its own pass over the text, which natural
alignment and ``scoring="own"`` make anyway) and the fused log-likelihood is the weighted sum
of those, ``sum_k w_k log p_k(continuation | context)``: a product of experts over sequences,
with no vocabulary alignment. Its token count is the reference member's; one-hot weights give
that member's own score. A member's states in the reference's positions are then computed only
if the weighting needs them (``opt``, or ``scoring="reference"`` across tokenizers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..alignment.natural import common_prefix
from ..alignment.projection import NaturalStates
from ..config import GenerationConfig
from ..events import ScoreResult
from .aligners import walk_states
from .faults import prefill_faults, prompt_fault
from .fusion import FusionRule, fuse_by, reference_scores
from .planning import PackView, Planned, plan_prompts
from .prompt_weights import prompt_nll, prompt_weights

__all__ = ["score_continuations"]

_CHUNK = 256  # continuation positions fused at once


@torch.inference_mode()
def score_continuations(
    pack: PackView,
    texts: Sequence[Sequence[str]],
    contexts: Sequence[Sequence[str]],
    configs: Sequence[GenerationConfig],
    fixed_reference: int | None,
    weights_on: str = "context",
) -> list[list[ScoreResult]]:
    """Fused log-likelihoods of continuations, for several weightings from one forward pass.

    ``texts[b][k]`` is context + continuation as member k reads it, ``contexts[b][k]`` the
    context alone. Weights come from the context's tokens (``weights_on="context"``, the
    default) or from the whole sequence (``"full"``, as the authors' code scored options).
    Configs may differ in alignment: each alignment's member states are computed once.
    Returns one list of results per config, in prompt order.
    """
    members = pack.members
    own_scoring = any(c.scoring == "own" for c in configs)
    natural = any(c.alignment == "natural" for c in configs)
    sequence = len(members) > 1 and any(c.fusion == "sequence" for c in configs)
    prompt_texts = None if weights_on == "full" else contexts
    planned = plan_prompts(
        pack,
        texts,
        fixed_reference,
        prompt_texts,
        own_scoring=own_scoring or natural or sequence,
        rollback=natural,
        by_bytes=configs[0].reference_by == "byte",
    )
    names = [m.name for m in members]
    out: list[list[ScoreResult]] = [[] for _ in configs]
    contexts_weighed: dict[tuple, tuple[list[torch.Tensor], list[dict[str, float | None]]]] = {}
    for b, plan in enumerate(planned.plans):
        r = plan.reference
        vocab = members[r].vocab_size
        ids = plan.ref_ids
        total = len(ids)
        n_ctx = max(1, common_prefix(ids, members[r].encode(contexts[b][r])))
        n_w = total if weights_on == "full" else n_ctx
        first = plan.first_target
        lo = min(first, n_ctx) - 1  # the first position whose state is needed
        cont = torch.tensor(ids[n_ctx:], dtype=torch.long)
        text, context = texts[b][r], contexts[b][r]
        num_bytes = len(text[len(context) :].encode("utf-8")) if text.startswith(context) else len(text.encode("utf-8"))
        own: dict[int, tuple[float, bool]] = {}  # member -> its own score of the continuation
        for alignment in dict.fromkeys(c.alignment for c in configs):
            span = slice(lo, total)
            states = _LazyStates(
                len(members), lambda k, a=alignment, b=b, s=span: _member_states(pack, texts, planned, b, a, k, s)
            )
            chosen = [c for c, cfg in enumerate(configs) if cfg.alignment == alignment]
            weighed = slice(first - 1 - lo, n_w - 1 - lo)
            # Pairs after the same context (a question's options) have the same weights: weigh it once.
            key = (alignment, r, first, tuple(ids[:n_w]), tuple(contexts[b]), _own_key(planned, b))
            found = contexts_weighed.get(key) if weights_on == "context" else None
            if found is None:
                found = _weigh(pack, planned, b, [configs[c] for c in chosen], states, weighed, n_w)
                contexts_weighed[key] = found
            weights = dict(zip(chosen, found[0], strict=True))
            perplexity = dict(zip(chosen, found[1], strict=True))
            whole = [c for c in chosen if sequence and configs[c].fusion == "sequence"]
            # one member alone: its sequence score is its token scores' sum
            rules = {c: _token_rule(configs[c]) for c in chosen if c not in whole}
            token_lp, greedy = _continuation(
                pack, r, b, vocab, states, n_ctx - 1 - lo, cont, {c: weights[c] for c in rules}, rules
            )
            for c in whole:
                used = [k for k in range(len(members)) if float(weights[c][k]) > 0]
                for k in used:
                    if k not in own:
                        own[k] = _own_continuation(pack, planned, contexts, b, k)
                token_lp[c] = torch.tensor([sum(float(weights[c][k]) * own[k][0] for k in used)], dtype=torch.float64)
                greedy[c] = all(own[k][1] for k in used)
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
                        token_logprobs=[] if c in whole else token_lp[c].tolist(),
                    )
                )
    return out


def _own_key(planned: Planned, b: int) -> tuple:
    """How many of its own tokens each member scored in prompt b's context (with the context's
    text, what its weights depend on: a continuation that merges into the context's last
    token changes it)."""
    return tuple(None if s is None else s.tokens for s in planned.own_nll[b])


def _token_rule(config: GenerationConfig) -> FusionRule:
    return FusionRule() if config.fusion == "sequence" else FusionRule.of(config)


class _LazyStates(Sequence):
    """Members' states computed on first use: a weighting that reads only the members' own
    passes (``sequence`` fusion with ``sim`` on own scores) never walks or translates."""

    def __init__(self, count: int, make: Callable[[int], torch.Tensor | NaturalStates]) -> None:
        self._count, self._make = count, make
        self._done: dict[int, torch.Tensor | NaturalStates] = {}

    def __getitem__(self, k: int) -> torch.Tensor | NaturalStates:  # type: ignore[override]
        if k not in self._done:
            self._done[k] = self._make(k)
        return self._done[k]

    def __len__(self) -> int:
        return self._count


def _own_continuation(
    pack: PackView, planned: Planned, contexts: Sequence[Sequence[str]], b: int, k: int
) -> tuple[float, bool]:
    """Member k's own log-likelihood of prompt b's continuation (its tokens after its own
    tokenization of the context, from its own pass), and whether greedy decoding gives them."""
    m = pack.members[k]
    ids = planned.own_ids[k][b]
    n_ctx = max(1, common_prefix(ids, m.encode(contexts[b][k])))
    if n_ctx >= len(ids):
        return 0.0, True
    targets = torch.tensor(ids[n_ctx:], dtype=torch.long)
    with prefill_faults(m.name, (b,)):
        states = planned.own_passes[k].row(b, len(ids))[n_ctx - 1 : -1]
        total, greedy = 0.0, True
        for start in range(0, targets.numel(), _CHUNK):
            logits = reference_scores(m, states[start : start + _CHUNK], None, m.vocab_size)
            chunk = targets[start : start + _CHUNK].to(logits.device)
            picked = logits.gather(-1, chunk[:, None]).squeeze(-1)
            total += float((picked - torch.logsumexp(logits, dim=-1)).double().sum())
            greedy = greedy and bool((logits.argmax(dim=-1) == chunk).all())
    return total, greedy


def _member_states(
    pack: PackView, texts: Sequence[Sequence[str]], planned: Planned, b: int, alignment: str, k: int, span: slice
) -> torch.Tensor | NaturalStates:
    """Member k's states at the reference positions ``span`` of prompt b [T, ...]: its own
    tokenization walked (natural alignment, another vocabulary) or its translated pass."""
    r = planned.plans[b].reference
    with prefill_faults(pack.members[k].name, (b,)):
        if alignment == "natural" and pack.maps(r, k) is not None:
            return walk_states(pack, texts, planned, k, b)[span]
        return planned.translated_states(pack, k, b, span.start, span.stop)


def _weigh(
    pack: PackView,
    planned: Planned,
    b: int,
    configs: Sequence[GenerationConfig],
    states: Sequence[torch.Tensor | NaturalStates],
    weighed: slice,
    end: int,
) -> tuple[list[torch.Tensor], list[dict[str, float | None]]]:
    """Prompt b's weights [K] and prompt perplexities under each config, from the members'
    states over the weighed positions (the same prompt weighting as generation)."""
    names = [m.name for m in pack.members]
    r = planned.plans[b].reference

    def weighed_states(k: int) -> torch.Tensor | NaturalStates:
        return states[k][weighed]

    per_token: dict[str, dict[int, torch.Tensor]] = {
        scoring: {} for scoring in dict.fromkeys(c.scoring for c in configs)
    }
    nlls = {
        scoring: prompt_nll(pack, planned, b, weighed_states, scoring, end, known)
        for scoring, known in per_token.items()
    }
    weights, perplexity = [], []
    for cfg in configs:
        nll = nlls[cfg.scoring]
        perplexity.append({n: (math.exp(float(nll[k])) if nll is not None else None) for k, n in enumerate(names)})

        def fault(bad: list[int], policy: str = cfg.on_member_error) -> None:
            prompt_fault(names, bad, r, policy, b)

        strategy = (cfg.weighting, cfg.tau, cfg.weights, cfg.fusion)
        weights.append(
            prompt_weights(pack, planned, b, nll, weighed_states, end, strategy, fault, per_token[cfg.scoring])
        )
    return weights, perplexity


def _continuation(
    pack: PackView,
    r: int,
    b: int,
    vocab: int,
    states: Sequence[torch.Tensor | NaturalStates],
    at_first: int,
    cont: torch.Tensor,
    weights: dict[int, torch.Tensor],
    rules: dict[int, FusionRule],
) -> tuple[dict[int, torch.Tensor], dict[int, bool]]:
    """Log-probabilities [C] of prompt b's continuation ``cont`` (reference member r) under each
    weighting and fusion rule (keyed like ``weights``), and whether it is the greedy choice;
    ``states[k][at_first]`` predicts the continuation's first token. Positions go in chunks so
    a long continuation never holds all its logits at once."""
    members = pack.members
    token_lp: dict[int, list[torch.Tensor]] = {c: [] for c in weights}
    greedy = dict.fromkeys(weights, True)
    used = [k for k in range(len(members)) if any(float(w[k]) > 0 for w in weights.values())]
    for start in range(0, cont.numel(), _CHUNK):
        stop = min(start + _CHUNK, cont.numel())
        at = slice(at_first + start, at_first + stop)
        mapped = {}
        for k in used:
            with prefill_faults(members[k].name, (b,)):
                mapped[k] = reference_scores(members[k], states[k][at], pack.maps(r, k), vocab)
        targets = cont[start:stop]
        for c, w in weights.items():
            scored = [mapped.get(k) for k in range(len(members))]
            fused = fuse_by(rules[c], scored, w.float()[None].expand(stop - start, -1).contiguous())
            token_lp[c].append(fused.log_probs(targets).double().cpu())
            greedy[c] = greedy[c] and bool((fused.allowed().argmax(dim=-1).cpu() == targets).all())
    empty = torch.zeros(0, dtype=torch.float64)
    return {c: torch.cat(v) if v else empty for c, v in token_lp.items()}, greedy
