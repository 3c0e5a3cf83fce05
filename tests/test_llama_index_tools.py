"""The LlamaIndex `PackLLM` as a function-calling LLM, on tiny in-memory members (grammar-constrained)."""

from typing import Literal

import jsonschema
import pytest
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, Field

from packllm_integrations import PromptError
from packllm_integrations.llama_index import PackLLM, to_chat_messages
from packllm_integrations.structured.tools import ToolCall
from tests.test_adapters_common import tool_engine


def add(a: Literal[1, 2, 3], b: Literal[4, 5]) -> int:
    """Add two small integers."""
    return a + b


def get_weather(city: Literal["Paris", "Rome"]) -> str:
    """The weather in a city."""
    return "sunny"


ADD, WEATHER = FunctionTool.from_defaults(fn=add), FunctionTool.from_defaults(fn=get_weather)


class Answer(BaseModel):
    """An answer."""

    word: Literal["yes", "no"]
    score: int = Field(ge=0, le=9)


@pytest.fixture(scope="module")
def llm() -> PackLLM:
    return PackLLM(engine=tool_engine(), max_new_tokens=96, temperature=0)


def test_a_function_calling_llm(llm):
    assert isinstance(llm, FunctionCallingLLM) and llm.metadata.is_function_calling_model


def test_chat_with_tools_required(llm):
    response = llm.chat_with_tools([ADD, WEATHER], user_msg="What is 2 + 5?", tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name in ("add", "get_weather") and selection.tool_id.startswith("call_")
    tool = ADD if selection.tool_name == "add" else WEATHER
    jsonschema.validate(selection.tool_kwargs, tool.metadata.get_parameters_dict())
    assert response.message.content == "" and response.additional_kwargs["finish_reason"] == "stop"


def test_a_reply_without_calls(llm):
    response = llm.chat_with_tools([ADD], user_msg="Say hi.", tool_choice="none")
    assert response.message.content and llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="no tool call"):
        llm.get_tool_calls_from_response(response)


def test_predict_and_call_runs_the_tool(llm):
    output = llm.predict_and_call([ADD], user_msg="What is 2 + 5?", tool_required=True)
    (source,) = output.sources
    assert source.tool_name == "add" and output.response == str(add(**source.raw_input["kwargs"]))


def test_streamed_calls_equal_the_whole_reply(llm):
    whole = llm.chat_with_tools([ADD, WEATHER], user_msg="2 + 5?", tool_required=True)
    responses = list(llm.stream_chat_with_tools([ADD, WEATHER], user_msg="2 + 5?", tool_required=True))
    last = responses[-1]  # agents keep the last response's message
    got = [(s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(last)]
    assert got == [(s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(whole)]
    assert last.additional_kwargs["finish_reason"] == "stop"
    # streaming agents match a call's result to the call by id: the streamed ids are the final ones
    streamed = [s.tool_id for r in responses[:-1] for s in llm.get_tool_calls_from_response(r, False)]
    assert streamed and set(streamed) == {s.tool_id for s in llm.get_tool_calls_from_response(last)}


async def test_async_with_tools(llm):
    response = await llm.achat_with_tools([ADD], user_msg="2 + 5?", tool_required=True)
    assert llm.get_tool_calls_from_response(response)[0].tool_name == "add"
    stream = await llm.astream_chat_with_tools([ADD], user_msg="2 + 5?", tool_required=True)
    responses = [r async for r in stream]
    assert llm.get_tool_calls_from_response(responses[-1])[0].tool_name == "add"


def test_a_cut_call_is_reported_not_called():
    short = PackLLM(engine=tool_engine(), max_new_tokens=6, temperature=0)
    response = short.chat_with_tools([ADD], user_msg="2 + 5?", tool_required=True)
    assert response.additional_kwargs["finish_reason"] == "length"
    assert "cut" in response.additional_kwargs["invalid_tool_calls"][0]["error"]
    with pytest.raises(ValueError, match="cut"):
        short.get_tool_calls_from_response(response)


def test_structured_predict_and_structured_llm(llm):
    answer = llm.structured_predict(Answer, PromptTemplate("Is {thing} good?"), thing="tea")
    assert isinstance(answer, Answer)
    reply = llm.as_structured_llm(Answer).chat([ChatMessage(role="user", content="Is tea good?")])
    assert Answer.model_validate_json(reply.message.content)


async def test_async_structured_predict(llm):
    assert isinstance(await llm.astructured_predict(Answer, PromptTemplate("Is {x} good?"), x="tea"), Answer)


def test_tool_messages_go_back_to_the_members():
    call = {"id": "call_1", "name": "add", "arguments": {"a": 2, "b": 5}}
    messages = [
        ChatMessage(role=MessageRole.USER, content="2 + 5?"),
        ChatMessage(role=MessageRole.ASSISTANT, content="", additional_kwargs={"tool_calls": [call]}),
        ChatMessage(role=MessageRole.TOOL, content="7", additional_kwargs={"tool_call_id": "call_1"}),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            blocks=[ToolCallBlock(tool_call_id="c2", tool_name="add", tool_kwargs='{"a": 1, "b": 4}')],
        ),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            additional_kwargs={
                "tool_calls": [{"id": "c3", "function": {"name": "add", "arguments": '{"a": 3, "b": 4}'}}]
            },
        ),
    ]
    out = to_chat_messages(messages)
    assert out[1]["tool_calls"] == [ToolCall("add", {"a": 2, "b": 5}, "call_1")]
    assert out[2] == {"role": "tool", "content": "7", "tool_call_id": "call_1", "name": ""}
    assert out[3]["tool_calls"] == [ToolCall("add", {"a": 1, "b": 4}, "c2")]
    assert out[4]["tool_calls"] == [ToolCall("add", {"a": 3, "b": 4}, "c3")]
    bad = ChatMessage(
        role=MessageRole.ASSISTANT, content="", additional_kwargs={"tool_calls": [{"name": "add", "arguments": "{"}]}
    )
    with pytest.raises(PromptError, match="JSON object"):
        to_chat_messages([bad])


def test_a_custom_messages_to_prompt_cannot_take_tools():
    llm = PackLLM(engine=tool_engine(), messages_to_prompt=lambda messages: "x", max_new_tokens=4)
    with pytest.raises(PromptError, match="messages_to_prompt"):
        llm.chat_with_tools([ADD], user_msg="hi")
