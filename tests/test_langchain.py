"""`packllm_integrations.langchain.PackLLM` (a LangChain BaseLLM) on tiny in-memory members."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from pydantic import ValidationError

from packllm_integrations import ConfigError, MemberSpec, PackEngine, TextEvent
from packllm_integrations.langchain import PackLLM
from tests import tiny
from tests.test_adapters_common import OutOfMemoryOnce, loop_ticks_during, tiny_engine

PROMPTS = ["The default value of a keyword argument", "def f(x):", "Once upon a time"]


class TokenRecorder(BaseCallbackHandler):
    """Records what LangChain's callbacks receive."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.starts = 0

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class AsyncTokenRecorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class CountingEngine(PackEngine):
    """A real engine that also records each batched call it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def stream_batch(self, prompts, config=None, **overrides):  # type: ignore[no-untyped-def]
        self.calls.append(len(prompts))
        return super().stream_batch(prompts, config, **overrides)


@pytest.fixture(scope="module")
def engine() -> PackEngine:
    return tiny_engine()


@pytest.fixture
def llm(engine: PackEngine) -> PackLLM:
    return PackLLM(engine=engine)


def pieces_of(engine: PackEngine, prompt: str) -> list[str]:
    return [e.text for e in engine.stream(prompt) if isinstance(e, TextEvent)]


def stop_across_pieces(pieces: list[str]) -> tuple[str, int]:
    """A 3-character stop string that starts in one text piece and ends in the next, and
    whose first occurrence is there; returns it and where the text must be cut."""
    text = "".join(pieces)
    edge = 0
    for piece in pieces[:-1]:
        edge += len(piece)
        for start in (edge - 1, edge - 2):
            stop = text[start : start + 3]
            if start >= 0 and len(stop) == 3 and text.find(stop) == start and start + 3 > edge:
                return stop, start
    raise AssertionError(f"no stop string spans two pieces of {pieces!r}")


# ---- invoke, batch, results ---------------------------------------------------------------


def test_invoke_returns_the_engines_greedy_text(llm, engine):
    assert llm.invoke(PROMPTS[0]) == engine.generate(PROMPTS[0]).text


def test_generate_reports_weights_perplexities_and_usage(llm, engine):
    result = llm.generate(PROMPTS[:2])
    expected = engine.generate_batch(PROMPTS[:2])
    assert [g[0].text for g in result.generations] == [r.text for r in expected]
    for generations, want in zip(result.generations, expected, strict=True):
        info = generations[0].generation_info
        assert info["weights"] == pytest.approx(want.weights)
        assert sum(info["weights"].values()) == pytest.approx(1.0)
        assert set(info["prompt_perplexity"]) == set(engine.names)
        assert all(p > 1 for p in info["prompt_perplexity"].values())
        assert info["reference"] in engine.names
        assert info["finish_reason"] == want.finish_reason
        assert info["token_usage"]["completion_tokens"] == want.usage.completion_tokens
    usage = result.llm_output["token_usage"]
    assert usage["prompt_tokens"] == sum(r.usage.prompt_tokens for r in expected)
    assert usage["completion_tokens"] == sum(r.usage.completion_tokens for r in expected)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert result.llm_output["model_name"] == "packllm:tiny-bytelevel+tiny-sentencepiece"


def test_batch_is_one_batched_engine_call():
    base = tiny_engine()
    counting = CountingEngine(base.members, base.config, progress=False)
    llm = PackLLM(engine=counting)
    texts = llm.batch(PROMPTS)
    assert counting.calls == [len(PROMPTS)]
    assert texts == [r.text for r in base.generate_batch(PROMPTS)]


def test_lcel_chain(llm, engine):
    chain = PromptTemplate.from_template("Explain {topic} in one line:") | llm | StrOutputParser()
    assert chain.invoke({"topic": "closures"}) == engine.generate("Explain closures in one line:").text


def test_models_specs_are_loaded_at_construction(tmp_path_factory):
    folders = []
    for member in (tiny.bytelevel_member(), tiny.sentencepiece_member()):
        folder = tmp_path_factory.mktemp(member.name)
        member.model.save_pretrained(folder)
        member.tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    llm = PackLLM(models=[MemberSpec(folders[0], name="a"), f"{folders[1]},name=b"], max_tokens=4)
    assert llm.engine.names == ["a", "b"]
    assert llm.invoke(PROMPTS[0]) == llm.engine.generate(PROMPTS[0], max_new_tokens=4).text


# ---- settings --------------------------------------------------------------------------------


def test_settings_and_per_call_overrides(engine):
    llm = PackLLM(engine=engine, max_tokens=5)
    result = llm.generate([PROMPTS[0]]).generations[0][0]
    assert result.generation_info["token_usage"]["completion_tokens"] == 5
    assert result.generation_info["finish_reason"] == "length"
    assert llm.invoke(PROMPTS[0], max_tokens=3) == engine.generate(PROMPTS[0], max_new_tokens=3).text
    sampled = llm.invoke(PROMPTS[1], temperature=1.5, seed=11, max_tokens=12)
    assert sampled == llm.invoke(PROMPTS[1], temperature=1.5, seed=11, max_tokens=12)
    assert sampled == engine.generate(PROMPTS[1], temperature=1.5, seed=11, max_new_tokens=12).text
    uniform = llm.generate([PROMPTS[1]], weighting="uniform").generations[0][0].generation_info
    assert uniform["weights"] == pytest.approx({n: 0.5 for n in engine.names})
    fixed = PackLLM(engine=engine, weights=[3, 1]).generate([PROMPTS[1]]).generations[0][0].generation_info
    assert fixed["weights"] == pytest.approx({engine.names[0]: 0.75, engine.names[1]: 0.25})


def test_unknown_or_bad_call_settings_raise(llm):
    with pytest.raises(ConfigError, match="max_new_tokenz"):
        llm.invoke(PROMPTS[0], max_new_tokenz=3)
    with pytest.raises(ConfigError, match="top_p=2"):
        llm.invoke(PROMPTS[0], top_p=2)
    with pytest.raises(ConfigError, match="model='other'"):
        llm.invoke(PROMPTS[0], model="other")
    assert llm.invoke(PROMPTS[0], model=llm.model_name) == llm.invoke(PROMPTS[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_p": 1.5}, r"top_p=1.5 is invalid"),
        ({"temperature": -1}, r"temperature=-1.0 is invalid"),
        ({"weighting": "best"}, r"weighting='best' is invalid"),
        ({"weights": [1.0, 2.0, 3.0]}, r"weights=.* 2 numbers, one per member"),
        ({"reference": "nobody"}, r"reference='nobody' is invalid"),
        ({"max_tokenz": 3}, r"max_tokenz"),
        ({"timeout": 0}, r"timeout"),
        ({"max_retries": -1}, r"max_retries"),
    ],
)
def test_bad_parameters_raise_at_construction(engine, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        PackLLM(engine=engine, **kwargs)


def test_models_and_engine_are_exclusive(engine):
    with pytest.raises(ValidationError, match="either models or engine"):
        PackLLM(engine=engine, models=["smollm2-135m"])


def test_bad_settings_raise_before_any_model_loads():
    with pytest.raises(ValidationError, match="top_p=1.5"):
        PackLLM(models=["no-such-model"], top_p=1.5)


def test_identifying_params_name_every_setting_that_changes_output(engine):
    params = PackLLM(engine=engine, temperature=0.7, seed=3, stop=["\n"], weighting="opt")._identifying_params
    assert [m["name"] for m in params["members"]] == engine.names
    assert all(m["dtype"] == "torch.float32" for m in params["members"])
    assert params["temperature"] == 0.7 and params["seed"] == 3 and params["stop"] == ["\n"]
    assert params["weighting"] == "opt" and params["max_new_tokens"] == 16
    assert {"top_k", "top_p", "tau", "weights", "reference"} <= set(params)


def test_cache_keys_tell_settings_apart(engine):
    cache = InMemoryCache()
    uniform = PackLLM(engine=engine, cache=cache, weighting="uniform")
    top1 = PackLLM(engine=engine, cache=cache, weighting="top1")
    first = uniform.invoke(PROMPTS[2])
    assert uniform.invoke(PROMPTS[2]) == first  # served from the cache
    assert len(cache._cache) == 1
    assert top1.invoke(PROMPTS[2]) == engine.generate(PROMPTS[2], weighting="top1").text
    assert len(cache._cache) == 2


def test_token_counts_use_the_reference_tokenizer(engine):
    llm = PackLLM(engine=engine)
    text = "Lists are mutable sequences."
    assert llm.get_num_tokens(text) == len(engine.members[0].encode(text))
    by_reference = PackLLM(engine=engine, reference=engine.names[1])
    assert by_reference.get_token_ids(text) == engine.members[1].encode(text)


def test_langsmith_params(engine):
    params = PackLLM(engine=engine, max_tokens=7, stop=["x"])._get_ls_params()
    assert params == {
        "ls_provider": "packllm",
        "ls_model_name": "packllm:tiny-bytelevel+tiny-sentencepiece",
        "ls_model_type": "llm",
        "ls_temperature": 0.0,
        "ls_max_tokens": 7,
        "ls_stop": ["x"],
    }


# ---- stop strings ---------------------------------------------------------------------------


def test_stop_string_split_across_pieces(llm, engine):
    pieces = pieces_of(engine, PROMPTS[0])
    stop, cut = stop_across_pieces(pieces)
    text = "".join(pieces)
    result = llm.generate([PROMPTS[0]], stop=[stop]).generations[0][0]
    assert result.text == text[:cut]
    assert result.generation_info["finish_reason"] == "stop"
    streamed = list(llm.stream(PROMPTS[0], stop=[stop]))
    assert "".join(streamed) == text[:cut]
    assert all(stop not in chunk for chunk in streamed)


def test_call_stop_replaces_instance_stop(engine):
    text = "".join(pieces_of(engine, PROMPTS[1]))
    early, late = text[2:4], text[6:8]
    assert text.find(early) == 2 and text.find(late) >= 6
    llm = PackLLM(engine=engine, stop=[late])
    assert llm.invoke(PROMPTS[1]) == text[: text.find(late)]
    assert llm.invoke(PROMPTS[1], stop=[early]) == text[:2]
    assert llm.invoke(PROMPTS[1], stop=[]) == text


# ---- streaming ----------------------------------------------------------------------------------


def test_stream_joined_equals_invoke_and_reports_each_chunk(llm):
    recorder = TokenRecorder()
    chunks = list(llm.stream(PROMPTS[0], config={"callbacks": [recorder]}))
    assert len(chunks) > 2
    assert "".join(chunks) == llm.invoke(PROMPTS[0])
    assert recorder.tokens == chunks
    assert chunks[-1] == ""  # the last chunk only carries the generation info


def test_stream_chunks_carry_the_info_on_the_last_chunk(llm):
    chunks = list(llm._stream(PROMPTS[0]))
    assert all(c.generation_info is None for c in chunks[:-1])
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    info = merged.generation_info
    assert info["finish_reason"] == "length"
    assert set(info["weights"]) == set(llm.engine.names)
    assert info["token_usage"]["completion_tokens"] == 16


# ---- async -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_methods_match_sync(llm):
    assert await llm.ainvoke(PROMPTS[0]) == llm.invoke(PROMPTS[0])
    assert await llm.abatch(PROMPTS) == llm.batch(PROMPTS)
    recorder = AsyncTokenRecorder()
    chunks = [c async for c in llm.astream(PROMPTS[1], config={"callbacks": [recorder]})]
    assert "".join(chunks) == llm.invoke(PROMPTS[1])
    assert recorder.tokens == chunks
    result = await llm.agenerate([PROMPTS[2]])
    assert result.generations[0][0].generation_info["weights"] == pytest.approx(llm.engine.weights(PROMPTS[2]).weights)


@pytest.mark.asyncio
async def test_concurrent_calls_equal_sequential_calls(llm):
    sequential = [llm.invoke(p) for p in PROMPTS]
    concurrent = await asyncio.gather(*(llm.ainvoke(p) for p in PROMPTS), *(llm.ainvoke(p) for p in PROMPTS))
    assert list(concurrent) == sequential + sequential


@pytest.mark.asyncio
async def test_async_generation_leaves_the_event_loop_free(engine):
    llm = PackLLM(engine=engine, max_tokens=48)
    assert await loop_ticks_during(llm.ainvoke(PROMPTS[0])) >= 10  # a blocking call leaves the loop no turn


@pytest.mark.asyncio
async def test_cancelled_stream_stops_cleanly(engine):
    llm = PackLLM(engine=engine, max_tokens=200)
    stream = llm.astream(PROMPTS[0])
    first = await anext(stream)
    assert isinstance(first, str)
    await stream.aclose()
    task = asyncio.create_task(llm.ainvoke(PROMPTS[1]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await llm.ainvoke(PROMPTS[1], max_tokens=4) == engine.generate(PROMPTS[1], max_new_tokens=4).text


# ---- timeouts and retries -------------------------------------------------------------------


def test_timeout_raises(engine):
    llm = PackLLM(engine=engine, timeout=1e-6)
    with pytest.raises(TimeoutError, match="timeout"):
        llm.invoke(PROMPTS[0])
    with pytest.raises(TimeoutError):
        list(llm.stream(PROMPTS[0]))


@pytest.mark.asyncio
async def test_async_timeout_raises(engine):
    with pytest.raises(TimeoutError):
        await PackLLM(engine=engine, timeout=1e-6).ainvoke(PROMPTS[0])


@pytest.mark.parametrize("method", ["invoke", "stream"])
def test_out_of_memory_is_retried(engine, method):
    expected = engine.generate(PROMPTS[0]).text
    fault = OutOfMemoryOnce(engine.members[1].model)
    try:
        llm = PackLLM(engine=engine, max_retries=1)
        text = llm.invoke(PROMPTS[0]) if method == "invoke" else "".join(llm.stream(PROMPTS[0]))
    finally:
        fault.remove()
    assert fault.failures == 1
    assert text == expected


def test_out_of_memory_is_raised_without_retries(engine):
    fault = OutOfMemoryOnce(engine.members[0].model)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            PackLLM(engine=engine, max_retries=0).invoke(PROMPTS[0])
    finally:
        fault.remove()
    assert fault.failures == 1
