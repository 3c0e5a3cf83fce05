"""The decoding session: prefill, weights, then one fused step at a time.

A :class:`Session` holds all mutable state of one request (a batch of prompts): each
member's cache and next-token scores, and per prompt its weights, text buffer and stop
matcher. Nothing is shared between sessions; streaming and non-streaming use this one loop
(:meth:`Session.events`), which reads::

    prefill                      every member reads the prompts; weights per prompt
    repeat until every row ends:
        choose                   fuse the members' scores (masked by a constraint), pick each row's next token
        accept                   text, stop strings, end of sequence, length
        feed                     every member reads the chosen tokens (one step)

Shapes: B prompts, K members, W_k member k's logits width, V a prompt's reference vocabulary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from .backends.base import Scores
from .config import GenerationConfig
from .constraints import Grammars, mask
from .errors import BackendError, GenerationTimeoutError, MemberError, PackLLMError
from .events import Event, FinishEvent, TextEvent, WeightsEvent
from .faults import bad_rows, without_member
from .fusion import fuse, in_reference
from .natural import BatchReader
from .planning import Pack, Planned, plan_prompts, prompt_weights
from .rows import Row
from .sampling import sample
from .stepping import Stepper
from .stopping import Detokenizer, StopMatcher

__all__ = ["Session"]


class Session:
    """One request: a batch of prompts decoded together, each with its own weights.

    ``texts[b][k]``: prompt b as member k reads it; ``fixed_reference``: a configured
    reference member's index (None: per prompt); ``timeout``: seconds from now, checked
    before every forward pass (:class:`~.errors.GenerationTimeoutError`)."""

    def __init__(
        self,
        pack: Pack,
        texts: Sequence[Sequence[str]],
        config: GenerationConfig,
        fixed_reference: int | None,
        timeout: float | None = None,
        grammars: Grammars | None = None,
    ) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.pack = pack if timeout is None else replace(pack, checkpoint=self._checkpoint)
        self.members = list(pack.members)
        self.names = [m.name for m in self.members]
        self.texts = texts
        self.config = config
        self.fixed_reference = fixed_reference
        self.grammars = grammars or Grammars()  # compiled per tokenizer (the engine keeps one)
        self.generator: torch.Generator | None = None
        if config.temperature > 0 and config.seed is not None:
            self.generator = torch.Generator().manual_seed(config.seed)
        self.rows: list[Row] = []
        self.caches: list[Any] = []  # per member in lockstep: its cache (None: reader, or done)
        self.next: list[Scores | torch.Tensor | None] = []  # per member: next-token scores [B, W_k]
        self.readers: list[BatchReader | None] = []  # per member reading its own tokenization
        self._width = 0  # the widest reference vocabulary of the batch (readers' scores)
        self.steps = 0  # tokens chosen so far (per row)
        self._stepper = Stepper(len(self.members))  # steps members that wait on a server or a GPU

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
        """Run every member on the prompts and weigh them: one event per prompt (a backend failure fails)."""
        try:
            return self._prefill()
        except BackendError as exc:
            raise MemberError(exc.member, None, exc.reason, tuple(range(len(self.texts)))) from exc

    @torch.inference_mode()
    def _prefill(self) -> list[WeightsEvent]:
        pack, members, cfg = self.pack, self.members, self.config
        own_scoring, natural = cfg.scoring == "own", cfg.alignment == "natural"
        planned = plan_prompts(
            pack, self.texts, self.fixed_reference, own_scoring=own_scoring or natural, rollback=natural
        )
        plans = planned.plans
        # With natural alignment, a member that differs from some prompt's reference reads its
        # own tokenization through a BatchReader; the others decode in lockstep.
        reading = [natural and any(pack.maps(p.reference, k) is not None for p in plans) for k in range(len(members))]
        self.readers = [self._reader(k, planned) if reading[k] else None for k in range(len(members))]
        limit = min(m.context_window for m in members)
        for b, plan in enumerate(plans):
            weights, nll = prompt_weights(
                pack, self.texts, planned, b, cfg, reading, lambda bad, b=b: self._prefill_fault(bad, b, planned)
            )
            ref = members[plan.reference]
            row = Row(
                index=b,
                plan=plan,
                weights=weights,
                nll=nll,
                detok=Detokenizer(ref.tokenizer, plan.ref_ids),
                stops=StopMatcher(cfg.stop),
                max_tokens=min(cfg.max_new_tokens, limit - len(plan.ref_ids)),
                texts=self.texts[b],
                read=Detokenizer(ref.tokenizer, plan.ref_ids) if any(reading) else None,
                matcher=None if cfg.constraint is None else self.grammars.matcher(ref, cfg.constraint),
            )
            for k in range(len(members)):
                if nll[k] is not None and not math.isfinite(nll[k]):
                    row.dropped[members[k].name] = "its prompt perplexity is not a finite number"
            self.rows.append(row)
        self._width = max(members[p.reference].vocab_size for p in plans)
        for k, m in enumerate(members):
            if self.readers[k] is None:
                done = planned.translated_pass(pack, k)
                self.caches.append(done.cache)
                self.next.append(m.scores(done.last))
            else:
                self.caches.append(None)
                self.next.append(torch.cat([self._reader_scores(k, b) for b in range(len(plans))]).to(m.device))
            self._check(k)
        return [row.weights_event(self.names) for row in self.rows]

    # ---- failures -----------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Raise :class:`GenerationTimeoutError` once the request's deadline has passed."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise GenerationTimeoutError(self.timeout or 0.0, self._partial())

    def _partial(self) -> dict[int, str]:
        return {row.index: "".join(row.pieces) for row in self.rows}

    def _prefill_fault(self, bad: list[int], b: int, planned: Planned) -> None:
        """Members whose prompt NLL is not finite on prompt b: raise, or let them be dropped."""
        reference = planned.plans[b].reference
        for k in bad:
            reason = "its prompt perplexity is not a finite number (NaN or infinite scores)"
            if self.config.on_member_error != "drop" or k == reference or len(bad) == len(self.members):
                raise MemberError(self.members[k].name, None, reason, (b,))

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
        scores = self.next[k]
        if scores is not None:
            bad = bad_rows(scores)
            if bad:
                self._fail(k, bad, "its scores are not finite numbers (NaN or +inf)")

    def _reader(self, k: int, planned: Planned) -> BatchReader:
        """Member k's :class:`BatchReader` over the prompts, started from its own pass when it has one."""
        m = self.members[k]
        targets = [
            plan.inputs[k] if self.pack.maps(plan.reference, k) is None else planned.own_ids[k][b]
            for b, plan in enumerate(planned.plans)
        ]
        done = planned.own_passes.get(k)
        if done is None or targets != planned.own_ids[k]:
            done = m.prefill(targets, rollback=True)
        return BatchReader.from_prefill(m, targets, done)

    def _reader_scores(self, k: int, b: int) -> torch.Tensor:
        """Member k's reader of prompt b, in its reference's vocabulary [1, V_max] (padded with -inf)."""
        m, reader = self.members[k], self.readers[k]
        assert reader is not None
        r = self.rows[b].plan.reference
        proj = self.pack.projections(r, k)
        if proj is None:
            scores = in_reference(m, m.scores(reader.state[b][None]), None, self.members[r].vocab_size)
        else:
            scores, logprobs = proj.scores_and_logprobs(m, reader.view(b, proj))
            reader.last_logprobs[b] = logprobs[0]
        if scores.shape[-1] < self._width:
            scores = torch.cat([scores, scores.new_full((1, self._width - scores.shape[-1]), -math.inf)], dim=-1)
        return scores

    # ---- decode -------------------------------------------------------------------------

    def fused(self, rows: list[int], r: int) -> torch.Tensor:
        """Fused logits [G, V] of the rows ``rows``, all with reference member ``r``."""
        vocab, device = self.members[r].vocab_size, self.members[r].device
        index = torch.tensor(rows)
        weights = torch.stack([self.rows[b].weights for b in rows]).float()  # [G, K]
        scores: list[torch.Tensor | None] = []
        for k, (m, next_scores) in enumerate(zip(self.members, self.next, strict=True)):
            if next_scores is None or not bool((weights[:, k] > 0).any()):
                scores.append(None)
                continue
            picked = next_scores[index.to(_device(next_scores))]
            if self.readers[k] is not None:  # already in the reference vocabulary
                scores.append(picked[:, :vocab].to(device))
            else:
                scores.append(in_reference(m, picked, self.pack.maps(r, k), vocab).to(device))
        return fuse(scores, weights)

    @torch.inference_mode()
    def choose(self) -> list[int]:
        """The next reference-vocabulary token of every prompt."""
        tokens = [0] * len(self.rows)
        groups: dict[int, list[int]] = {}
        for row in self.rows:
            groups.setdefault(row.plan.reference, []).append(row.index)
        cfg = self.config
        for r, rows in groups.items():
            fused = mask(self.fused(rows, r), [self.rows[b].matcher for b in rows], self.steps)
            picked = sample(fused, cfg.temperature, cfg.top_k, cfg.top_p, self.generator)
            for b, t in zip(rows, picked.tolist(), strict=True):
                tokens[b] = int(t)
        return tokens

    @torch.inference_mode()
    def feed(self, tokens: list[int]) -> None:
        """Every member reads the chosen tokens and steps once (those waiting on a server or GPU in threads)."""
        for row, t in zip(self.rows, tokens, strict=True):
            if row.read is not None and row.finish is None:
                row.fed_ids.append(t)
                row.read_text += row.read.add(t)
        active = []
        for k in range(len(self.members)):
            if self.next[k] is None:
                continue
            if not any(row.finish is None and float(row.weights[k]) > 0 for row in self.rows):
                self.next[k] = self.caches[k] = None  # a member no prompt listens to stops here
                continue
            active.append(k)
        self.pack.checkpoint()
        calls = {k: partial(self._guarded_step, k, tokens) for k in active}
        outcomes = self._stepper.run(calls, {k for k in active if self.members[k].concurrent})
        for k, failure in outcomes.items():
            if failure is not None:
                self._fail(k, list(range(len(self.rows))), f"{type(failure).__name__}: {failure}", failure)
                if not any(float(row.weights[k]) > 0 for row in self.rows if row.finish is None):
                    self.next[k] = self.caches[k] = None
                continue
            self._check(k)

    def _guarded_step(self, k: int, tokens: list[int]) -> BaseException | None:
        """Step member k; its backend's failure is returned (the pack's own errors and OOM are raised)."""
        try:
            with torch.inference_mode():
                self._step(k, tokens)
        except (torch.OutOfMemoryError, PackLLMError) as exc:
            if not isinstance(exc, BackendError):
                raise  # retried by the host / already says what failed
            return exc
        except Exception as exc:  # the member's backend failed
            return exc
        return None

    def _step(self, k: int, tokens: list[int]) -> None:
        """Member k reads the chosen tokens: one step in lockstep, or its reader's re-tokenized text."""
        next_scores, reader = self.next[k], self.readers[k]
        if reader is not None:
            active = [b for b, row in enumerate(self.rows) if row.finish is None and float(row.weights[k]) > 0]
            reader.advance({b: self._reading(k, self.rows[b]) for b in active})
            for b in active:
                next_scores[b] = self._reader_scores(k, b)[0]  # type: ignore[index]
            return
        ids = []
        for row, t in zip(self.rows, tokens, strict=True):
            vmap = self.pack.maps(row.plan.reference, k)
            ids.append(t if vmap is None else int(vmap.input[t]))
        self.next[k] = self.members[k].step(self.caches[k], ids)

    def _reading(self, k: int, row: Row) -> list[int]:
        """What member k reads for ``row`` now (natural alignment)."""
        if self.pack.maps(row.plan.reference, k) is None:
            return row.plan.inputs[k] + row.fed_ids
        return self.members[k].encode(row.texts[k] + row.read_text)


def _device(scores: Any) -> torch.device:
    return scores.ids.device if hasattr(scores, "ids") else scores.device
