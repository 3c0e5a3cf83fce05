from __future__ import annotations

import math

import pytest
import torch

from packllm_integrations.decoding import weighting
from packllm_integrations.decoding.weighting import (
    fixed_weights,
    mixture_nlls,
    opt_mixture_weights,
    opt_weights,
    sim_weights,
    top1_weights,
    uniform_weights,
)
from packllm_integrations.errors import ConfigError


def test_sim_with_tau_one_is_inverse_perplexity() -> None:
    ppl = torch.tensor([10.0, 20.0, 40.0], dtype=torch.float64)
    w = sim_weights(ppl.log())
    inv = 1 / ppl
    assert torch.allclose(w, inv / inv.sum())
    sharp = sim_weights(ppl.log(), tau=0.1)
    assert float(sharp[0]) > 0.99
    with pytest.raises(ConfigError, match="tau"):
        sim_weights(ppl.log(), tau=0)


def test_top1_uniform_fixed() -> None:
    assert top1_weights(torch.tensor([2.0, 1.0, 1.0])).tolist() == [0.0, 1.0, 0.0]
    assert uniform_weights(4).tolist() == [0.25] * 4
    assert fixed_weights([2, 6], 2).tolist() == [0.25, 0.75]
    for bad in ([1], [1, -1], [0, 0], [math.nan, 1]):
        with pytest.raises(ConfigError, match="weights"):
            fixed_weights(bad, 2)


def test_opt_picks_the_member_that_explains_the_prompt() -> None:
    targets = torch.tensor([1, 2, 3, 1])
    good = torch.full((4, 5), -3.0)
    good[torch.arange(4), targets] = 3.0
    noise = torch.zeros(4, 5)
    w = opt_weights(torch.tensor([0.1, 1.6]), [good, noise], targets)
    assert w.tolist() == [1.0, 0.0]
    # two half-right members: the fused distribution beats each alone
    a = torch.zeros(4, 5)
    a[[0, 1], targets[:2]] = 4.0
    b = torch.zeros(4, 5)
    b[[2, 3], targets[2:]] = 4.0
    w = opt_weights(torch.tensor([1.0, 1.0]), [a, b], targets)
    assert w.tolist() == pytest.approx([0.5, 0.5])
    # weights off the grid come from products of betas
    w3 = opt_weights(torch.tensor([1.0, 1.0, 1.2]), [a, b, torch.zeros(4, 5)], targets)
    assert float(w3.sum()) == pytest.approx(1.0)


def test_opt_ties_keep_the_smallest_beta() -> None:
    same = torch.zeros(3, 4)
    w = opt_weights(torch.tensor([0.5, 0.5]), [same, same.clone()], torch.tensor([0, 1, 2]))
    assert w.tolist() == [0.0, 1.0]  # beta = 0: all weight to the member visited second


def test_opt_under_mixture_is_the_greedy_search_on_the_mixtures_perplexity() -> None:
    """Against the search written out on whole distributions: each candidate beta's mixture
    of probabilities over every column, its mean NLL at the targets, the strictly smallest."""
    gen = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 30, (12,), generator=gen)
    rows = torch.arange(12)
    for trial in range(20):
        logps = [torch.log_softmax(torch.randn(12, 30, generator=gen, dtype=torch.float64) * (1 + trial / 4), -1)]
        logps += [torch.log_softmax(torch.randn(12, 30, generator=gen, dtype=torch.float64) * 2, -1) for _ in range(2)]
        token_nlls = [-lp[rows, targets] for lp in logps]
        nll = torch.stack([t.mean() for t in token_nlls])
        order = sorted(range(3), key=lambda i: (float(nll[i]), i))
        expected = [0.0] * 3
        expected[order[0]] = 1.0
        probs = logps[order[0]].exp()
        for j in order[1:]:
            values = [
                float(-(b / 20 * probs + (1 - b / 20) * logps[j].exp())[rows, targets].log().mean()) for b in range(21)
            ]
            best = min(range(21), key=lambda i: (values[i], i)) / 20
            probs = best * probs + (1 - best) * logps[j].exp()
            expected = [w * best for w in expected]
            expected[j] = 1 - best
        assert opt_mixture_weights(nll, token_nlls).tolist() == pytest.approx(expected, abs=1e-12)
    # a member that is sure of every target takes all the weight; two half-right members share it
    sure, unsure = torch.full((4,), 1e-3, dtype=torch.float64), torch.full((4,), 3.0, dtype=torch.float64)
    assert opt_mixture_weights(torch.tensor([1e-3, 3.0]), [sure, unsure]).tolist() == [1.0, 0.0]
    left = torch.tensor([0.01, 0.01, 6.0, 6.0], dtype=torch.float64)
    assert opt_mixture_weights(torch.tensor([3.0, 3.0]), [left, left.flip(0)]).tolist() == [0.5, 0.5]


_plain = weighting._plain_nlls


def _direct_nlls(a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """The fused mean NLL per beta, straight from its definition, in float64."""
    out = []
    for i in range(21):
        beta = i / 20
        mixed = beta * a.double() + (1 - beta) * b.double()
        out.append(float((torch.logsumexp(mixed, -1) - mixed[torch.arange(len(targets)), targets]).mean()))
    return out


@pytest.mark.parametrize(
    ("spread", "sweep", "columns"), [(1.0, True, 300), (10.0, True, 300), (5.0, True, 9000), (200.0, False, 300)]
)
def test_mixture_nlls_match_the_definition(
    spread: float, sweep: bool, columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The product sweep (logits within 80 of their top: rows 7 and 73 nats wide here) and the
    plain path (wider) agree with the definition, across chunk boundaries (19 rows), on short
    rows and on 9000 columns."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(19, columns, generator=gen) * spread
    b = torch.randn(19, columns, generator=gen) * spread
    targets = torch.randint(0, columns, (19,), generator=gen)
    plain = []
    monkeypatch.setattr(weighting, "_plain_nlls", lambda *args: plain.append(1) or _plain(*args))
    got = mixture_nlls(a, b, targets)
    assert bool(plain) != sweep  # the path the spread should take
    assert got == pytest.approx(_direct_nlls(a, b, targets), rel=1e-5, abs=1e-4)


def test_mixture_nlls_take_weighted_sums_and_infinite_logits() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(5, 40, generator=gen) for _ in range(3))
    targets = torch.tensor([0, 3, 5, 7, 9])
    summed = mixture_nlls([(0.25, a), (0.75, b)], c, targets)
    assert summed == pytest.approx(_direct_nlls(0.25 * a + 0.75 * b, c, targets), rel=1e-5)
    masked = a.clone()
    masked[:, 20:] = -math.inf  # columns one member rules out (the targets are below 20)
    got = mixture_nlls(masked, b, targets)
    assert got[1:] == pytest.approx(_direct_nlls(masked, b, targets)[1:], rel=1e-5)
    assert got[0] == pytest.approx(_direct_nlls(b, b, targets)[0], rel=1e-5)  # beta 0: the other member alone
