"""The decoding session: prefill, weights, then one fused step at a time.

A :class:`Session` holds all mutable state of one request (a batch of prompts): each
member's cache and next-token scores, and per prompt its weights, text buffer and stop
matcher. Nothing is shared between sessions; streaming and non-streaming use this one loop
(:meth:`Session.events`), which reads::

    prefill                      every member reads the prompts; weights per prompt
    repeat until every row ends:
        choose                   fuse the members' scores (masked by a constraint), pick each row's next token
        accept                   text, stop strings, end of sequence, length
        feed                     every member reads the chosen tokens (one step); members that
                                 score named tokens (a vLLM server) are asked for the others' candidates

Every member is seen through its aligner (:mod:`.aligners`): its prompt states, its scores in
a prompt's reference vocabulary, and what it reads next. The step itself knows no alignment.

Shapes: B prompts, K members, W_k member k's logits width, V a prompt's reference vocabulary.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from ..backends.llama_cpp_context import default_threads
from ..config import GenerationConfig
from ..errors import BackendError, GenerationTimeoutError, MemberError, PackLLMError
from ..events import Event, FinishEvent, TextEvent, WeightsEvent
from ..structured.constraints import Grammars, mask
from .aligners import Aligner, Natural, open_aligners
from .faults import prompt_fault, without_member
from .fusion import Fused, FusionRule, fuse_by
from .naming import named_candidates
from .planning import PackView, Planned, Spans, plan_prompts
from .prompt_weights import prompt_nll, prompt_weights
from .rows import Row
from .sampling import sample
from .stepping import Stepper, cpu_lanes, lanes_for
from .stopping import Detokenizer, StopMatcher

__all__ = ["Session"]


class Session:
    """One request: a batch of prompts decoded together, each with its own weights.

    ``texts[b][k]``: prompt b as member k reads it; ``fixed_reference``: a configured
    reference member's index (None: per prompt); ``timeout``: seconds from now, checked
    before every forward pass (:class:`~..errors.GenerationTimeoutError`); ``spans``: chat messages."""

    def __init__(
        self,
        pack: PackView,
        texts: Sequence[Sequence[str]],
        config: GenerationConfig,
        fixed_reference: int | None,
        timeout: float | None = None,
        grammars: Grammars | None = None,
        spans: Sequence[Spans] | None = None,
    ) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.pack = pack if timeout is None else replace(pack, checkpoint=self._checkpoint)
        self.members = list(pack.members)
        self.names = [m.name for m in self.members]
        self.texts = texts
        self.spans = spans or [None] * len(texts)  # a chat prompt's messages in each text: all its weights score
        self.config = config
        self.fixed_reference = fixed_reference
        self.grammars = grammars or Grammars()  # compiled per tokenizer (the engine keeps one)
        self.generator: torch.Generator | None = None
        if config.temperature > 0 and config.seed is not None:
            self.generator = torch.Generator().manual_seed(config.seed)
        self.rows: list[Row] = []
        self.aligners: list[Aligner] = []  # one per member, in pack order
        self.steps = 0  # tokens chosen so far (per row)
        self._stepper = Stepper(len(self.members))  # steps members that wait on a server or a GPU
        cores = default_threads()
        self._lanes = cpu_lanes(self.members, cores)  # CPU members stepped at once
        self._share = cores // len(self._lanes) if self._lanes else None  # cores a lane's step uses (None: all)

    def events(self) -> Iterator[Event]:
        """The whole request as events: weights per prompt, text pieces, then results."""
        try:
            yield from self._events()
        finally:
            self._stepper.close()

    def _events(self) -> Iterator[Event]:
        yield from self.prefill()
        for row in self.rows:
            if row.max_tokens < 1:
                row.finish = "length"
                yield FinishEvent(row.index, row.result(self.names))
        while any(row.finish is None for row in self.rows):
            tokens = self.choose()
            self.steps += 1
            for row, token in zip(self.rows, tokens, strict=True):
                if row.finish is not None:
                    continue
                text = row.accept(token, self.members[row.plan.reference].eos_token_ids)
                if text:
                    row.pieces.append(text)
                    yield TextEvent(row.index, text)
                if row.finish is not None:
                    yield FinishEvent(row.index, row.result(self.names))
            if any(row.finish is None for row in self.rows):
                self.feed(tokens)

    # ---- prefill ------------------------------------------------------------------------

    def prefill(self) -> list[WeightsEvent]:
        """Run every member on the prompts and weigh them: one event per prompt (a backend that
        fails here raises a :class:`MemberError` naming the member)."""
        try:
            return self._prefill()
        except BackendError as exc:
            raise MemberError(exc.member, None, exc.reason, tuple(range(len(self.texts)))) from exc

    @torch.inference_mode()
    def _prefill(self) -> list[WeightsEvent]:
        for m in self.members:  # prefill steps no member beside another: every core (a lane may have left fewer)
            m.share_cores(None)
        cfg = self.config
        natural = cfg.alignment == "natural"
        own = cfg.scoring == "own" or natural or any(s is not None for s in self.spans)
        how = {"own_scoring": own, "rollback": natural, "by_bytes": cfg.reference_by == "byte", "spans": self.spans}
        planned = plan_prompts(self.pack, self.texts, self.fixed_reference, **how)
        self.aligners = open_aligners(self.pack, self.texts, planned, natural)
        reads = any(isinstance(a, Natural) for a in self.aligners)
        limit = min(m.context_window for m in self.members)
        for b, plan in enumerate(planned.plans):
            weights, nll = self._weigh(planned, b)
            ref = self.members[plan.reference]
            row = Row(
                index=b,
                plan=plan,
                weights=weights,
                nll=nll,
                detok=Detokenizer(ref.tokenizer, plan.ref_ids),
                stops=StopMatcher(cfg.stop),
                max_tokens=min(cfg.max_new_tokens, limit - len(plan.ref_ids)),
                texts=self.texts[b],
                read=Detokenizer(ref.tokenizer, plan.ref_ids) if reads else None,
                matcher=None
                if cfg.constraint is None
                else self.grammars.matcher(ref, cfg.constraint, cfg.json_string_repeats),
            )
            for k, value in enumerate(nll):
                if value is not None and not math.isfinite(value):
                    row.dropped[self.names[k]] = "its prompt perplexity is not a finite number"
            self.rows.append(row)
        for k, aligner in enumerate(self.aligners):
            aligner.start(self.rows)
            self._check(k)
        self._name_candidates()
        return [row.weights_event(self.names) for row in self.rows]

    def _weigh(self, planned: Planned, b: int) -> tuple[torch.Tensor, list[float | None]]:
        """Prompt b's weights [K] and the members' prompt NLLs (None each: nothing to score)."""
        cfg, plan = self.config, planned.plans[b]
        first, end = plan.first_target, len(plan.ref_ids)

        def states(k: int):  # member k's states predicting the scored tokens
            return self.aligners[k].prompt_states(b, first - 1, end - 1)

        per_token: dict[int, torch.Tensor] = {}
        nll = prompt_nll(self.pack, planned, b, states, "own" if self.spans[b] else cfg.scoring, end, per_token)
        if nll is None:
            warnings.warn(
                f"prompt {b} has no token to score (one text token at most): using uniform weights",
                RuntimeWarning,
                stacklevel=5,
            )

        def fault(bad: list[int]) -> None:
            prompt_fault(self.names, bad, plan.reference, cfg.on_member_error, b)

        weights = prompt_weights(
            self.pack, planned, b, nll, states, end, (cfg.weighting, cfg.tau, cfg.weights, cfg.fusion), fault, per_token
        )
        for aligner in self.aligners:
            aligner.forget(b)
        return weights, [float(v) for v in nll] if nll is not None else [None] * len(self.members)

    # ---- failures -----------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Raise :class:`GenerationTimeoutError` once the request's deadline has passed."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise GenerationTimeoutError(self.timeout or 0.0, self._partial())

    def _partial(self) -> dict[int, str]:
        return {row.index: "".join(row.pieces) for row in self.rows}

    def _fail(self, k: int, rows: list[int], reason: str, cause: BaseException | None = None) -> None:
        """Member k failed on ``rows`` at this step: raise, or drop it from those rows."""
        name, step = self.members[k].name, self.steps
        rows = [b for b in rows if self.rows[b].finish is None and float(self.rows[b].weights[k]) > 0]
        if not rows:
            return
        droppable = self.config.on_member_error == "drop" and all(self.rows[b].plan.reference != k for b in rows)
        if not droppable:
            raise MemberError(name, step, reason, tuple(rows), self._partial()) from cause
        for b in rows:
            row = self.rows[b]
            weights = without_member(row.weights, k)
            if weights is None:
                raise MemberError(name, step, f"{reason}; no other member is left", (b,), self._partial()) from cause
            row.weights = weights
            row.dropped[name] = f"{reason} (step {step})"

    def _check(self, k: int) -> None:
        """Drop or raise for the rows where member k's next-token scores are not usable."""
        bad = self.aligners[k].bad_rows()
        if bad:
            self._fail(k, bad, "its scores are not finite numbers (NaN or +inf)")

    def _listened(self, k: int) -> bool:
        """Whether some live prompt still gives member k a weight."""
        return any(row.finish is None and float(row.weights[k]) > 0 for row in self.rows)

    # ---- decode -------------------------------------------------------------------------

    def fused(self, rows: list[int], r: int) -> Fused:
        """Fused scores [G, V] of the rows ``rows``, all with reference member ``r``, under the
        config's fusion rule."""
        vocab, device = self.members[r].vocab_size, self.members[r].device
        index = torch.tensor(rows)  # [G]
        weights = torch.stack([self.rows[b].weights for b in rows]).float()  # [G, K]
        scores = [
            a.reference_scores(index, r, vocab).to(device) if a.live and bool((weights[:, k] > 0).any()) else None
            for k, a in enumerate(self.aligners)
        ]
        return fuse_by(FusionRule.of(self.config), scores, weights)

    @torch.inference_mode()
    def choose(self) -> list[int]:
        """The next reference-vocabulary token of every prompt."""
        tokens = [0] * len(self.rows)
        groups: dict[int, list[int]] = {}
        for row in self.rows:
            groups.setdefault(row.plan.reference, []).append(row.index)
        cfg = self.config
        for r, rows in groups.items():
            fused = self.fused(rows, r)
            matchers = [self.rows[b].matcher for b in rows]
            scores = (
                fused.allowed()
                if all(m is None for m in matchers)
                else fused.restrict(mask(fused.logits.clone(), matchers, self.steps))
            )
            picked = sample(scores, cfg.temperature, cfg.top_k, cfg.top_p, self.generator)
            for b, t in zip(rows, picked.tolist(), strict=True):
                tokens[b] = int(t)
        return tokens

    @torch.inference_mode()
    def feed(self, tokens: list[int]) -> None:
        """Every member still listened to reads the chosen tokens and steps once (those
        waiting on a server or a GPU in threads); a member that fails is dropped or raises."""
        for row, t in zip(self.rows, tokens, strict=True):
            row.feed(t)
        self._retire_unheard()
        active = [k for k, a in enumerate(self.aligners) if a.live]
        self.pack.checkpoint()
        calls = {k: partial(self._guarded_step, k, tokens) for k in active}
        lanes = lanes_for(self._lanes, sum(row.finish is None for row in self.rows))
        for k in active:  # set each step: another pack may share the member
            self.members[k].share_cores(self._share if lanes else None)
        outcomes = self._stepper.run(calls, {k for k in active if self.members[k].concurrent}, lanes)
        self._settle(outcomes)
        self._name_candidates()

    def _settle(self, outcomes: dict[int, BaseException | None]) -> None:
        """Check each member's new scores, or drop / raise for the member whose call failed."""
        for k, failure in outcomes.items():
            if failure is None:
                self._check(k)
            else:
                self._fail(k, list(range(len(self.rows))), f"{type(failure).__name__}: {failure}", failure)
        self._retire_unheard()

    def _name_candidates(self) -> None:
        """Every member that scores named tokens (:attr:`~..backends.base.MemberBackend.names_tokens`)
        scores the candidates the other members propose for each live row: the union of every
        member's best ``n`` tokens (``n``: the largest set those members give), except in rows
        whose greedy choice they could not change (:mod:`.naming`)."""
        askers = [k for k, a in enumerate(self.aligners) if a.live and a.names_tokens and self._listened(k)]
        if not askers or len(self.members) < 2:
            return
        n = max(self.aligners[k].set_size() for k in askers)
        union = named_candidates(self.aligners, self.members, self.rows, self.config, n)
        if not union:
            return
        self.pack.checkpoint()
        calls = {k: partial(self._guarded, self.aligners[k].name, union, self.rows) for k in askers}
        self._settle(self._stepper.run(calls, {k for k in askers if self.members[k].concurrent}))

    def _retire_unheard(self) -> None:
        """Members no live prompt listens to stop stepping."""
        for k, aligner in enumerate(self.aligners):
            if aligner.live and not self._listened(k):
                aligner.close()

    def _guarded_step(self, k: int, tokens: list[int]) -> BaseException | None:
        """Step member k; its backend's failure is returned (the pack's own errors and OOM are raised)."""
        return self._guarded(self.aligners[k].feed, tokens, self.rows)

    @staticmethod
    def _guarded(call: Callable[..., None], *args: Any) -> BaseException | None:
        """``call(*args)`` for one member; its backend's failure is returned (the pack's own errors and OOM raise)."""
        try:
            with torch.inference_mode():
                call(*args)
        except (torch.OutOfMemoryError, PackLLMError) as exc:
            if not isinstance(exc, BackendError):
                raise  # retried by the host / already says what failed
            return exc
        except Exception as exc:  # the member's backend failed
            return exc
        return None
