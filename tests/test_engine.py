"""Engine properties on tiny in-memory models (two tokenizer families)."""

from __future__ import annotations

import math
import threading
import warnings

import pytest
import torch

from packllm_integrations import (
    ConfigError,
    FinishEvent,
    Member,
    PackEngine,
    PromptError,
    PromptTooLongError,
    TextEvent,
    WeightsEvent,
)
from packllm_integrations.alignment.vocabulary import token_bytes
from packllm_integrations.decoding.session import Session

PROMPT = "The function returns the value of the"
PROMPTS = [PROMPT, "import os\nimport sys\n\ndef main(", "A class is"]


def hf_greedy(member: Member, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([member.encode(prompt)])
    out = member.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("fixture", ["bl", "sp"])
def test_single_member_matches_transformers_generate(fixture: str, request: pytest.FixtureRequest) -> None:
    member = request.getfixturevalue(fixture)
    member = Member(member.name, member.model, member.tokenizer, eos_token_ids=frozenset({-1}))  # never stop early
    engine = PackEngine([member])
    session = engine.session([PROMPT], max_new_tokens=12)
    tokens = []
    session.prefill()
    for _ in range(12):
        t = session.choose()
        tokens.append(t[0])
        session.feed(t)
    assert tokens == hf_greedy(member, PROMPT, 12)


@pytest.mark.parametrize("fusion", ["logits", "mixture"])
def test_weights_one_zero_reproduce_first_member_logits(bl: Member, sp: Member, fusion: str) -> None:
    for pack in ([bl, sp], [sp, bl]):
        engine = PackEngine(pack, weights=(1.0, 0.0), reference=pack[0].name, fusion=fusion)
        session = engine.session([PROMPT])
        session.prefill()
        for _ in range(3):
            fused = session.fused([0], 0).logits
            own = session.aligners[0].next[:, : pack[0].vocab_size]
            if fusion == "logits":
                assert torch.equal(fused, own)
            else:  # a mixture is of probabilities: the member's own distribution
                assert torch.allclose(torch.log_softmax(fused, -1), torch.log_softmax(own.float(), -1))
            session.feed(session.choose())
        alone = PackEngine([pack[0]]).generate(PROMPT, max_new_tokens=10)
        assert engine.generate(PROMPT, max_new_tokens=10).text == alone.text


def test_same_tokenizer_pair_needs_no_alignment(bl: Member, bl_b: Member) -> None:
    engine = PackEngine([bl, bl_b])
    assert engine.shared_vocabulary
    assert engine.vocab_map(0, 1) is None
    result = engine.generate(PROMPT, max_new_tokens=8)
    assert result.usage.completion_tokens == 8 and result.finish_reason == "length"


def independent_nll(member: Member, ids: list[int], first: int = 1) -> float:
    """Mean NLL of ids[first:] under a plain forward pass (float64)."""
    with torch.no_grad():
        logits = member.model(torch.tensor([ids])).logits[0, first - 1 : -1, : member.vocab_size].double()
    logp = torch.log_softmax(logits, -1)
    return float(-logp[torch.arange(len(ids) - first), torch.tensor(ids[first:])].mean())


def test_sim_weights_match_formula_same_tokenizer(bl: Member, bl_b: Member) -> None:
    engine = PackEngine([bl, bl_b])
    for tau in (1.0, 0.5, 3.0):
        event = engine.weights(PROMPT, tau=tau)
        nll = torch.tensor([independent_nll(m, m.encode(PROMPT)) for m in (bl, bl_b)], dtype=torch.float64)
        expected = torch.softmax(-nll / tau, 0)
        got = torch.tensor([event.weights[m.name] for m in (bl, bl_b)], dtype=torch.float64)
        assert torch.allclose(got, expected, atol=1e-5)
        for m, v in zip((bl, bl_b), nll, strict=True):
            assert event.prompt_perplexity[m.name] == pytest.approx(float(torch.exp(v)), rel=1e-4)


def greedy_opt_reference(logits: list[torch.Tensor], targets: torch.Tensor, fusion: str = "logits") -> list[float]:
    """PACKLLM.md's greedy search, written out independently in float64: the fused model is
    the weighted sum of logits, or with ``fusion="mixture"`` the mixture of probabilities."""

    def mean_nll(logp: torch.Tensor) -> float:
        return float(-logp[torch.arange(len(targets)), targets].mean())

    def fuse(cur: torch.Tensor, new: torch.Tensor, beta: float) -> torch.Tensor:  # log-probabilities
        if fusion == "mixture":
            return (beta * cur.exp() + (1 - beta) * new.exp()).log()
        return torch.log_softmax(beta * cur + (1 - beta) * new, -1)  # log_softmax: logits up to a row constant

    logps = [torch.log_softmax(x.double(), -1) for x in logits]
    k = len(logits)
    order = sorted(range(k), key=lambda i: (mean_nll(logps[i]), i))
    w = [0.0] * k
    w[order[0]] = 1.0
    cur = logps[order[0]]
    for j in order[1:]:
        scores = [(mean_nll(fuse(cur, logps[j], b / 20)), b / 20) for b in range(21)]
        best = min(scores, key=lambda s: (s[0], s[1]))[1]
        cur = fuse(cur, logps[j], best)
        w = [x * best for x in w]
        w[j] = 1 - best
    return w


@pytest.mark.parametrize("fusion", ["logits", "mixture"])
def test_opt_weights_match_greedy_search(bl: Member, bl_b: Member, fusion: str) -> None:
    members = [bl, bl_b, Member("third", bl_b.model, bl.tokenizer)]
    members[2] = Member("third", type(bl_b.model)(bl_b.model.config).eval(), bl.tokenizer)
    engine = PackEngine(members, fusion=fusion)
    ids = bl.encode(PROMPT)
    with torch.no_grad():
        logits = [m.model(torch.tensor([ids])).logits[0, :-1, : bl.vocab_size] for m in members]
    expected = greedy_opt_reference(logits, torch.tensor(ids[1:]), fusion)
    event = engine.weights(PROMPT, weighting="opt")
    got = [event.weights[m.name] for m in members]
    assert got == pytest.approx(expected, abs=1e-9)
    assert sum(got) == pytest.approx(1.0)


@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_opt_under_mixture_matches_the_search_over_projected_distributions(
    bl: Member, sp: Member, alignment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Across tokenizers, 'opt' under mixture fusion reads only each member's NLL of the
    reference tokens; its weights equal the search over the members' whole projected
    distributions (captured from the logits-sum search on the same prompt), mixed exactly."""
    from packllm_integrations.decoding import weighting

    captured = []
    search = weighting.opt_weights
    monkeypatch.setattr(
        weighting, "opt_weights", lambda nll, logits, t: captured.append((logits, t)) or search(nll, logits, t)
    )
    engine = PackEngine([bl, sp], alignment=alignment, weighting="opt", tau=0.2)
    for prompt in PROMPTS:
        captured.clear()
        engine.weights(prompt, fusion="logits")
        ((logits, targets),) = captured
        got = engine.weights(prompt, fusion="mixture")
        assert len(captured) == 1  # the mixture's search never asked for the projected scores
        expected = greedy_opt_reference(list(logits), targets, "mixture")
        assert [got.weights[m.name] for m in (bl, sp)] == pytest.approx(expected, abs=1e-6)


def test_cross_tokenizer_weights_use_reference_space(bl: Member, sp: Member) -> None:
    """The authors' way (mined): the member is scored on the reference's translated tokens.

    bl's tokenizer adds no BOS: it reads the translated text without sp's BOS, and the
    first text token is context for both (bl has nothing before it)."""
    engine = PackEngine([bl, sp], reference=sp.name, alignment="mined")
    event = engine.weights(PROMPT)
    assert event.reference == sp.name
    ref_ids = sp.encode(PROMPT)
    vmap = engine.vocab_map(1, 0)
    translated = vmap.input[torch.tensor(ref_ids[1:])]  # bl reads the text tokens t1, t2, ...
    with torch.no_grad():
        own = bl.model(translated[None]).logits[0, :-1]  # after t1 .. t_{n-1}
    mapped = vmap.member_logits(own).double()
    logp = torch.log_softmax(mapped, -1)
    nll_bl = float(-logp[torch.arange(len(ref_ids) - 2), torch.tensor(ref_ids[2:])].mean())
    nll = torch.tensor([nll_bl, independent_nll(sp, ref_ids, first=2)], dtype=torch.float64)
    expected = torch.softmax(-nll / engine.config.tau, 0)
    assert [event.weights[bl.name], event.weights[sp.name]] == pytest.approx(expected.tolist(), abs=1e-5)


def test_reference_is_the_lowest_perplexity_member(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], reference_by="token")
    own = {m.name: independent_nll(m, m.encode(PROMPT)) for m in (bl, sp)}
    assert engine.weights(PROMPT).reference == min(own, key=own.get)


def test_reference_by_byte_is_the_lowest_nll_per_byte(bl: Member, sp: Member) -> None:
    """reference_by='byte' (the default) picks the member with the lowest NLL per UTF-8 byte of
    the scored tokens, 'token' the lowest per token; the two disagree on some prompts."""
    engine = PackEngine([bl, sp])
    prompts = [PROMPT, "def f(x):\n    return x * 2\n", "naïve café ☃ 12345 and so on", "The cat sat on the mat"]
    differ = 0
    for text in prompts:
        per_token, per_byte = {}, {}
        for m in (bl, sp):
            ids, nbytes = m.encode(text), token_bytes(m.tokenizer)
            mean = independent_nll(m, ids)
            per_token[m.name] = mean
            per_byte[m.name] = mean * (len(ids) - 1) / sum(len(nbytes[i]) for i in ids[1:])
        by_token, by_byte = min(per_token, key=per_token.get), min(per_byte, key=per_byte.get)
        assert engine.weights(text, reference_by="token").reference == by_token
        assert engine.weights(text).reference == by_byte
        assert engine.generate(text, max_new_tokens=2).reference == by_byte
        assert engine.generate(text, max_new_tokens=2, reference_by="token").reference == by_token
        differ += by_token != by_byte
    assert differ, "some prompt should have the two rules disagree (else the test shows nothing)"
    with pytest.raises(ConfigError, match="reference_by"):
        engine.weights(PROMPT, reference_by="word")


def test_top1_uniform_fixed(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp])
    sim = engine.weights(PROMPT)
    top = engine.weights(PROMPT, weighting="top1")
    best = min(sim.prompt_perplexity, key=sim.prompt_perplexity.get)
    assert top.weights[best] == 1.0 and sum(top.weights.values()) == 1.0
    assert list(engine.weights(PROMPT, weighting="uniform").weights.values()) == [0.5, 0.5]
    assert list(engine.weights(PROMPT, weights=[3, 1]).weights.values()) == [0.75, 0.25]


@pytest.mark.parametrize("pack", [["bl", "sp"], ["bl", "bl_b"], ["sp"]])
def test_stream_joined_equals_generate(pack: list[str], request: pytest.FixtureRequest) -> None:
    engine = PackEngine([request.getfixturevalue(n) for n in pack])
    result = engine.generate(PROMPT, max_new_tokens=20)
    events = list(engine.stream(PROMPT, max_new_tokens=20))
    assert isinstance(events[0], WeightsEvent) and isinstance(events[-1], FinishEvent)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == result.text
    assert events[-1].result == result
    assert events[0].weights == result.weights


@pytest.mark.parametrize("alignment", ["mined", "natural"])
@pytest.mark.parametrize("pack", [["bl", "sp"], ["bl", "bl_b"]])
def test_batch_equals_one_by_one(pack: list[str], alignment: str, request: pytest.FixtureRequest) -> None:
    engine = PackEngine([request.getfixturevalue(n) for n in pack], alignment=alignment)
    batch = engine.generate_batch(PROMPTS, max_new_tokens=10)
    single = [engine.generate(p, max_new_tokens=10) for p in PROMPTS]
    assert [r.text for r in batch] == [r.text for r in single]
    assert [r.reference for r in batch] == [r.reference for r in single]
    for a, b in zip(batch, single, strict=True):
        assert a.weights == pytest.approx(b.weights, abs=1e-4)
    assert [r.index for r in batch] == [0, 1, 2]


def test_seed_makes_sampling_reproducible(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp])
    kwargs = dict(max_new_tokens=15, temperature=1.0, top_p=0.95, top_k=50)
    a = engine.generate(PROMPT, seed=7, **kwargs).text
    assert a == engine.generate(PROMPT, seed=7, **kwargs).text
    others = {engine.generate(PROMPT, seed=s, **kwargs).text for s in range(8, 12)}
    assert others - {a}, "different seeds should give some different samples"


def test_stop_string_across_tokens_is_never_emitted(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], reference=sp.name)
    full = engine.generate(PROMPT, max_new_tokens=30).text
    # a stop string that spans a token boundary in the middle of the output
    ref = sp.tokenizer
    ids = ref(full, add_special_tokens=False)["input_ids"]
    pieces = [ref.decode(ids[: i + 1]) for i in range(len(ids))]
    boundary = next(len(p) for p in pieces if 4 <= len(p) < len(full) - 4)
    stop = full[boundary - 2 : boundary + 2]
    assert stop and stop in full
    cut = full[: full.index(stop)]
    events = list(engine.stream(PROMPT, max_new_tokens=30, stop=[stop, "never-there"]))
    streamed = "".join(e.text for e in events if isinstance(e, TextEvent))
    assert streamed == cut
    assert events[-1].result.finish_reason == "stop" and events[-1].result.text == cut
    for e in events:
        if isinstance(e, TextEvent):
            assert stop not in e.text


def test_eos_of_reference_member_ends_generation(sp: Member) -> None:
    session = PackEngine([sp]).session([PROMPT])
    session.prefill()
    tokens = []
    for _ in range(10):
        tokens.append(session.choose()[0])
        session.feed(tokens[-1:])
    # the first token that did not occur before: declare it the end-of-sequence token
    stop_at = next(i for i, t in enumerate(tokens) if i > 0 and t not in tokens[:i])
    member = Member("eos-test", sp.model, sp.tokenizer, eos_token_ids=frozenset({tokens[stop_at]}))
    result = PackEngine([member]).generate(PROMPT, max_new_tokens=10)
    assert result.finish_reason == "eos"
    assert result.usage.completion_tokens == stop_at + 1
    assert result.text == sp.tokenizer.decode(tokens[:stop_at])


def test_usage_and_length(bl: Member, sp: Member) -> None:
    result = PackEngine([bl, sp], reference=bl.name).generate(PROMPT, max_new_tokens=5)
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 5
    assert result.usage.prompt_tokens == len(bl.encode(PROMPT))
    assert result.usage.total_tokens == result.usage.prompt_tokens + 5


def test_prompt_without_scorable_token_falls_back_to_uniform(bl: Member, bl_b: Member) -> None:
    engine = PackEngine([bl, bl_b])
    one_token = "a"
    assert len(bl.encode(one_token)) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = engine.generate(one_token, max_new_tokens=3)
    assert any("no token to score" in str(w.message) for w in caught)
    assert result.weights == {bl.name: 0.5, bl_b.name: 0.5}
    assert result.prompt_perplexity == {bl.name: None, bl_b.name: None}


def test_concurrent_requests_do_not_interfere(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp])
    expected = [engine.generate(p, max_new_tokens=12).text for p in PROMPTS]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = engine.generate(PROMPTS[i % 3], max_new_tokens=12).text
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[i] for i in range(6)] == expected * 2


def test_score_single_member_equals_log_softmax(bl: Member) -> None:
    engine = PackEngine([bl])
    context, continuation = "The value of the", " function"
    result = engine.score([(context, continuation)])[0]
    ids = bl.encode(context + continuation)
    n = len(bl.encode(context))
    with torch.no_grad():
        logp = torch.log_softmax(bl.model(torch.tensor([ids])).logits[0, :, : bl.vocab_size].double(), -1)
    expected = sum(float(logp[i - 1, ids[i]]) for i in range(n, len(ids)))
    assert result.logprob == pytest.approx(expected, abs=1e-4)
    assert result.tokens == len(ids) - n
    assert result.num_bytes == len(continuation.encode())


def test_score_many_shares_forward_and_matches_score(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], reference=sp.name)
    pairs = [("Question: what is it?\nAnswer:", " a value"), ("Question: what is it?\nAnswer:", " the class")]
    configs = [engine.resolve(weighting=w) for w in ("sim", "uniform", "top1")] + [engine.resolve(weights=[1, 0])]
    many = engine.score_many(pairs, configs)
    for cfg, results in zip(configs, many, strict=True):
        single = engine.score(pairs, cfg)
        assert [r.logprob for r in results] == pytest.approx([r.logprob for r in single], abs=1e-4)


@pytest.mark.parametrize("alignment", ["mined", "natural"])
@pytest.mark.parametrize("weighting", ["sim", "opt"])
def test_options_after_one_context_equal_each_option_scored_alone(
    bl: Member, sp: Member, alignment: str, weighting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A question's options share its weights (weighed once), and each equals its own request."""
    import packllm_integrations.decoding.scoring as scoring

    engine = PackEngine([bl, sp], alignment=alignment, weighting=weighting)
    context = "Question: which value does the function return?\nAnswer:"
    # (options whose first token no tokenizer here merges into the context's last one)
    pairs = [(context, " the sum"), (context, " a class"), (context, " the value"), ("def f(x):", " return x")]
    weighed = []
    weigh = scoring._weigh
    monkeypatch.setattr(scoring, "_weigh", lambda *a: weighed.append(1) or weigh(*a))
    together = engine.score(pairs)
    assert len(weighed) == 2  # the shared context once, the other pair's once
    for pair, result in zip(pairs, together, strict=True):
        alone = engine.score([pair])[0]
        assert result.weights == pytest.approx(alone.weights, abs=1e-5)
        assert result.logprob == pytest.approx(alone.logprob, abs=1e-4)


# ---- bad input -----------------------------------------------------------------------------


def test_errors_name_the_parameter(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp])
    cases = [
        (dict(weights=[1.0]), "weights"),
        (dict(weights=[1.0, -1.0]), "weights"),
        (dict(weights=[0.0, 0.0]), "weights"),
        (dict(tau=0.0), "tau"),
        (dict(tau=-2), "tau"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=-1), "temperature"),
        (dict(weighting="best"), "weighting"),
        (dict(reference="nobody"), "reference"),
        (dict(colour="red"), "colour"),
        (dict(stop=[""]), "stop"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ConfigError) as info:
            engine.generate(PROMPT, **kwargs)
        assert info.value.parameter == name, kwargs
        assert name in str(info.value)


def test_bad_prompts(bl: Member) -> None:
    engine = PackEngine([bl])
    for prompt in (None, 3, b"bytes", [], [{"role": "user"}]):
        with pytest.raises(PromptError) as info:
            engine.generate(prompt, max_new_tokens=1)  # type: ignore[arg-type]
        assert "prompt" in str(info.value)
    with pytest.raises(PromptTooLongError) as info:
        engine.generate("word " * 400, max_new_tokens=1)
    assert "256" in str(info.value) or "255" in str(info.value)
    with pytest.raises(PromptError):
        engine.generate_batch("not a list")


def test_empty_or_invalid_pack(bl: Member) -> None:
    with pytest.raises(ConfigError, match="members"):
        PackEngine([])
    with pytest.raises(ConfigError, match="members"):
        PackEngine([bl, bl])
    with pytest.raises(ConfigError, match="members"):
        PackEngine(["smollm2-135m"])  # type: ignore[list-item]


def test_chat_messages_use_each_members_template(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp])
    messages = [{"role": "user", "content": "Say hello."}]
    texts = engine._texts(messages)
    assert texts[0].startswith("<|im_start|>user\nSay hello.<|im_end|>") and texts[0].endswith("assistant\n")
    assert texts[1] == "User: Say hello.\nAssistant:"
    result = engine.generate(messages, max_new_tokens=4)
    assert result.usage.completion_tokens <= 4


def test_session_state_is_per_request(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp])
    a, b = engine.session([PROMPT]), engine.session([PROMPT])
    assert isinstance(a, Session) and a is not b
    a.prefill()
    b.prefill()
    for k in range(2):
        mine, theirs = a.aligners[k], b.aligners[k]
        assert mine is not theirs and mine.next is not theirs.next
        assert type(mine) is type(theirs)
        assert getattr(mine, "cache", None) is None or mine.cache is not theirs.cache
        assert getattr(mine, "reader", None) is None or mine.reader is not theirs.reader


def own_total(member: Member, text: str, first: int = 1) -> tuple[float, int, int]:
    """Summed NLL, count and UTF-8 bytes of the member's own tokens ids[first:]."""
    ids = member.encode(text)
    with torch.no_grad():
        logits = member.model(torch.tensor([ids])).logits[0, first - 1 : -1, : member.vocab_size].double()
    logp = torch.log_softmax(logits, -1)
    total = float(-logp[torch.arange(len(ids) - first), torch.tensor(ids[first:])].sum())
    scored = member.tokenizer.decode(ids[first:], skip_special_tokens=True)
    return total, len(ids) - first, len(scored.encode())


def test_own_scoring_weights_are_per_byte_on_the_reference_scale(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], reference=sp.name, scoring="own")
    event = engine.weights(PROMPT)
    # bl adds no BOS, so each member's first text token is context: sp from its token 2 on
    (t_bl, _, b_bl), (t_sp, n_sp, b_sp) = own_total(bl, PROMPT), own_total(sp, PROMPT, first=2)
    scale = b_sp / n_sp
    nll = torch.tensor([t_bl / b_bl * scale, t_sp / b_sp * scale], dtype=torch.float64)
    expected = torch.softmax(-nll / engine.config.tau, 0).tolist()
    assert [event.weights[bl.name], event.weights[sp.name]] == pytest.approx(expected, abs=1e-5)
    assert event.prompt_perplexity[sp.name] == pytest.approx(math.exp(t_sp / n_sp), rel=1e-4)
    # generation and scoring accept the setting too
    assert engine.generate(PROMPT, max_new_tokens=3).weights == pytest.approx(event.weights)
    scored = engine.score([(PROMPT, " value")])[0]
    assert scored.tokens >= 1


CHAT = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": PROMPT}]


def content_total(member: Member, text: str, messages: list[dict]) -> tuple[float, int, int]:
    """Summed NLL, count and UTF-8 bytes of the member's own tokens of ``text`` that overlap
    the messages' contents (found in order), by the tokenizer's own character offsets."""
    enc = member.tokenizer(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    assert ids == member.encode(text)
    spans, at = [], 0
    for m in messages:
        start = text.index(m["content"], at)
        spans.append((start, start + len(m["content"])))
        at = start + len(m["content"])
    with torch.no_grad():
        logp = torch.log_softmax(member.model(torch.tensor([ids])).logits[0, :-1, : member.vocab_size].double(), -1)
    total, count, num_bytes = 0.0, 0, 0
    for i in range(1, len(ids)):
        a, b = enc["offset_mapping"][i]
        if any(a < e and b > s for s, e in spans):
            total, count, num_bytes = total - float(logp[i - 1, ids[i]]), count + 1, num_bytes + len(text[a:b].encode())
    return total, count, num_bytes


def test_a_chat_prompt_weighs_the_members_on_its_messages_alone(bl: Member, sp: Member) -> None:
    """Each member renders the chat its own way (bl: ChatML markup; sp: no template, plain
    "System: ..."); only the messages' text, in each member's own rendering, is scored."""
    engine = PackEngine([bl, sp])
    event = engine.weights(CHAT)
    scores = {m.name: content_total(m, m.render_chat(CHAT), CHAT) for m in (bl, sp)}
    total_r, count_r, bytes_r = scores[event.reference]
    scale = bytes_r / count_r
    nll = torch.tensor([t / nb * scale for t, _, nb in scores.values()], dtype=torch.float64)
    expected = torch.softmax(-nll / engine.config.tau, 0).tolist()
    assert [event.weights[bl.name], event.weights[sp.name]] == pytest.approx(expected, abs=1e-5)
    assert event.prompt_perplexity[event.reference] == pytest.approx(math.exp(total_r / count_r), rel=1e-4)
    # the reference is the member with the lowest NLL per byte of the messages
    assert event.reference == min(scores, key=lambda name: scores[name][0] / scores[name][2])


def test_own_scoring_changes_nothing_for_a_shared_tokenizer(bl: Member, bl_b: Member) -> None:
    engine = PackEngine([bl, bl_b])
    a = engine.weights(PROMPT, scoring="reference")
    b = engine.weights(PROMPT, scoring="own")
    assert a.weights == pytest.approx(b.weights, abs=1e-9)
    assert a.prompt_perplexity == pytest.approx(b.prompt_perplexity, rel=1e-9)
