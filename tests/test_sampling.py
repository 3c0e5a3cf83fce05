from __future__ import annotations

import torch

from packllm_integrations.decoding.sampling import sample


def test_greedy_and_degenerate_sampling_equal_argmax() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(-1)
    assert torch.equal(sample(logits, 0.0, 0, 1.0, None), best)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(sample(logits, 1.0, 1, 1.0, g), best)
    assert torch.equal(sample(logits, 1.0, 0, 1e-6, g), best)


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, -5.0, -6.0]])
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample(logits, 1.0, 2, 1.0, g)) for _ in range(200)}
    assert drawn == {0, 1}
    probs = logits.softmax(-1)[0]
    p = float(probs[0] + probs[1]) - 1e-4  # tokens 0 and 1 are needed to reach p
    drawn = {int(sample(logits, 1.0, 0, p, g)) for _ in range(300)}
    assert drawn == {0, 1}


def test_same_generator_seed_same_draws() -> None:
    logits = torch.randn(2, 100)
    a = [sample(logits, 0.8, 0, 0.9, torch.Generator().manual_seed(3)).tolist() for _ in range(2)]
    assert a[0] == a[1]
