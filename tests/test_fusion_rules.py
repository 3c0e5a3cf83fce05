"""Fusion rules beyond the paper's weighted sum of logits (``GenerationConfig.fusion``).

Each rule's defining property on hand-made scores, then every rule through the engine on the
tiny models (two tokenizers): both alignment modes, greedy and sampled, batched and streamed,
under a grammar, and in ``score()``; then ``sequence``, which fuses whole continuations'
scores and only scores.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from packllm_integrations import ConfigError, Constraint, GenerationConfig, Member, PackEngine, TextEvent
from packllm_integrations.config import TOKEN_FUSIONS
from packllm_integrations.decoding.fusion import Fused, FusionRule, fuse, fuse_by

PROMPT = "The function returns the value of the"
PROMPTS = [PROMPT, "import os\nimport sys\n\ndef main(", "A class is"]


def _scores(seed: int, rows: int = 4, vocab: int = 50) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


# ---- defining properties, on hand-made scores ------------------------------------------------


def test_union_is_the_mixture_of_probabilities_on_the_union_of_each_members_best_tokens() -> None:
    a, b = _scores(0), _scores(1)
    w = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8], [1.0, 0.0]])
    fused = fuse_by(FusionRule("union", union_k=3), [a, b], w)
    mixture = w[:, :1] * a.softmax(-1) + w[:, 1:] * b.softmax(-1)
    assert torch.allclose(fused.logits.exp(), mixture, atol=1e-6)
    assert fused.support is not None
    for g in range(4):
        best = set(a[g].topk(3).indices.tolist()) | (set(b[g].topk(3).indices.tolist()) if w[g, 1] > 0 else set())
        assert set(fused.support[g].nonzero().squeeze(-1).tolist()) == best
    picked = fused.allowed().argmax(-1)
    assert all(bool(fused.support[g, picked[g]]) for g in range(4))


def test_mixture_is_the_weighted_mixture_of_probabilities_over_every_token() -> None:
    a, b = _scores(6), _scores(7)
    w = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.05, 0.95], [1.0, 0.0]])
    fused = fuse_by(FusionRule("mixture"), [a, b], w)
    assert fused.support is None
    mixture = w[:, :1] * a.softmax(-1) + w[:, 1:] * b.softmax(-1)
    assert torch.allclose(fused.logits.exp(), mixture, atol=1e-6)
    assert torch.allclose(fused.logits[3], torch.log_softmax(a[3], -1), atol=1e-5)  # a zero weight takes no part
    # it never loses more than -log(w_k) to a member it mixes with weight w_k; a sum of logits can
    targets = torch.arange(4)
    for k, member in enumerate((a, b)):
        alone = torch.log_softmax(member, -1).gather(-1, targets[:, None]).squeeze(-1)
        bound = alone + torch.log(w[:, k])
        assert bool((fused.log_probs(targets) >= bound - 1e-5).all())


def test_a_mixture_of_one_member_is_that_members_distribution_without_a_pass_over_it() -> None:
    a, b = _scores(8), _scores(9)
    w = torch.tensor([[1.0, 0.0]] * 4)
    fused = fuse_by(FusionRule("mixture"), [a, b], w)
    assert fused.logits.data_ptr() == a.data_ptr()  # its scores as they are: their softmax is the mixture
    targets = torch.tensor([3, 1, 4, 1])
    expected = torch.log_softmax(a, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(fused.log_probs(targets), expected, atol=1e-6)
    assert torch.equal(fused.allowed().argmax(-1), a.argmax(-1))


def test_mixture_keeps_the_columns_whose_probability_underflows_finite_and_in_order() -> None:
    """Summed as probabilities, a column every member puts below exp(-87) would be 0; it keeps
    its log-space value (and a column every member rules out stays -inf)."""
    a, b = _scores(6), _scores(7)
    a[0, :3] = torch.tensor([-300.0, -400.0, -math.inf])
    b[0, :3] = torch.tensor([-350.0, -500.0, -math.inf])
    w = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])
    fused = fuse_by(FusionRule("mixture"), [a, b], w).logits
    exact = torch.logaddexp(torch.log_softmax(a, -1) + w[:, :1].log(), torch.log_softmax(b, -1) + w[:, 1:].log())
    assert torch.allclose(fused, exact, atol=1e-5)
    assert fused[0, 0] > fused[0, 1] > -math.inf
    assert fused[0, 2] == -math.inf


def test_mixture_scores_are_the_weighted_mixture_of_the_members_alone(bl: Member, bl_b: Member) -> None:
    """Two members that share a tokenizer: each scored token's fused probability is the weighted
    mixture of each member's own probability of it."""
    pairs = [(PROMPT, " value of the list"), ("import os\nimport sys\n\ndef main(", "):\n    pass")]
    weights = (0.3, 0.7)
    fused = PackEngine([bl, bl_b], fusion="mixture", weighting="fixed", weights=weights).score(pairs)
    alone = [PackEngine([m]).score(pairs) for m in (bl, bl_b)]
    for i, r in enumerate(fused):
        mixed = [
            math.log(weights[0] * math.exp(x) + weights[1] * math.exp(y))
            for x, y in zip(alone[0][i].token_logprobs, alone[1][i].token_logprobs, strict=True)
        ]
        assert r.token_logprobs == pytest.approx(mixed, abs=1e-4)


def test_gated_follows_a_confident_leader_and_fuses_elsewhere() -> None:
    vocab = 5
    leader = torch.full((2, vocab), -5.0)
    leader[0, 1] = 5.0  # row 0: the leader is sure of token 1
    leader[1, 1], leader[1, 2] = 1.0, 0.9  # row 1: it hesitates between 1 and 2
    other = torch.full((2, vocab), -5.0)
    other[:, 2] = 5.0  # the other member prefers token 2 on both rows
    w = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    fused = fuse_by(FusionRule("gated", gate=0.9), [leader, other], w)
    assert torch.equal(fused.logits[0], leader[0])
    assert torch.allclose(fused.logits[1], fuse([leader, other], w)[1])
    assert fused.logits[1].argmax() == 2  # fused: the other member's strong preference wins
    agreeing = fuse_by(FusionRule("gated", gate=1.0), [leader, leader * 0.5], w)
    assert torch.equal(agreeing.logits, leader)  # every member's best token is the same


def test_contrastive_subtracts_the_lowest_weighted_member_among_plausible_tokens() -> None:
    a, b, c = _scores(2), _scores(3), _scores(4)
    w = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2], [0.5, 0.5, 0.0]])
    fused = fuse_by(FusionRule("contrastive", contrast=0.5), [a, b, c], w)
    members = [a, b, c]
    for g in range(3):
        weak = int(w[g].argmin())
        keep = w[g].clone()
        keep[weak] = 0
        keep = keep / keep.sum()
        expert = torch.log_softmax(sum(keep[k] * members[k][g] for k in range(3)), -1)
        amateur = torch.log_softmax(members[weak][g], -1)
        assert torch.allclose(fused.logits[g], 1.5 * expert - 0.5 * amateur, atol=1e-5)
        plausible = expert >= expert.max() + math.log(0.1)
        assert torch.equal(fused.support[g], plausible)  # type: ignore[index]
    # row 3: the zero-weighted member takes no part; of two equal weights, the first is the amateur
    expert = torch.log_softmax(b[3], -1)
    assert torch.allclose(fused.logits[3], 1.5 * expert - 0.5 * torch.log_softmax(a[3], -1), atol=1e-5)
    plain = fuse_by(FusionRule("contrastive", contrast=0.0), [a, b, c], w)
    assert plain.support is None and torch.equal(plain.logits, fuse([a, b, c], w))


def test_a_single_member_is_itself_under_every_rule() -> None:
    a = _scores(5)
    w = torch.ones(4, 1)
    for name in TOKEN_FUSIONS:
        fused = fuse_by(FusionRule(name), [a], w)
        assert torch.equal(fused.allowed().argmax(-1), a.argmax(-1)), name


def test_scoring_normalises_over_the_support_and_the_scored_token() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    support = torch.tensor([[True, True, False, False]])
    fused = Fused(logits, support)
    inside = fused.log_probs(torch.tensor([1]))
    assert inside.item() == pytest.approx(1.0 - math.log(math.exp(2) + math.exp(1)))
    outside = fused.log_probs(torch.tensor([3]))
    assert outside.item() == pytest.approx(-1.0 - math.log(math.exp(2) + math.exp(1) + math.exp(-1)))
    # a grammar that allows only unsupported tokens keeps them rather than allowing nothing
    masked = logits.masked_fill(torch.tensor([[True, True, False, True]]), float("-inf"))
    assert fused.restrict(masked).argmax().item() == 2


def test_settings_are_checked() -> None:
    for name, value in [("fusion", "average"), ("union_k", 0), ("gate", 1.5), ("contrast", -1.0)]:
        with pytest.raises(ConfigError, match=name):
            GenerationConfig(**{name: value})  # type: ignore[arg-type]


# ---- through the engine, on the tiny models ---------------------------------------------------


@pytest.mark.parametrize("alignment", ["mined", "natural"])
@pytest.mark.parametrize("fusion", [f for f in TOKEN_FUSIONS if f != "logits"])
def test_every_rule_generates_streams_and_batches(bl: Member, sp: Member, fusion: str, alignment: str) -> None:
    engine = PackEngine([bl, sp], alignment=alignment, fusion=fusion, max_new_tokens=10)
    single = [engine.generate(p) for p in PROMPTS]
    assert all(r.usage.completion_tokens == 10 or r.finish_reason == "stop" for r in single)
    assert [r.text for r in engine.generate_batch(PROMPTS)] == [r.text for r in single]
    streamed = "".join(e.text for e in engine.stream(PROMPT) if isinstance(e, TextEvent))
    assert streamed == single[0].text
    sampled = engine.generate(PROMPT, temperature=1.0, seed=3)
    assert sampled.text == engine.generate(PROMPT, temperature=1.0, seed=3).text


def test_gated_at_zero_is_the_leading_member_alone(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], max_new_tokens=12)
    for prompt in PROMPTS:
        assert engine.generate(prompt, fusion="gated", gate=0.0).text == engine.generate(prompt, weighting="top1").text


def test_gated_at_one_is_the_weighted_sum_when_greedy(bl: Member, bl_b: Member) -> None:
    engine = PackEngine([bl, bl_b], max_new_tokens=12)
    for prompt in PROMPTS:
        assert engine.generate(prompt, fusion="gated", gate=1.0).text == engine.generate(prompt, fusion="logits").text


def test_contrastive_at_zero_and_union_of_one_member(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], max_new_tokens=12)
    summed = engine.generate(PROMPT, fusion="logits").text
    assert engine.generate(PROMPT, fusion="contrastive", contrast=0.0).text == summed
    solo = PackEngine([bl], max_new_tokens=12)
    assert solo.generate(PROMPT, fusion="union").text == solo.generate(PROMPT).text


def test_union_greedy_picks_one_of_the_members_best_tokens(bl: Member, bl_b: Member) -> None:
    """With union_k=1 every greedy token is some member's own best token at that step."""
    engine = PackEngine([bl, bl_b], fusion="union", union_k=1, max_new_tokens=1)
    text = PROMPT
    for _ in range(6):
        ids = bl.encode(text)
        with torch.inference_mode():  # as the engine runs them (a model's cached tensors may be inference tensors)
            best = {int(m.scores(m.prefill([ids]).row(0))[-1].argmax()) for m in (bl, bl_b)}
        piece = engine.generate(text).text
        assert piece in {bl.decode([t]) for t in best}
        text += piece


@pytest.mark.parametrize("fusion", TOKEN_FUSIONS)
def test_every_rule_keeps_a_grammar(bl: Member, sp: Member, fusion: str) -> None:
    engine = PackEngine([bl, sp], fusion=fusion, max_new_tokens=40)  # the grammar ends by 30 characters
    result = engine.generate(PROMPT, constraint=Constraint.regex(r"[a-z]{2,6}( [a-z]{2,6}){1,3}\."))
    assert result.finish_reason == "stop"
    assert re.fullmatch(r"[a-z]{2,6}( [a-z]{2,6}){1,3}\.", result.text)


@pytest.mark.parametrize("fusion", TOKEN_FUSIONS)
def test_every_rule_scores_continuations(bl: Member, sp: Member, fusion: str) -> None:
    engine = PackEngine([bl, sp])
    results = engine.score([(PROMPT, " value"), (PROMPT, " zebra crossing")], fusion=fusion)
    assert all(math.isfinite(r.logprob) and r.logprob < 0 for r in results)
    greedy = engine.generate(PROMPT, fusion=fusion, max_new_tokens=1).text
    assert engine.score([(PROMPT, greedy)], fusion=fusion)[0].is_greedy


# ---- sequence: the members' own log-likelihoods of a whole continuation, weighted ------------------

PAIRS = [(PROMPT, " value"), (PROMPT, " zebra crossing"), ("import os\nimport sys\n\ndef main(", "):\n    pass")]


def _alone(member: Member) -> list[float]:
    return [r.logprob for r in PackEngine([member]).score(PAIRS)]


@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_sequence_with_one_hot_weights_is_each_member_alone(bl: Member, sp: Member, alignment: str) -> None:
    engine = PackEngine([bl, sp], alignment=alignment, fusion="sequence")
    for k, member in enumerate((bl, sp)):
        weights = tuple(1.0 if j == k else 0.0 for j in range(2))
        fused = engine.score(PAIRS, weighting="fixed", weights=weights)
        assert [r.logprob for r in fused] == pytest.approx(_alone(member), rel=1e-4, abs=1e-4)
        assert all(r.token_logprobs == [] for r in fused)


@pytest.mark.parametrize("weighting", ["uniform", "sim"])
def test_sequence_is_the_weighted_sum_of_the_members_own_log_likelihoods(
    bl: Member, sp: Member, weighting: str
) -> None:
    engine = PackEngine([bl, sp], weighting=weighting, scoring="own")
    fused = engine.score(PAIRS, fusion="sequence")
    tokens = engine.score(PAIRS)  # the same prompt weighting, fused token by token
    alone = list(zip(_alone(bl), _alone(sp), strict=True))
    for r, t, (a, b) in zip(fused, tokens, alone, strict=True):
        assert r.weights == pytest.approx(t.weights)
        w = [r.weights[bl.name], r.weights[sp.name]]
        assert r.logprob == pytest.approx(w[0] * a + w[1] * b, rel=1e-4)
        assert r.tokens == t.tokens and r.num_bytes == t.num_bytes
    if weighting == "uniform":  # (sim all but picks one member on these prompts)
        assert fused[0].logprob != pytest.approx(tokens[0].logprob, rel=1e-3)  # not the token-level fusion


def test_sequence_needs_no_alignment_with_own_scores(bl: Member, sp: Member, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``sim`` on own scores, each member reads only its own tokens: nothing is walked or translated."""
    import packllm_integrations.decoding.planning as planning
    import packllm_integrations.decoding.scoring as scoring

    def refused(*args: object) -> None:
        raise AssertionError("a member's states in the reference's positions were computed")

    monkeypatch.setattr(scoring, "walk_states", refused)
    monkeypatch.setattr(planning.Planned, "translated_states", refused)
    results = PackEngine([bl, sp], scoring="own").score(PAIRS, fusion="sequence")
    assert all(math.isfinite(r.logprob) for r in results)


def test_sequence_is_greedy_where_every_weighted_member_is(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], fusion="sequence", weighting="fixed", weights=(0.5, 0.5))
    for weights, member in (((1.0, 0.0), bl), ((0.0, 1.0), sp)):
        greedy = PackEngine([member], max_new_tokens=1).generate(PROMPT).text
        assert engine.score([(PROMPT, greedy)], weights=weights)[0].is_greedy
    assert not engine.score([(PROMPT, " zebra crossing")])[0].is_greedy


def test_sequence_scores_but_does_not_generate(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], fusion="sequence")
    assert math.isfinite(engine.score(PAIRS[:1])[0].logprob)
    for call in (lambda: engine.generate(PROMPT), lambda: list(engine.stream(PROMPT))):
        with pytest.raises(ConfigError, match="fusion.*sequence.*score"):
            call()
    solo = PackEngine([bl])  # one member: its sequence score is its own score
    assert solo.score(PAIRS, fusion="sequence")[1].logprob == pytest.approx(solo.score(PAIRS)[1].logprob)
