"""`packllm_integrations.llama_index.PackLLM` (a LlamaIndex CustomLLM) on tiny in-memory members."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch
from llama_index.core import Document, PromptTemplate, Settings, SummaryIndex
from llama_index.core.base.llms.types import ImageBlock
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.llms import ChatMessage, MessageRole
from pydantic import ValidationError

from packllm_integrations import ConfigError, PackEngine, PromptError, TextEvent
from packllm_integrations.llama_index import PackLLM, to_chat_messages
from tests import tiny
from tests.test_adapters_common import OutOfMemoryOnce, loop_ticks_during, tiny_engine

PROMPTS = ["The default value of a keyword argument", "def f(x):", "Once upon a time"]
MESSAGES = [
    ChatMessage(role=MessageRole.SYSTEM, content="Answer in one line."),
    ChatMessage(role=MessageRole.USER, content="What does a decorator do?"),
]
AS_DICTS = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "What does a decorator do?"},
]


@pytest.fixture(scope="module")
def engine() -> PackEngine:
    return tiny_engine()


@pytest.fixture
def debug() -> LlamaDebugHandler:
    return LlamaDebugHandler(print_trace_on_end=False)


@pytest.fixture
def llm(engine: PackEngine, debug: LlamaDebugHandler) -> PackLLM:
    return PackLLM(engine=engine, callback_manager=CallbackManager([debug]))


@pytest.fixture
def settings_llm(llm: PackLLM, debug: LlamaDebugHandler) -> Iterator[PackLLM]:
    """The pack as LlamaIndex's global LLM and tokenizer, with ``debug`` as the global
    callback handler (query engines hand their LLM the global manager); restored afterwards."""
    import llama_index.core

    saved = Settings._llm, llama_index.core.global_tokenizer, Settings._callback_manager
    Settings.llm, Settings.tokenizer = llm, llm.tokenize
    Settings.callback_manager = CallbackManager([debug])
    try:
        yield llm
    finally:
        Settings._llm, llama_index.core.global_tokenizer, Settings._callback_manager = saved


def llm_events(debug: LlamaDebugHandler) -> int:
    return len(debug.get_event_pairs(CBEventType.LLM))


# ---- metadata and settings ---------------------------------------------------------------------


def test_metadata_reports_the_packs_real_limits(engine):
    llm = PackLLM(engine=engine, max_new_tokens=40)
    meta = llm.metadata
    assert meta.context_window == engine.context_window == 256
    assert meta.num_output == 40
    assert meta.model_name == "packllm:tiny-bytelevel+tiny-sentencepiece"
    assert meta.is_function_calling_model is True  # tool calls are grammar-constrained
    assert PackLLM(engine=engine).metadata.num_output == engine.config.max_new_tokens


def test_is_chat_model_follows_the_members_templates(engine, bl, bl_b):
    assert PackLLM(engine=engine).metadata.is_chat_model is False  # tiny-sentencepiece has no template
    both_templated = PackEngine([bl, bl_b], progress=False)
    assert PackLLM(engine=both_templated).metadata.is_chat_model is True
    assert PackLLM(engine=engine, is_chat_model=True).metadata.is_chat_model is True
    assert PackLLM(engine=both_templated, is_chat_model=False).metadata.is_chat_model is False


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"weighting": "best"}, "weighting='best' is invalid"),
        ({"weights": [1.0]}, "2 numbers, one per member"),
        ({"reference": "nobody"}, "reference='nobody' is invalid"),
        ({"max_tokens": 8}, "max_tokens"),
        ({"models": ["smollm2-135m"]}, "either models or engine"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_bad_parameters_raise_at_construction(engine, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        PackLLM(engine=engine, **kwargs)


def test_models_specs_are_loaded_at_construction(tmp_path):
    member = tiny.bytelevel_member()
    member.model.save_pretrained(tmp_path)
    member.tokenizer.save_pretrained(tmp_path)
    llm = PackLLM(models=[f"{tmp_path},name=solo"], max_new_tokens=4)
    assert llm.engine.names == ["solo"]
    assert llm.complete(PROMPTS[0]).text == llm.engine.generate(PROMPTS[0], max_new_tokens=4).text


def test_per_call_settings(llm, engine):
    response = llm.complete(PROMPTS[1], max_new_tokens=3, weighting="uniform")
    assert response.text == engine.generate(PROMPTS[1], max_new_tokens=3, weighting="uniform").text
    assert response.additional_kwargs["usage"]["completion_tokens"] == 3
    assert response.additional_kwargs["weights"] == pytest.approx({n: 0.5 for n in engine.names})
    with pytest.raises(ConfigError, match="max_tokens"):
        llm.complete(PROMPTS[1], max_tokens=3)


def test_tokenize_uses_the_reference_tokenizer(engine):
    assert PackLLM(engine=engine).tokenize("a list") == engine.members[0].encode("a list")
    assert PackLLM(engine=engine, reference=engine.names[1]).tokenize("a list") == engine.members[1].encode("a list")


# ---- completion -------------------------------------------------------------------------------------


def test_complete_returns_text_and_weights(llm, engine):
    response = llm.complete(PROMPTS[0])
    expected = engine.generate(PROMPTS[0])
    assert response.text == expected.text
    extra = response.additional_kwargs
    assert extra["weights"] == pytest.approx(expected.weights)
    assert extra["prompt_perplexity"] == pytest.approx(expected.prompt_perplexity)
    assert extra["reference"] == expected.reference
    assert extra["finish_reason"] == expected.finish_reason
    assert extra["usage"]["total_tokens"] == expected.usage.total_tokens


def test_completion_to_prompt_applies_unless_formatted(engine):
    llm = PackLLM(engine=engine, completion_to_prompt=lambda p: f"Q: {p}\nA:")
    assert llm.complete("why?").text == engine.generate("Q: why?\nA:").text
    assert llm.complete("why?", formatted=True).text == engine.generate("why?").text


def test_stream_complete_yields_deltas(llm, debug):
    responses = list(llm.stream_complete(PROMPTS[0]))
    assert len(responses) > 2
    deltas = [r.delta for r in responses]
    assert "".join(deltas) == llm.complete(PROMPTS[0]).text
    assert [r.text for r in responses] == ["".join(deltas[: i + 1]) for i in range(len(deltas))]
    assert all(set(r.additional_kwargs["weights"]) == set(llm.engine.names) for r in responses)
    assert "finish_reason" in responses[-1].additional_kwargs
    assert llm_events(debug) == 2


def test_stop_string_split_across_pieces(llm, engine):
    pieces = [e.text for e in engine.stream(PROMPTS[2]) if isinstance(e, TextEvent)]
    text = "".join(pieces)
    # a stop of two characters across a boundary between pieces, found there first
    ends = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces) - 1)]
    start = next(end - 1 for end in ends if end >= 2 and text.find(text[end - 1 : end + 1]) == end - 1)
    stop = text[start : start + 2]
    response = llm.complete(PROMPTS[2], stop=[stop])
    assert response.text == text[:start]
    assert response.additional_kwargs["finish_reason"] == "stop"
    assert "".join(r.delta for r in llm.stream_complete(PROMPTS[2], stop=[stop])) == text[:start]
    assert PackLLM(engine=engine, stop=[stop]).complete(PROMPTS[2]).text == text[:start]


# ---- chat ---------------------------------------------------------------------------------------------


def test_chat_uses_each_members_chat_template(llm, engine):
    response = llm.chat(MESSAGES)
    expected = engine.generate(AS_DICTS)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == expected.text
    assert response.additional_kwargs["weights"] == pytest.approx(expected.weights)


def test_stream_chat_yields_deltas(llm):
    responses = list(llm.stream_chat(MESSAGES))
    assert "".join(r.delta for r in responses) == llm.chat(MESSAGES).message.content
    assert responses[-1].message.content == "".join(r.delta for r in responses)
    assert responses[-1].additional_kwargs["usage"]["completion_tokens"] > 0


def test_custom_messages_to_prompt_replaces_the_templates(engine):
    llm = PackLLM(engine=engine, messages_to_prompt=lambda ms: "\n".join(m.content for m in ms) + "\nAnswer:")
    expected = engine.generate("Answer in one line.\nWhat does a decorator do?\nAnswer:").text
    assert llm.chat(MESSAGES).message.content == expected


def test_message_conversion():
    messages = [
        ChatMessage(role=MessageRole.DEVELOPER, content="a"),
        ChatMessage(role=MessageRole.SYSTEM, content="b"),
        ChatMessage(role=MessageRole.USER, content="c"),
        ChatMessage(role=MessageRole.CHATBOT, content="d"),
    ]
    assert to_chat_messages(messages) == [
        {"role": "system", "content": "a\n\nb"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    assert to_chat_messages([ChatMessage(role=MessageRole.TOOL, content="42")]) == [
        {"role": "tool", "content": "42", "tool_call_id": "", "name": ""}
    ]
    with pytest.raises(PromptError, match="image block"):
        to_chat_messages([ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://x/y.png")])])


# ---- async ----------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_methods_match_sync_with_one_event_per_call(llm, debug):
    text = llm.complete(PROMPTS[0]).text
    reply = llm.chat(MESSAGES).message.content
    assert llm_events(debug) == 2
    assert (await llm.acomplete(PROMPTS[0])).text == text
    assert llm_events(debug) == 3
    assert "".join([r.delta async for r in await llm.astream_complete(PROMPTS[0])]) == text
    assert llm_events(debug) == 4
    assert (await llm.achat(MESSAGES)).message.content == reply
    assert llm_events(debug) == 5
    streamed = [r async for r in await llm.astream_chat(MESSAGES)]
    assert streamed[-1].message.content == reply
    assert llm_events(debug) == 6


@pytest.mark.asyncio
async def test_concurrent_calls_equal_sequential_calls(llm):
    sequential = [llm.complete(p).text for p in PROMPTS]
    concurrent = await asyncio.gather(*(llm.acomplete(p) for p in PROMPTS))
    assert [r.text for r in concurrent] == sequential


@pytest.mark.asyncio
async def test_async_generation_leaves_the_event_loop_free(engine):
    llm = PackLLM(engine=engine, max_new_tokens=48)
    assert await loop_ticks_during(llm.acomplete(PROMPTS[0])) >= 10  # a blocking call leaves the loop no turn


# ---- as Settings.llm in a query engine ----------------------------------------------------------------


def test_query_engine_with_settings_llm(settings_llm, debug):
    docs = [Document(text="Tuples are immutable sequences."), Document(text="Sets hold unique items.")]
    index = SummaryIndex.from_documents(docs)
    # The tiny members' window is 256 tokens: too small for LlamaIndex's default QA prompt and
    # for refining (which reserves 500 tokens), so one short prompt over the truncated context.
    templates = {
        "response_mode": "simple_summarize",
        "text_qa_template": PromptTemplate("{context_str}\nQ: {query_str}\nA:"),
    }
    question = "Which sequences are immutable?"
    response = index.as_query_engine(**templates).query(question)
    assert isinstance(response.response, str)
    assert len(response.source_nodes) == 2
    streaming = index.as_query_engine(streaming=True, **templates).query(question)
    assert "".join(streaming.response_gen) == response.response
    assert llm_events(debug) == 2


# ---- timeouts and retries -------------------------------------------------------------------


def test_timeout_raises(engine):
    llm = PackLLM(engine=engine, timeout=1e-6)
    with pytest.raises(TimeoutError, match="timeout"):
        llm.complete(PROMPTS[0])
    with pytest.raises(TimeoutError):
        list(llm.stream_complete(PROMPTS[0]))
    with pytest.raises(TimeoutError):
        llm.chat(MESSAGES)
    with pytest.raises(TimeoutError):
        list(llm.stream_chat(MESSAGES))


def test_a_generous_timeout_changes_nothing(llm, engine):
    assert PackLLM(engine=engine, timeout=600).complete(PROMPTS[0]).text == llm.complete(PROMPTS[0]).text


@pytest.mark.asyncio
async def test_async_timeout_raises(engine):
    llm = PackLLM(engine=engine, timeout=1e-6)
    with pytest.raises(TimeoutError):
        await llm.acomplete(PROMPTS[0])
    with pytest.raises(TimeoutError):
        [r async for r in await llm.astream_complete(PROMPTS[0])]
    with pytest.raises(TimeoutError):
        await llm.achat(MESSAGES)
    with pytest.raises(TimeoutError):
        [r async for r in await llm.astream_chat(MESSAGES)]


CALLS = {
    "complete": lambda llm: llm.complete(PROMPTS[0]).text,
    "stream_complete": lambda llm: "".join(r.delta for r in llm.stream_complete(PROMPTS[0])),
    "chat": lambda llm: llm.chat(MESSAGES).message.content,
    "stream_chat": lambda llm: "".join(r.delta for r in llm.stream_chat(MESSAGES)),
}


@pytest.mark.parametrize("method", list(CALLS))
def test_out_of_memory_is_retried(engine, method):
    expected = engine.generate(PROMPTS[0] if "complete" in method else AS_DICTS).text
    with OutOfMemoryOnce(engine.members[1].model) as fault:
        text = CALLS[method](PackLLM(engine=engine, max_retries=1))
    assert fault.failures == 1
    assert text == expected


@pytest.mark.asyncio
async def test_out_of_memory_is_retried_in_async_calls(engine):
    llm = PackLLM(engine=engine, max_retries=1)
    expected = engine.generate(PROMPTS[0]).text
    with OutOfMemoryOnce(engine.members[0].model) as fault:
        assert (await llm.acomplete(PROMPTS[0])).text == expected
    assert fault.failures == 1
    with OutOfMemoryOnce(engine.members[0].model) as fault:
        assert "".join([r.delta async for r in await llm.astream_complete(PROMPTS[0])]) == expected
    assert fault.failures == 1


def test_out_of_memory_is_raised_without_retries(engine):
    with OutOfMemoryOnce(engine.members[0].model) as fault, pytest.raises(torch.OutOfMemoryError):
        PackLLM(engine=engine, max_retries=0).complete(PROMPTS[0])
    assert fault.failures == 1


def test_a_stream_is_not_retried_after_its_first_response(engine):
    """A restart would repeat text the caller already has: the error is raised instead."""
    llm = PackLLM(engine=engine, max_retries=3)
    with OutOfMemoryOnce(engine.members[0].model, armed=False) as fault:
        stream = llm.stream_complete(PROMPTS[0])
        first = next(stream)
        fault.arm()
        with pytest.raises(torch.OutOfMemoryError):
            list(stream)
    assert first.delta and fault.failures == 1
