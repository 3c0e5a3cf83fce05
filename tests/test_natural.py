"""Natural alignment on tiny in-memory models: each member reads its own tokenization."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch

from packllm_integrations import ConfigError, Member, PackEngine, TextEvent
from packllm_integrations.alignment.natural import BatchReader, natural_states, start_ids, token_ends
from packllm_integrations.alignment.projected_nll import projected_nll
from packllm_integrations.alignment.projected_scores import projected_scores
from packllm_integrations.alignment.projection import NaturalStates, Projection
from packllm_integrations.alignment.vocabulary import token_bytes
from packllm_integrations.decoding import fusion

PROMPT = "The function returns the value of the"
PROMPTS = [PROMPT, "import os\nimport sys\n\ndef main(", "A class is"]
TEXT = "def tokenize(text):\n    return [w for w in text.split() if w]  # café ☃ naïve\n\nclass Value:"


@pytest.fixture(autouse=True)
def _inference_mode():
    """States handed out by the engine are inference tensors: read them the same way."""
    with torch.inference_mode():
        yield


def fresh_last_logits(member: Member, ids: list[int]) -> torch.Tensor:
    """The member's next-token logits after ``ids``, from a plain forward pass (no cache)."""
    with torch.no_grad():
        return member.model(torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("fixture", ["bl", "sp"])
def test_reader_rollback_matches_a_fresh_forward(fixture: str, request: pytest.FixtureRequest) -> None:
    member: Member = request.getfixturevalue(fixture)
    reader = BatchReader.start(member, member.encode(TEXT[:1]) or start_ids(member))
    rolled = 0
    for end in range(1, len(TEXT) + 1, 2):  # the text grows by two characters at a time
        ids = member.encode(TEXT[:end]) or start_ids(member)
        reader.advance({0: ids})
        state = reader.state[0]
        assert reader.ids[0] == ids
        assert reader.cache.kv.get_seq_length() == len(ids)  # one row: cropped, not masked
        torch.testing.assert_close(member.scores(state[None])[0], fresh_last_logits(member, ids), atol=2e-4, rtol=1e-4)
        rolled = reader.rolled_back
    assert rolled > 0, "the text should have made some merges change (the rollback path must be exercised)"


@pytest.mark.parametrize("fixture", ["bl", "sp"])
def test_batch_reader_rows_roll_back_independently(fixture: str, request: pytest.FixtureRequest) -> None:
    member: Member = request.getfixturevalue(fixture)
    texts = [TEXT, PROMPTS[1] + "\n    return os.path.join(a, b)", PROMPT + " naïve café"]
    starts = [5, 12, 3]
    first = [member.encode(t[:n]) or start_ids(member) for t, n in zip(texts, starts, strict=True)]
    reader = BatchReader.from_prefill(member, first, member.prefill(first, rollback=True))
    ends = list(starts)
    for step in range(40):
        targets = {}
        for b, text in enumerate(texts):
            if step % (b + 1) == 0 and ends[b] < len(text):  # rows grow at different paces
                ends[b] = min(len(text), ends[b] + 1 + b)
                targets[b] = member.encode(text[: ends[b]])
        reader.advance(targets)
        for b in targets:
            ids = reader.ids[b]
            got = member.scores(reader.state[b][None])[0]
            torch.testing.assert_close(got, fresh_last_logits(member, ids), atol=2e-4, rtol=1e-4)
            if reader.prev[b] is not None:
                before = member.scores(reader.prev[b][None])[0]
                torch.testing.assert_close(before, fresh_last_logits(member, ids[:-1]), atol=2e-4, rtol=1e-4)
    assert reader.rolled_back > 0


@pytest.mark.parametrize(("ref", "other"), [("bl", "sp"), ("sp", "bl")])
def test_natural_states_match_fresh_forwards_at_every_reference_position(
    ref: str, other: str, request: pytest.FixtureRequest
) -> None:
    r: Member = request.getfixturevalue(ref)
    m: Member = request.getfixturevalue(other)
    ends = token_ends(r, TEXT)
    states = natural_states(m, TEXT, ends)
    assert len(states) == len(ends)
    for i, end in enumerate(ends):
        ids = m.encode(TEXT[:end]) or start_ids(m)
        assert int(states.last_ids[i]) == ids[-1]
        torch.testing.assert_close(m.scores(states.last[i : i + 1])[0], fresh_last_logits(m, ids), atol=2e-4, rtol=1e-4)
        assert bool(states.has_prev[i]) == (len(ids) >= 2 and ids[-1] not in m.special_ids)
        if states.has_prev[i]:
            before = fresh_last_logits(m, ids[:-1])
            torch.testing.assert_close(m.scores(states.prev[i : i + 1])[0], before, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["bl", "sp"])
def test_token_ends_never_cut_a_character(fixture: str, request: pytest.FixtureRequest) -> None:
    member: Member = request.getfixturevalue(fixture)
    ids = member.encode(TEXT)
    ends = token_ends(member, TEXT)
    assert len(ends) == len(ids) and ends[-1] == len(TEXT)
    assert ends == sorted(ends)
    for i, end in enumerate(ends):
        decoded = member.tokenizer.decode(ids[: i + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        # what the tokens decode to, without a partial character, is the text up to the end
        assert decoded.rstrip("\ufffd") == TEXT[:end] or decoded.rstrip("\ufffd").lstrip() == TEXT[:end].lstrip()


def fresh_scores(ref: Member, member: Member, engine: PackEngine, k: int, ids: list[int]) -> torch.Tensor:
    """Member k's reference-vocabulary scores after ``ids`` (its own tokens), from fresh forwards."""
    vmap = engine.vocab_map(0, k)
    last = fresh_last_logits(member, ids)[None]
    if vmap is None:
        return last[:, : ref.vocab_size]
    has_prev = len(ids) >= 2 and ids[-1] not in member.special_ids
    prev = fresh_last_logits(member, ids[:-1])[None] if has_prev else torch.zeros_like(last)
    # the tiny models' heads are separable: states == logits is not true, so project logits
    states = NaturalStates(last, prev, torch.tensor([ids[-1]]), torch.tensor([has_prev]), Projection(ref, member, vmap))
    return _project_logits(member, states)


def _project_logits(member: Member, states: NaturalStates) -> torch.Tensor:
    """Projection.scores for logits given directly (the member's head applied already)."""

    class _Identity:
        logits_width = member.logits_width

        def scores(self, x: torch.Tensor) -> torch.Tensor:
            return x.float()

    return states.projection.scores(_Identity(), states)  # type: ignore[union-attr, arg-type]


def brute_force_natural_greedy(
    members: list[Member], weights: list[float], prompt: str, n: int, fusion: str = "logits"
) -> str:
    """Greedy natural-alignment fusion with no cache: every step, every member re-reads its own
    tokenization of prompt + text so far; the first member is the reference. ``fusion``: the
    weighted sum of logits ('logits') or of probabilities ('mixture')."""
    engine = PackEngine(members)
    ref = members[0]
    generated: list[int] = []
    for _ in range(n):
        text = prompt + ref.tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        fused = None
        for k, m in enumerate(members):
            ids = (ref.encode(prompt) + generated) if k == 0 else m.encode(text.rstrip("\ufffd"))
            mapped = fresh_scores(ref, m, engine, k, ids)
            if fusion == "mixture":
                mapped = torch.softmax(mapped.float(), -1)
            fused = mapped * weights[k] if fused is None else fused + mapped * weights[k]
        pick = int(fused.argmax())
        if pick in ref.special_ids:  # the end of the text
            break
        generated.append(pick)
    return ref.tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("fusion", ["logits", "mixture"])
@pytest.mark.parametrize("pack", [["bl", "sp"], ["sp", "bl"]])
def test_natural_greedy_generation_matches_brute_force(
    pack: list[str], fusion: str, request: pytest.FixtureRequest
) -> None:
    members = [request.getfixturevalue(n) for n in pack]
    engine = PackEngine(members, alignment="natural", reference=members[0].name, weights=[0.6, 0.4], fusion=fusion)
    result = engine.generate(PROMPT, max_new_tokens=16)
    assert result.text == brute_force_natural_greedy(members, [0.6, 0.4], PROMPT, 16, fusion)


def test_natural_differs_from_mined_across_tokenizers(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], reference=bl.name, weights=[0.3, 0.7])
    mined = engine.score([(PROMPT, " value of the function")], alignment="mined")[0]
    natural = engine.score([(PROMPT, " value of the function")], alignment="natural")[0]
    assert mined.tokens == natural.tokens
    assert mined.logprob != pytest.approx(natural.logprob, abs=1e-3)


def test_natural_scoring_matches_brute_force(bl: Member, sp: Member) -> None:
    """Fixed weights (0, 1) with reference bl: the score is sp's own-tokenization prediction, mapped."""
    engine = PackEngine([bl, sp], reference=bl.name, weights=[0.0, 1.0], alignment="natural")
    context, continuation = "class Value:\n    def", " __init__(self, x):"
    result = engine.score([(context, continuation)])[0]
    text = context + continuation
    ids = bl.encode(text)
    ends = token_ends(bl, text)
    n_ctx = len(bl.encode(context))
    expected = 0.0
    for i in range(n_ctx - 1, len(ids) - 1):
        logits = fresh_scores(bl, sp, engine, 1, sp.encode(text[: ends[i]]) or start_ids(sp))
        expected += float(torch.log_softmax(logits.double(), -1)[0, ids[i + 1]])
    assert result.tokens == len(ids) - n_ctx
    assert result.logprob == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("pack", [["bl", "sp"], ["sp", "bl"]])
def test_natural_stream_equals_generate(pack: list[str], request: pytest.FixtureRequest) -> None:
    engine = PackEngine([request.getfixturevalue(n) for n in pack], alignment="natural")
    result = engine.generate(PROMPTS[1], max_new_tokens=10)
    streamed = "".join(e.text for e in engine.stream(PROMPTS[1], max_new_tokens=10) if isinstance(e, TextEvent))
    assert streamed == result.text


@pytest.mark.parametrize("weighting", ["sim", "opt"])
@pytest.mark.parametrize("scoring", ["reference", "own"])
def test_natural_weights_are_valid(weighting: str, scoring: str, bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], alignment="natural", weighting=weighting, scoring=scoring)
    event = engine.weights(PROMPT)
    assert sum(event.weights.values()) == pytest.approx(1.0)
    assert all(v is not None and v > 1 for v in event.prompt_perplexity.values())


def test_natural_reference_scoring_uses_what_the_member_predicts(bl: Member, sp: Member) -> None:
    """scoring='reference' with natural alignment: the non-reference member's perplexity on the
    reference tokens equals the one computed from its own-tokenization predictions."""
    engine = PackEngine([bl, sp], alignment="natural", reference=bl.name)
    event = engine.weights(PROMPT)
    ids = bl.encode(PROMPT)
    ends = token_ends(bl, PROMPT)
    total = 0.0
    for i in range(len(ids) - 1):
        logits = fresh_scores(bl, sp, engine, 1, sp.encode(PROMPT[: ends[i]]) or start_ids(sp))
        total -= float(torch.log_softmax(logits.double(), -1)[0, ids[i + 1]])
    expected = math.exp(total / (len(ids) - 1))
    assert event.prompt_perplexity[sp.name] == pytest.approx(expected, rel=1e-3)


def _forced_cross(engine: PackEngine) -> PackEngine:
    """The same engine, made to treat its members' shared tokenizer as different ones."""
    engine._fingerprints = [f"{f}-{i}" for i, f in enumerate(engine._fingerprints)]
    engine._maps.clear()
    return engine


@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_shared_tokenizer_gives_identical_results_with_the_cross_path_forced(
    alignment: str, bl: Member, bl_b: Member
) -> None:
    plain = PackEngine([bl, bl_b], alignment=alignment)
    forced = _forced_cross(PackEngine([bl, bl_b], alignment=alignment))
    assert plain.vocab_map(0, 1) is None and forced.vocab_map(0, 1) is not None
    for weighting in ("sim", "opt"):
        a = plain.weights_batch(PROMPTS, weighting=weighting)
        b = forced.weights_batch(PROMPTS, weighting=weighting)
        for x, y in zip(a, b, strict=True):
            assert x.weights == pytest.approx(y.weights, abs=1e-5)
            assert x.prompt_perplexity == pytest.approx(y.prompt_perplexity, rel=1e-5)
    request = [(PROMPT, " value of x"), ("import os\n", "import sys")]
    for x, y in zip(plain.score(request), forced.score(request), strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
    if alignment == "mined":
        # Natural alignment re-reads generated text, so a member's tokens can differ from the
        # generated ids when those are not how its tokenizer would cut the text (the tiny
        # models emit stray bytes); mined alignment reads the ids themselves.
        a = plain.generate_batch(PROMPTS, max_new_tokens=8)
        b = forced.generate_batch(PROMPTS, max_new_tokens=8)
        assert [r.text for r in a] == [r.text for r in b]


def test_natural_equals_mined_for_a_shared_tokenizer(bl: Member, bl_b: Member) -> None:
    engine = PackEngine([bl, bl_b])
    a = engine.generate_batch(PROMPTS, max_new_tokens=8, alignment="mined")
    b = engine.generate_batch(PROMPTS, max_new_tokens=8, alignment="natural")
    assert [r.text for r in a] == [r.text for r in b]


def test_bad_alignment_is_named(bl: Member) -> None:
    with pytest.raises(ConfigError, match="alignment"):
        PackEngine([bl], alignment="exact")


def _longest_reference_prefix(r: Member) -> Callable[[bytes], int | None]:
    """The reference token that bytes start with, longest first (plain loops: the tests' oracle)."""
    ref_bytes = token_bytes(r.tokenizer)[: r.vocab_size]
    ref_tokens = r.tokenizer.convert_ids_to_tokens(list(range(r.vocab_size)))
    by_bytes: dict[bytes, int] = {}
    for byte_tokens in (False, True):  # a token the tokenizer writes text with beats a byte token (<0x28>)
        for i, b in enumerate(ref_bytes):
            is_byte = len(ref_tokens[i]) == 6 and ref_tokens[i].startswith("<0x")
            if b and i not in r.special_ids and is_byte == byte_tokens:
                by_bytes.setdefault(b, i)

    def longest(b: bytes) -> int | None:
        for n in range(len(b), 0, -1):
            if b[:n] in by_bytes:
                return by_bytes[b[:n]]
        return None

    return longest


@pytest.mark.parametrize(("ref", "other"), [("bl", "sp"), ("sp", "bl")])
def test_projection_names_the_member_tokens_that_reach_each_column(
    ref: str, other: str, request: pytest.FixtureRequest
) -> None:
    """What a served member is asked for to score reference candidates: every member token the
    partition sends to them (each column's shortest first), a column's MinED token where none
    reaches it, and the extensions of a cut token that reach them; capped at ``most``."""
    r: Member = request.getfixturevalue(ref)
    m: Member = request.getfixturevalue(other)
    vmap = PackEngine([r, m]).vocab_map(0, 1)
    proj = Projection(r, m, vmap)
    longest = _longest_reference_prefix(r)
    mem_bytes = token_bytes(m.tokenizer)[: m.logits_width]
    text_tokens = [t for t, b in enumerate(mem_bytes) if b and t not in m.special_ids]
    reaching: dict[int, set[int]] = {}
    for t in text_tokens:
        v = longest(mem_bytes[t])
        if v is not None:
            reaching.setdefault(v, set()).add(t)
    columns = (
        sorted(reaching, key=lambda v: -len(reaching[v]))[:3]
        + [v for v in range(r.vocab_size) if v not in reaching][:1]
    )
    got = proj.sources(columns, 10_000)
    unreached = columns[-1]
    want = set().union(*(reaching[c] for c in columns[:-1])) | {int(vmap.output[unreached])}
    assert set(got) == want and len(got) == len(want)
    firsts = got[: len(columns)]  # one per column first, each column's shortest
    assert [longest(mem_bytes[t]) for t in firsts[:-1]] == columns[:-1]
    shortest = {c: min(len(mem_bytes[t]) for t in reaching[c]) for c in columns[:-1]}
    assert [len(mem_bytes[t]) for t in firsts[:-1]] == [shortest[c] for c in columns[:-1]]
    assert proj.sources(columns, 2) == got[:2]
    u = next(t for t in text_tokens if sum(mem_bytes[x].startswith(mem_bytes[t]) for x in text_tokens) > 3)
    extending = {
        x: longest(mem_bytes[x][len(mem_bytes[u]) :])
        for x in text_tokens
        if len(mem_bytes[x]) > len(mem_bytes[u]) and mem_bytes[x].startswith(mem_bytes[u])
    }
    targets = sorted({v for v in extending.values() if v is not None})[:2]
    assert targets
    got = proj.extension_sources(u, targets, 10_000)
    assert sorted(got) == sorted(x for x, v in extending.items() if v in targets)
    assert [len(mem_bytes[x]) for x in got] == sorted(len(mem_bytes[x]) for x in got)


@pytest.mark.parametrize(("ref", "other"), [("bl", "sp"), ("sp", "bl")])
def test_projection_matches_an_explicit_sum_over_member_tokens(
    ref: str, other: str, request: pytest.FixtureRequest
) -> None:
    """Partition plus healing, recomputed with plain loops over the member's token bytes."""
    r: Member = request.getfixturevalue(ref)
    m: Member = request.getfixturevalue(other)
    vmap = PackEngine([r, m]).vocab_map(0, 1)
    proj = Projection(r, m, vmap)
    longest = _longest_reference_prefix(r)
    mem_bytes = token_bytes(m.tokenizer)
    ids = m.encode("def tokenize(te")  # ends inside a word: healing has work to do
    last, prev = fresh_last_logits(m, ids), fresh_last_logits(m, ids[:-1])
    states = NaturalStates(last[None], prev[None], torch.tensor([ids[-1]]), torch.tensor([True]), proj)
    got = _project_logits(m, states)[0].double()
    p_last, p_prev = torch.softmax(last.double(), -1), torch.softmax(prev.double(), -1)
    expected = torch.zeros(r.vocab_size, dtype=torch.float64)
    u = mem_bytes[ids[-1]]
    for t, b in enumerate(mem_bytes[: m.logits_width]):
        if t in m.special_ids or not b:
            continue
        v = longest(b)
        if v is not None:
            expected[v] += p_prev[ids[-1]] * p_last[t]
        if len(b) > len(u) and b.startswith(u):
            v = longest(b[len(u) :])
            if v is not None:
                expected[v] += p_prev[t]
    ref_eos = sorted(i for i in r.eos_token_ids if i < r.vocab_size)
    for t in m.eos_token_ids:
        expected[ref_eos[0]] += p_prev[ids[-1]] * p_last[t]
    reached = expected > 0
    assert int(reached.sum()) > r.vocab_size // 4
    torch.testing.assert_close(got[reached], expected[reached].log(), atol=1e-4, rtol=1e-4)
    # columns nothing reaches: the MinED value (log-probability of the mapped token) where the
    # partition left that token unused, split among its columns; the rest share 1% of the mass
    fallback = vmap.member_logits(torch.log_softmax(last[None], -1))[0].double() + torch.log(p_prev[ids[-1]])
    used = {t for t, b in enumerate(mem_bytes[: m.logits_width]) if t not in m.special_ids and b and longest(b)}
    used |= set(m.eos_token_ids)
    mined = vmap.output[: r.vocab_size].tolist()
    partition_targets = {longest(b) for t, b in enumerate(mem_bytes[: m.logits_width]) if t in used and b} | {
        ref_eos[0]
    }
    free = torch.tensor(
        [v not in partition_targets and mined[v] < m.logits_width and mined[v] not in used for v in range(r.vocab_size)]
    )
    free &= ~reached
    count = {u: mined.count(u) for u in set(mined)}
    shift = torch.tensor([math.log(count[mined[v]]) for v in range(r.vocab_size)], dtype=torch.float64)
    torch.testing.assert_close(got[free], (fallback - shift)[free], atol=1e-4, rtol=1e-4)
    shared = ~reached & ~free
    mass = float(expected.sum()) * 0.01
    want = fallback[shared] - torch.logsumexp(fallback[shared], 0) + math.log(mass)
    torch.testing.assert_close(got[shared], want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("ref", "other"), [("bl", "sp"), ("sp", "bl")])
def test_a_members_projected_nll_needs_no_full_scores_and_equals_them(
    ref: str, other: str, request: pytest.FixtureRequest
) -> None:
    """Every column of the reference vocabulary (reached, free and shared ones) as the target
    at every position of a text, with and without healing: the NLL from the member's own
    distribution equals the log-softmax of the projection's full scores."""
    r: Member = request.getfixturevalue(ref)
    m: Member = request.getfixturevalue(other)
    proj = Projection(r, m, PackEngine([r, m]).vocab_map(0, 1))
    text = "def tokenize(text):\n    return text.split()  # the words"
    ends = token_ends(r, text)
    states = natural_states(m, text, ends[:-1], None, proj)
    states.has_prev[::2] = False  # every other position read without healing
    assert bool(states.has_prev.any())
    n, vocab = len(states), r.vocab_size
    index = torch.arange(n).repeat_interleave(vocab)
    every = NaturalStates(states.last[index], states.prev[index], states.last_ids[index], states.has_prev[index], proj)
    targets = torch.arange(vocab).repeat(n)
    full = proj.scores(m, states)  # [n, V]
    want = (torch.logsumexp(full, -1, keepdim=True) - full).double().flatten()
    got = projected_nll(proj, m, every, targets)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-5)
    kinds = proj._free[targets]  # free columns were among the targets, and shared ones
    assert bool(kinds.any()) and not bool(kinds.all())


@pytest.mark.parametrize(("ref", "other"), [("bl", "sp"), ("sp", "bl")])
def test_projected_scores_written_by_kind_equal_the_full_scores(
    ref: str, other: str, request: pytest.FixtureRequest
) -> None:
    """The scores decoding uses (each kind of column written once) equal the full projection's,
    at positions with and without healing, and where a reachable column's probability rounds
    to 0 (sharpened states), where the full scores count it as unreached."""
    r: Member = request.getfixturevalue(ref)
    m: Member = request.getfixturevalue(other)
    proj = Projection(r, m, PackEngine([r, m]).vocab_map(0, 1))
    text = "def tokenize(text):\n    return text.split()  # the words, naïve café"
    states = natural_states(m, text, token_ends(r, text)[:-1], None, proj)
    states.has_prev[::3] = False
    assert bool(states.has_prev.any()) and proj.heal
    healed = [int(u) for u, h in zip(states.last_ids, states.has_prev, strict=True) if h]
    assert any(proj.extensions(u)[0].numel() for u in healed), "some cut token should have extensions"
    for case in (states, NaturalStates(states.last * 400, states.prev * 400, states.last_ids, states.has_prev, proj)):
        want, want_lp = proj.scores_and_logprobs(m, case)
        got, got_lp = projected_scores(proj, m, case)
        assert got.shape == want.shape and torch.equal(got_lp, want_lp)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite], atol=1e-4, rtol=1e-5)
        assert len(case) > 8  # projected a few rows at a time: the same scores up to float32 rounding
        torch.testing.assert_close(
            fusion.reference_scores(m, case, None, r.vocab_size, rows=3), got, rtol=1e-4, atol=1e-4
        )  # as above: summed in another order on some processors (4.9e-4 on a score of 27 measured)
        kept = torch.log_softmax(m.scores(case.prev).float(), -1)  # a slice keeps known previous log-probabilities
        assert torch.equal(dataclasses.replace(case, prev_logprobs=kept)[1:3].prev_logprobs, kept[1:3])
    p = torch.softmax(m.scores(case.last).float(), -1).index_select(1, proj._src)
    columns = torch.zeros(len(case), r.vocab_size).index_add_(1, proj._dst, p)[:, proj._dst.unique()]
    assert bool((columns == 0).any()), "the sharpened states should round some reachable column to 0"


@pytest.mark.parametrize(("ref", "other"), [("bl", "sp"), ("sp", "bl")])
def test_reader_views_score_each_row_as_its_view_does(ref: str, other: str, request: pytest.FixtureRequest) -> None:
    """Decoding scores all of a member's rows in one projection call (:meth:`BatchReader.views`):
    each row equals that row scored alone, whether its log-probabilities before the last token
    were kept from the step before (one new token) or are computed (a re-fed tail)."""
    r: Member = request.getfixturevalue(ref)
    m: Member = request.getfixturevalue(other)
    proj = Projection(r, m, PackEngine([r, m]).vocab_map(0, 1))
    texts = [TEXT, PROMPTS[1] + "\n    return os.path.join(a, b)", PROMPT + " naïve café", "x = 1"]
    ends = [4, 10, 3, 2]
    first = [m.encode(t[:n]) or start_ids(m) for t, n in zip(texts, ends, strict=True)]
    reader = BatchReader.from_prefill(m, first, m.prefill(first, rollback=True))
    kept = computed = 0
    for step in range(24):
        rows = [b for b in range(len(texts)) if ends[b] < len(texts[b]) and step % (b + 1) == 0]
        for b in rows:
            ends[b] = min(len(texts[b]), ends[b] + 1 + step % 3)
        reader.advance({b: m.encode(texts[b][: ends[b]]) for b in rows})
        rows = rows or [0]
        known = [reader.view(b, proj).prev_logprobs is not None for b in rows]
        kept += sum(known)
        computed += len(known) - sum(known)
        alone = [projected_scores(proj, m, reader.view(b, proj)) for b in rows]
        together, logprobs = projected_scores(proj, m, reader.views(rows, proj))
        for i, b in enumerate(rows):
            torch.testing.assert_close(together[i], alone[i][0][0], atol=1e-5, rtol=1e-6)
            torch.testing.assert_close(logprobs[i], alone[i][1][0], atol=1e-5, rtol=1e-6)
            reader.last_logprobs[b] = logprobs[i]  # as the aligner keeps them for the next step
    assert kept and computed, "both kinds of rows should have been scored together"
