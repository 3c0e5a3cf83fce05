"""The member-backend interface: a backend written only against it runs through the engine.

``TopKBackend`` is a second, deliberately different backend: it keeps no KV cache (its
cache is each row's list of ids, and every call re-reads the whole row with a plain
forward pass) and it returns only sparse top-k log-probabilities, as a server would.
``RestrictedMember`` is the transformers backend with its scores cut to the same top-k set
(dense, the rest at the same floor). Fusing either must give the same greedy text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import torch

from packllm_integrations import FinishEvent, Member, MemberBackend, PackEngine, SparseScores, TextEvent
from packllm_integrations.backends import Prefill
from tests import tiny

PROMPTS = ["The function returns the value of the", "import os\nimport sys\n\ndef main(", "A class is"]
TOP_K = 5


def top_k(logits: torch.Tensor, k: int) -> SparseScores:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(logprobs, k, dim=-1)
    return SparseScores(ids, values)


class TopKBackend(MemberBackend):
    """A cache-free backend over a causal LM's plain forward, returning top-k sets."""

    def __init__(self, name: str, model: Any, tokenizer: Any, k: int = TOP_K) -> None:
        self.name, self.model, self.tokenizer, self.k = name, model, tokenizer, k
        self.context_window = 256
        self.eos_token_ids = frozenset({int(tokenizer.eos_token_id)})
        self.forwards = 0

    @property
    def logits_width(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def identity(self) -> dict[str, str]:
        return {"name": self.name, "model": "top-k", "dtype": "float32"}

    def _read(self, ids: Sequence[int]) -> torch.Tensor:
        self.forwards += 1
        with torch.no_grad():
            return self.model(torch.tensor([list(ids)])).logits[0].float()  # [n, W]: the states are logits

    def prefill(
        self, rows: Sequence[Sequence[int]], rollback: bool = False, checkpoint: Callable[[], None] | None = None
    ) -> Prefill:
        width = max(len(r) for r in rows)
        states = torch.zeros(len(rows), width, self.logits_width)
        pads = [width - len(r) for r in rows]
        for b, row in enumerate(rows):
            if b and checkpoint is not None:
                checkpoint()
            states[b, pads[b] :] = self._read(row)
        return Prefill(states=states, pads=pads, cache=[list(r) for r in rows])

    def scores(self, states: torch.Tensor) -> SparseScores:
        return top_k(states, self.k)

    def step(self, cache: list[list[int]], ids: Sequence[int]) -> SparseScores:
        last = []
        for row, t in zip(cache, ids, strict=True):
            row.append(int(t))
            last.append(self._read(row)[-1])
        return self.scores(torch.stack(last))

    def extend(self, cache: list[list[int]], feeds: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        out = {}
        for b, fed in feeds.items():
            cache[b].extend(int(t) for t in fed)
            out[b] = self._read(cache[b])[-len(fed) :]
        return out

    def crop(self, cache: list[list[int]], row: int, length: int) -> None:
        del cache[row][length:]

    def fork(self, cache: list[list[int]], row: int) -> list[list[int]]:
        return [list(cache[row])]


class RestrictedMember(Member):
    """The transformers backend with each distribution cut to its top-k set (dense, floor elsewhere)."""

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        logits = super().scores(states)
        return top_k(logits.reshape(-1, logits.shape[-1]), TOP_K).dense(logits.shape[-1]).reshape(logits.shape)


def _packs() -> tuple[list[MemberBackend], list[MemberBackend]]:
    members = [tiny.bytelevel_member(), tiny.sentencepiece_member()]
    sparse = [TopKBackend(m.name, m.model, m.tokenizer) for m in members]
    dense = [RestrictedMember(m.name, m.model, m.tokenizer) for m in members]
    return sparse, dense


@pytest.fixture(scope="module")
def packs() -> tuple[list[MemberBackend], list[MemberBackend]]:
    return _packs()


def test_sparse_scores_floor_spreads_the_missing_mass() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    sparse = top_k(logits, 5)
    full = sparse.dense(50)
    assert full.shape == (3, 50)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    assert torch.equal(full.gather(-1, sparse.ids), sparse.logprobs)
    assert bool((sparse.floor(50) <= sparse.logprobs.min(-1, keepdim=True).values).all())
    assert torch.equal(sparse[1].ids, sparse.ids[1:2]) and len(sparse[torch.tensor([0, 2])]) == 2


@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_sparse_backend_gives_the_greedy_text_of_a_dense_backend_restricted_to_top_k(packs, alignment: str) -> None:
    sparse, dense = packs
    got = PackEngine(sparse, progress=False, alignment=alignment).generate_batch(PROMPTS, max_new_tokens=10)
    want = PackEngine(dense, progress=False, alignment=alignment).generate_batch(PROMPTS, max_new_tokens=10)
    assert [g.text for g in got] == [w.text for w in want]
    assert any(g.text for g in got)
    for g, w in zip(got, want, strict=True):
        assert g.reference == w.reference and g.finish_reason == w.finish_reason
        for name in w.weights:
            assert math.isclose(g.weights[name], w.weights[name], rel_tol=1e-3, abs_tol=1e-6)
            assert math.isclose(g.prompt_perplexity[name], w.prompt_perplexity[name], rel_tol=1e-3)


@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_sparse_backend_streams_batches_and_scores(packs, alignment: str) -> None:
    sparse, dense = packs
    engine = PackEngine(sparse, progress=False, alignment=alignment, weighting="opt")
    batch = engine.generate_batch(PROMPTS, max_new_tokens=8)
    for i, prompt in enumerate(PROMPTS):
        alone = engine.generate(prompt, max_new_tokens=8)
        events = list(engine.stream(prompt, max_new_tokens=8))
        streamed = "".join(e.text for e in events if isinstance(e, TextEvent))
        assert alone.text == batch[i].text == streamed
        assert isinstance(events[-1], FinishEvent) and events[-1].result.text == streamed
    requests = [(PROMPTS[0], " result"), (PROMPTS[2], " a thing")]
    got = engine.score(requests)
    want = PackEngine(dense, progress=False, alignment=alignment, weighting="opt").score(requests)
    for g, w in zip(got, want, strict=True):
        assert g.tokens == w.tokens and g.is_greedy == w.is_greedy
        assert math.isclose(g.logprob, w.logprob, rel_tol=1e-3, abs_tol=1e-4)


def test_sparse_backend_samples_reproducibly(packs) -> None:
    sparse, _ = packs
    engine = PackEngine(sparse, progress=False)
    first = engine.generate(PROMPTS[0], max_new_tokens=8, temperature=0.8, seed=5)
    again = engine.generate(PROMPTS[0], max_new_tokens=8, temperature=0.8, seed=5)
    assert first.text == again.text


def test_engine_refuses_objects_that_are_not_backends() -> None:
    from packllm_integrations import ConfigError

    with pytest.raises(ConfigError, match="members"):
        PackEngine([object()])  # type: ignore[list-item]
