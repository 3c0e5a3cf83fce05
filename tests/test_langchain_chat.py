"""`packllm_integrations.langchain.ChatPackLLM` (a LangChain BaseChatModel) on tiny in-memory members."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import ValidationError

from packllm_integrations import PackEngine, PromptError, TextEvent
from packllm_integrations.langchain import ChatPackLLM
from packllm_integrations.langchain.chat_models import to_chat_messages
from tests.test_adapters_common import tiny_engine

CONVERSATION = [SystemMessage("Answer in one line."), HumanMessage("What does a decorator do?")]
AS_DICTS = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "What does a decorator do?"},
]


class TestChatPackLLMStandard(ChatModelUnitTests):
    """LangChain's standard unit tests for chat models, with the pack's capabilities declared."""

    @property
    def chat_model_class(self) -> type[ChatPackLLM]:
        return ChatPackLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": tiny_engine()}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local pack has no API key, so ChatPackLLM rejects one (unknown parameters raise,
        # see test_api_key_is_rejected); every other standard parameter is taken as is.
        params = super().standard_chat_model_params
        params.pop("api_key")
        return params

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # a pack cannot swap its members per call


@pytest.fixture(scope="module")
def engine() -> PackEngine:
    return tiny_engine()


@pytest.fixture
def chat(engine: PackEngine) -> ChatPackLLM:
    return ChatPackLLM(engine=engine)


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_api_key_is_rejected(engine):
    with pytest.raises(ValidationError, match="api_key"):
        ChatPackLLM(engine=engine, api_key="secret")


# ---- messages -------------------------------------------------------------------------------------


def test_reply_uses_each_members_chat_template(chat, engine):
    # tiny-bytelevel has a ChatML template; tiny-sentencepiece has none and reads the plain format.
    assert engine.members[0].has_chat_template and not engine.members[1].has_chat_template
    reply = chat.invoke(CONVERSATION)
    expected = engine.generate(AS_DICTS)
    assert isinstance(reply, AIMessage)
    assert reply.content == expected.text
    assert reply.usage_metadata == {
        "input_tokens": expected.usage.prompt_tokens,
        "output_tokens": expected.usage.completion_tokens,
        "total_tokens": expected.usage.total_tokens,
    }
    meta = reply.response_metadata
    assert meta["weights"] == pytest.approx(expected.weights)
    assert meta["prompt_perplexity"] == pytest.approx(expected.prompt_perplexity)
    assert meta["reference"] == expected.reference
    assert meta["finish_reason"] == expected.finish_reason
    assert meta["model_name"] == "packllm:tiny-bytelevel+tiny-sentencepiece"


def test_message_conversion():
    messages = [
        SystemMessage("a"),
        SystemMessage([{"type": "text", "text": "b"}]),
        HumanMessage("c", name="someone"),
        AIMessage("d"),
        ChatMessage(role="developer", content="e"),
    ]
    assert to_chat_messages(messages) == [
        {"role": "system", "content": "a\n\nb"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
        {"role": "developer", "content": "e"},
    ]


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (HumanMessage([{"type": "image", "url": "x.png"}]), "image content block"),
    ],
)
def test_unsupported_messages_raise(chat, message, match):
    with pytest.raises(PromptError, match=match):
        chat.invoke([HumanMessage("hi"), message])


def test_token_count_of_messages_includes_the_chat_template(chat, engine):
    ref = engine.members[0]
    assert chat.get_num_tokens_from_messages(CONVERSATION) == len(ref.encode(ref.render_chat(AS_DICTS)))
    assert chat.get_num_tokens("hello") == len(ref.encode("hello"))


# ---- streaming and stops ----------------------------------------------------------------------


def test_stream_joined_equals_invoke(chat):
    chunks = list(chat.stream(CONVERSATION))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(chunks) > 2
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    reply = chat.invoke(CONVERSATION)
    assert full.content == reply.content
    assert chunks[-1].chunk_position == "last"
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.usage_metadata == reply.usage_metadata
    assert full.response_metadata["weights"] == pytest.approx(reply.response_metadata["weights"])


def test_streaming_flag_sends_pieces_to_callbacks_during_invoke(engine):
    recorder = TokenRecorder()
    reply = ChatPackLLM(engine=engine, streaming=True).invoke(CONVERSATION, config={"callbacks": [recorder]})
    pieces = [e.text for e in engine.stream(AS_DICTS) if isinstance(e, TextEvent)]
    assert reply.content == "".join(pieces)
    assert [t for t in recorder.tokens if t] == pieces


def test_stop_string_split_across_pieces(chat, engine):
    pieces = [e.text for e in engine.stream(AS_DICTS) if isinstance(e, TextEvent)]
    text = "".join(pieces)
    # a stop string that starts at the end of one piece and ends in the next (first occurrence)
    ends = [sum(len(p) for p in pieces[: i + 1]) for i in range(len(pieces) - 1)]
    start = next(e - 1 for e in ends if e >= 1 and text.find(text[e - 1 : e + 1]) == e - 1)
    stop = text[start : start + 2]
    assert chat.invoke(CONVERSATION, stop=[stop]).content == text[:start]
    assert "".join(c.content for c in chat.stream(CONVERSATION, stop=[stop])) == text[:start]
    assert ChatPackLLM(engine=engine, stop=[stop]).invoke(CONVERSATION).content == text[:start]


def test_per_call_settings(chat, engine):
    reply = chat.invoke(CONVERSATION, max_tokens=3, weighting="uniform")
    assert reply.usage_metadata["output_tokens"] == 3
    assert reply.response_metadata["weights"] == pytest.approx({n: 0.5 for n in engine.names})
    assert reply.content == engine.generate(AS_DICTS, max_new_tokens=3, weighting="uniform").text


# ---- async -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_matches_sync(chat):
    reply = chat.invoke(CONVERSATION)
    assert (await chat.ainvoke(CONVERSATION)).content == reply.content
    chunks = [c async for c in chat.astream(CONVERSATION)]
    assert "".join(c.content for c in chunks) == reply.content
    assert chunks[-1].usage_metadata == reply.usage_metadata


@pytest.mark.asyncio
async def test_concurrent_chats_equal_sequential_ones(chat):
    questions = [[HumanMessage(q)] for q in ("What is a tuple?", "What is a set?", "Why use generators?")]
    sequential = [chat.invoke(q).content for q in questions]
    concurrent = await asyncio.gather(*(chat.ainvoke(q) for q in questions))
    assert [r.content for r in concurrent] == sequential
    assert [r.content for r in await chat.abatch(questions)] == sequential
