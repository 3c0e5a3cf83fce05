"""When greedy decoding may skip naming candidates to a served member: the bound is sound."""

from __future__ import annotations

import pytest
import torch

from packllm_integrations.backends.base import SparseScores
from packllm_integrations.decoding.naming import greedy_settled


def _served(logprobs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A server's view of a member's full log-probabilities [V]: its top-k set densified with the
    floor (what the session fuses), which tokens it gave, and its k-th best."""
    top = logprobs.topk(k)
    scores = SparseScores(top.indices[None], top.values[None]).dense(logprobs.numel())[0]
    known = torch.zeros(logprobs.numel(), dtype=torch.bool)
    known[top.indices] = True
    return scores, known, float(top.values[-1])


@pytest.mark.parametrize("fusion", ["logits", "mixture"])
def test_a_settled_greedy_choice_is_the_choice_with_every_members_full_scores(fusion: str) -> None:
    """Random members (peaked and flat, 2 or 3 of them, one in process with full logits):
    wherever the bound says settled, the pick made with the floors is the pick made with every
    member's full scores; and the bound does settle most peaked cases."""
    generator = torch.Generator().manual_seed(0)
    settled = wrong = 0
    for trial in range(600):
        vocab, k, n = 300, [5, 20][trial % 2], 2 + trial % 2
        sharp = [0.5, 3.0, 8.0][trial % 3]
        full = [torch.log_softmax(torch.randn(vocab, generator=generator) * sharp, -1) for _ in range(n)]
        weights = torch.rand(n, generator=generator)
        weights = (weights / weights.sum()).tolist()
        parts = [(weights[0], (full[0] + 3.0, None, 0.0))]  # in process: exact logits (not normalised)
        parts += [(w, _served(f, k)) for w, f in zip(weights[1:], full[1:], strict=True)]
        if greedy_settled(parts, fusion):
            settled += 1
            if fusion == "logits":
                floored = sum(w * p[0] for w, p in parts)
                exact = sum(w * f for w, f in zip(weights, full, strict=True))
            else:  # the session's mixture: each row normalised, then mixed
                floored = sum(w * torch.softmax(p[0], -1) for w, p in parts)
                exact = sum(w * f.exp() for w, f in zip(weights, full, strict=True))
            wrong += int(floored.argmax()) != int(exact.argmax())
    assert wrong == 0
    assert settled > 30  # measured: 63 (logits) and 126 (mixture) of 600
