"""Members that fail (NaN or infinite scores, a raising backend, a slow one) never fail silently.

Faults are injected with forward hooks on the tiny models: the fault is injected, the engine
is the real one.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from packllm_integrations import GenerationTimeoutError, Member, MemberError, PackEngine, TextEvent
from packllm_integrations.backends import transformers as transformers_backend
from packllm_integrations.decoding.faults import bad_rows

PROMPT = "The function returns the value of the"
LONG = " ".join(["The function returns the value of the attribute named by the string."] * 6)


class Fault:
    """A fault on a member's head: ``kind`` ('nan', 'inf', '-inf', 'raise', 'slow') while ``armed``."""

    def __init__(self, kind: str, armed: bool, delay: float) -> None:
        self.kind, self.armed, self.delay, self.calls = kind, armed, delay, 0


@contextmanager
def faulty(member: Member, kind: str, armed: bool = True, delay: float = 0.0) -> Iterator[Fault]:
    """Make the member's head give a fault while ``fault.armed`` (the test arms it mid-stream);
    'slow' delays every forward of the model's body instead (each prefill chunk, each step)."""
    fault = Fault(kind, armed, delay)

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        fault.calls += 1
        if fault.delay:
            time.sleep(fault.delay)
        if not fault.armed or fault.kind == "slow":
            return None
        if fault.kind == "raise":
            raise RuntimeError("the member's device went away")
        value = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[fault.kind]
        return torch.full_like(output, value)

    module = member.model.get_decoder() if kind == "slow" else member.model.get_output_embeddings()
    handle = module.register_forward_hook(hook)
    try:
        yield fault
    finally:
        handle.remove()


def stream_with_fault(engine: PackEngine, fault: Fault, after_pieces: int, **settings: object) -> list:
    """The events of one stream, arming ``fault`` once ``after_pieces`` text pieces came out."""
    events, pieces = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for event in engine.stream(PROMPT, **settings):
            events.append(event)
            if isinstance(event, TextEvent):
                pieces += 1
                fault.armed = fault.armed or pieces >= after_pieces
    return events


def quiet_generate(engine: PackEngine, prompt: str, **settings: object):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return engine.generate(prompt, **settings)


def test_bad_rows_finds_nan_inf_and_rows_without_a_finite_value() -> None:
    x = torch.zeros(4, 5)
    x[1, 2], x[2, 0], x[3] = math.nan, math.inf, -math.inf
    assert bad_rows(x) == [1, 2, 3]
    x[0, 1] = -math.inf  # a ruled-out token is fine
    assert bad_rows(x) == [1, 2, 3]


@pytest.mark.parametrize("weighting", ["sim", "opt", "uniform"])
@pytest.mark.parametrize("fault", ["nan", "inf", "-inf"])
def test_non_finite_scores_at_the_prefill_raise_naming_the_member(bl: Member, sp: Member, weighting, fault) -> None:
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, weighting=weighting)
    with faulty(sp, fault), pytest.raises(MemberError) as caught:
        quiet_generate(engine, PROMPT, max_new_tokens=4)
    assert caught.value.member == sp.name and caught.value.step in (None, 0)
    assert sp.name in str(caught.value)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_non_finite_scores_mid_generation_raise_with_the_text_so_far(bl: Member, sp: Member, temperature) -> None:
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, weighting="uniform", temperature=temperature)
    clean = quiet_generate(engine, PROMPT, max_new_tokens=12, seed=3)
    with faulty(sp, "nan", armed=False) as fault, pytest.raises(MemberError) as caught:
        stream_with_fault(engine, fault, 2, max_new_tokens=12, seed=3)
    error = caught.value
    assert error.member == sp.name and error.step is not None and error.step >= 2
    assert error.prompts == (0,)
    assert error.partial[0] and clean.text.startswith(error.partial[0])


def test_a_raising_backend_is_a_member_error_with_its_cause(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, alignment="mined")
    with faulty(sp, "raise", armed=False) as fault, pytest.raises(MemberError, match="device went away") as caught:
        stream_with_fault(engine, fault, 2, max_new_tokens=12)
    assert isinstance(caught.value.__cause__, RuntimeError) and caught.value.member == sp.name


@pytest.mark.parametrize("alignment", ["mined", "natural"])
@pytest.mark.parametrize("fixed_reference", [True, False])
def test_a_backend_raising_at_the_prefill_is_a_member_error(bl: Member, sp: Member, alignment, fixed_reference) -> None:
    engine = PackEngine([bl, sp], progress=False, alignment=alignment, reference=bl.name if fixed_reference else None)
    calls = {
        "generate": lambda: engine.generate(PROMPT, max_new_tokens=4),
        "stream": lambda: list(engine.stream(PROMPT, max_new_tokens=4)),
        "weights": lambda: engine.weights(PROMPT),
        "score": lambda: engine.score([(PROMPT, " name")]),
    }
    with faulty(sp, "raise"):
        for name, call in calls.items():
            with pytest.raises(MemberError, match="device went away") as caught:
                call()
            error = caught.value
            assert (error.member, error.step) == (sp.name, None), name
            assert isinstance(error.__cause__, RuntimeError), name
    assert engine.generate(PROMPT, max_new_tokens=4).usage.completion_tokens == 4  # nothing was left behind


async def test_a_backend_raising_at_the_prefill_reaches_both_adapters_as_a_member_error(bl: Member, sp: Member) -> None:
    from packllm_integrations.langchain import ChatPackLLM
    from packllm_integrations.llama_index import PackLLM as LlamaPackLLM

    engine = PackEngine([bl, sp], progress=False, reference=bl.name)
    chat = ChatPackLLM(engine=engine, max_tokens=4)
    llama = LlamaPackLLM(engine=engine, max_new_tokens=4)
    with faulty(sp, "raise"):
        with pytest.raises(MemberError, match=sp.name):
            async for _ in chat.astream("Hello"):
                pass
        with pytest.raises(MemberError, match=sp.name):
            await llama.acomplete("Hello")
        with pytest.raises(MemberError, match=sp.name):
            chat.batch(["Hello", "Hi"])


@pytest.mark.parametrize("weighting", ["sim", "opt", "uniform"])
@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_score_with_a_nan_member_raises_or_drops(bl: Member, sp: Member, weighting: str, alignment: str) -> None:
    pairs = [(PROMPT, " name"), ("The cat sat on the", " mat")]
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, weighting=weighting, alignment=alignment)
    with faulty(sp, "nan"):
        with pytest.raises(MemberError) as caught:
            engine.score(pairs)
        assert (caught.value.member, caught.value.step, caught.value.prompts) == (sp.name, None, (0,))
        dropped = engine.score(pairs, on_member_error="drop")
    alone = PackEngine([bl], progress=False).score(pairs)
    for got, want in zip(dropped, alone, strict=True):
        assert got.weights == {bl.name: 1.0, sp.name: 0.0}
        assert math.isclose(got.logprob, want.logprob, rel_tol=1e-6, abs_tol=1e-9)
        assert math.isnan(got.prompt_perplexity[sp.name])


@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_drop_at_the_prefill_leaves_the_other_member(bl: Member, sp: Member, alignment: str) -> None:
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, alignment=alignment, on_member_error="drop")
    with faulty(sp, "nan"):
        result = quiet_generate(engine, PROMPT, max_new_tokens=10)
    alone = quiet_generate(PackEngine([bl], progress=False), PROMPT, max_new_tokens=10)
    assert result.text == alone.text
    assert result.weights == {bl.name: 1.0, sp.name: 0.0} and sp.name in result.dropped
    assert "dropped" in result.to_dict()


@pytest.mark.parametrize("fault", ["nan", "raise"])
def test_drop_mid_generation_renormalises_and_reports(bl: Member, sp: Member, fault: str) -> None:
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, alignment="mined", on_member_error="drop")
    with faulty(sp, fault, armed=False) as armed:
        events = stream_with_fault(engine, armed, 3, max_new_tokens=10)
    result = events[-1].result
    assert result.weights[sp.name] == 0.0 and math.isclose(result.weights[bl.name], 1.0)
    assert "step" in result.dropped[sp.name] and result.finish_reason in ("eos", "length")
    assert result.usage.completion_tokens > int(result.dropped[sp.name].rsplit("step ", 1)[1].rstrip(")"))
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == result.text


def test_the_reference_member_cannot_be_dropped(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, on_member_error="drop")
    with faulty(bl, "nan", armed=False) as fault, pytest.raises(MemberError, match=bl.name):
        stream_with_fault(engine, fault, 2, max_new_tokens=8)


def test_a_nan_member_is_never_chosen_as_reference(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], progress=False, on_member_error="drop")
    with faulty(sp, "nan"):
        result = quiet_generate(engine, PROMPT, max_new_tokens=4)
    assert result.reference == bl.name and sp.name in result.dropped


def test_on_member_error_is_checked(bl: Member) -> None:
    from packllm_integrations import ConfigError

    with pytest.raises(ConfigError, match="on_member_error"):
        PackEngine([bl], on_member_error="ignore")


# ---- timeouts -----------------------------------------------------------------------------


def test_a_chunked_prefill_gives_the_states_of_one_pass(bl: Member, sp: Member, monkeypatch) -> None:
    rows = [sp.encode(LONG), sp.encode(LONG[:100]), sp.encode(PROMPT)]
    with torch.inference_mode():
        whole = [sp.prefill(rows, rollback) for rollback in (False, True)]
        monkeypatch.setattr(transformers_backend, "PREFILL_CHUNK", 16)
        chunked = [sp.prefill(rows, rollback) for rollback in (False, True)]
        for a, b in zip(whole, chunked, strict=True):
            for r in range(len(rows)):
                torch.testing.assert_close(sp.scores(a.row(r)), sp.scores(b.row(r)), atol=2e-4, rtol=1e-4)
        step = [sp.step(p.cache, [5, 6, 7]) for p in (whole[1], chunked[1])]
        torch.testing.assert_close(step[0], step[1], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("alignment", ["mined", "natural"])
def test_a_timeout_holds_within_the_prefill(bl: Member, sp: Member, monkeypatch, alignment: str) -> None:
    monkeypatch.setattr(transformers_backend, "PREFILL_CHUNK", 8)
    engine = PackEngine([bl, sp], progress=False, alignment=alignment)
    with faulty(sp, "slow", delay=0.05) as fault:  # every forward of sp takes 50 ms more
        start = time.monotonic()
        with pytest.raises(GenerationTimeoutError) as caught:
            quiet_generate(engine, LONG, max_new_tokens=4, timeout=0.3)
        elapsed = time.monotonic() - start
    assert caught.value.timeout == 0.3 and isinstance(caught.value, TimeoutError)
    # reading LONG alone takes sp over 20 chunked forwards (> 1 s): the deadline stopped it early
    assert elapsed < 0.9 and fault.calls < 20


def test_adapters_time_out_within_the_prefill(bl: Member, sp: Member, monkeypatch) -> None:
    from packllm_integrations.langchain import PackLLM
    from packllm_integrations.llama_index import PackLLM as LlamaPackLLM

    monkeypatch.setattr(transformers_backend, "PREFILL_CHUNK", 8)
    engine = PackEngine([bl, sp], progress=False)
    for llm, call in (
        (PackLLM(engine=engine, timeout=0.3, max_tokens=4), "invoke"),
        (LlamaPackLLM(engine=engine, timeout=0.3, max_new_tokens=4), "complete"),
    ):
        with faulty(sp, "slow", delay=0.05):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                getattr(llm, call)(LONG)
            assert time.monotonic() - start < 0.9


def test_fixed_weights_that_leave_no_member_after_a_drop_raise(bl: Member, sp: Member) -> None:
    engine = PackEngine([bl, sp], progress=False, reference=bl.name, weights=(0.0, 1.0), on_member_error="drop")
    with faulty(sp, "nan"), pytest.raises(MemberError, match="no other member has a fixed weight"):
        quiet_generate(engine, PROMPT, max_new_tokens=4)
