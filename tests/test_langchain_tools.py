"""`ChatPackLLM.bind_tools` and `with_structured_output` on tiny in-memory members (grammar-constrained)."""

from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from packllm_integrations import ConfigError, Constraint, PromptError
from packllm_integrations.langchain import ChatPackLLM
from packllm_integrations.langchain.messages import to_chat_messages
from packllm_integrations.structured.tools import ToolCall
from tests.test_adapters_common import tool_engine
from tests.test_constraints import Cat, Dog


@tool
def add(a: Literal[1, 2, 3], b: Literal[4, 5]) -> int:
    """Add two small integers."""
    return a + b


@tool
def get_weather(city: Literal["Paris", "Rome"]) -> str:
    """The weather in a city."""
    return "sunny"


class Joke(BaseModel):
    """A joke."""

    setup: str = Field(max_length=8)
    punchline: Literal["yes", "no"]


class JokeDict(TypedDict):
    setup: Literal["a", "b"]
    rating: Literal[1, 2, 3]


JOKE_SCHEMA = {
    "title": "Joke",
    "type": "object",
    "properties": {"setup": {"type": "string", "maxLength": 8}, "funny": {"type": "boolean"}},
    "required": ["setup", "funny"],
}
QUESTION = [SystemMessage("Be brief."), HumanMessage("What is 2 + 5?")]
FORCED = {"method": "function_calling"}


@pytest.fixture(scope="module")
def chat() -> ChatPackLLM:
    return ChatPackLLM(engine=tool_engine(), max_tokens=96, temperature=0)


def _args_valid(call: dict) -> None:
    schema = {"add": add, "get_weather": get_weather}[call["name"]].tool_call_schema.model_json_schema()
    jsonschema.validate(call["args"], schema)


@pytest.mark.parametrize("choice", ["any", "required", "add", {"type": "function", "function": {"name": "add"}}])
def test_forced_calls_name_a_bound_tool_with_valid_arguments(chat, choice):
    reply = chat.bind_tools([add, get_weather], tool_choice=choice).invoke(QUESTION)
    assert reply.content == "" and len(reply.tool_calls) == 1 and not reply.invalid_tool_calls
    call = reply.tool_calls[0]
    _args_valid(call)
    assert call["id"].startswith("call_") and call["type"] == "tool_call"
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    if choice not in ("any", "required"):
        assert call["name"] == "add"


def test_none_and_auto_replies(chat):
    none = chat.bind_tools([add], tool_choice="none").invoke(QUESTION)
    assert none.content and not none.tool_calls
    auto = chat.bind_tools([add]).invoke(QUESTION)
    assert bool(auto.tool_calls) != bool(auto.content)  # one or the other, never both
    for call in auto.tool_calls:
        _args_valid(call)


def test_stream_gives_the_calls_invoke_gives(chat):
    bound = chat.bind_tools([add, get_weather], tool_choice="any")
    chunks = list(bound.stream(QUESTION))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    reply = bound.invoke(QUESTION)
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [(c["name"], c["args"]) for c in reply.tool_calls]
    assert full.tool_call_chunks[0]["index"] == 0 and full.tool_calls[0]["id"]
    assert full.response_metadata["finish_reason"] == "tool_calls"


async def test_async_calls_equal_sync_ones(chat):
    bound = chat.bind_tools([add], tool_choice="add")
    sync, other = bound.invoke(QUESTION), await bound.ainvoke(QUESTION)
    assert sync.tool_calls[0]["args"] == other.tool_calls[0]["args"]
    chunks = [c async for c in bound.astream(QUESTION)]
    assert sum(len(c.tool_call_chunks) for c in chunks) == 1


def test_a_cut_call_is_invalid_never_a_call(chat):
    reply = chat.bind_tools([add], tool_choice="add").invoke(QUESTION, max_tokens=6)
    assert not reply.tool_calls and reply.invalid_tool_calls
    assert "cut" in reply.invalid_tool_calls[0]["error"]
    assert reply.response_metadata["finish_reason"] == "length"
    streamed = list(chat.bind_tools([add], tool_choice="add").stream(QUESTION, max_tokens=6))
    assert not any(c.tool_call_chunks for c in streamed)
    summed = sum(streamed[1:], streamed[0])
    assert not summed.tool_calls and summed.response_metadata["finish_reason"] == "length"
    (cut,) = summed.response_metadata["invalid_tool_calls"]  # a chunk cannot carry it: LangChain would parse it
    assert cut["error"] == reply.invalid_tool_calls[0]["error"]


def test_tool_history_goes_back_to_the_members(chat):
    history = [
        *QUESTION,
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 5}, "id": "call_1"}]),
        ToolMessage("7", tool_call_id="call_1", name="add"),
    ]
    assert to_chat_messages(history)[2:] == [
        {"role": "assistant", "content": "", "tool_calls": [ToolCall("add", {"a": 2, "b": 5}, "call_1")]},
        {"role": "tool", "content": "7", "tool_call_id": "call_1", "name": "add"},
    ]
    reply = chat.bind_tools([add]).invoke(history)
    assert isinstance(reply, AIMessage)
    counted = chat.get_num_tokens_from_messages(history, tools=[add])
    assert counted > chat.get_num_tokens_from_messages(history)  # the tools are part of the prompt


def test_message_forms_agents_send():
    v1 = AIMessage(
        [{"type": "text", "text": "Let me add."}, {"type": "tool_call", "name": "add", "args": {}, "id": "c"}],
        tool_calls=[{"name": "add", "args": {"a": 1, "b": 4}, "id": "c"}],
    )
    error = ToolMessage("division by zero", tool_call_id="c", status="error")
    out = to_chat_messages([HumanMessage("hi"), v1, error])
    assert out[1]["content"] == "Let me add." and out[1]["tool_calls"][0].arguments == {"a": 1, "b": 4}
    assert out[2] == {"role": "tool", "content": "Error: division by zero", "tool_call_id": "c", "name": ""}
    with pytest.raises(PromptError, match="image"):
        to_chat_messages([ToolMessage([{"type": "image", "url": "x.png"}], tool_call_id="c")])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tool_choice": "multiply"}, "tool_choice='multiply'"),
        ({"tool_choice": 3}, "tool_choice=3"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_bad_tool_arguments_raise_at_bind(chat, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        chat.bind_tools([add], **kwargs)


def test_a_tool_schema_the_grammar_cannot_take_raises_at_bind(chat):
    bad = {"name": "t", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": "strnig"}}}}
    with pytest.raises(ConfigError, match=r"tools=.*tool 't'.*Invalid type: strnig"):
        chat.bind_tools([bad])


def test_tools_and_stop_strings_do_not_mix(chat):
    with pytest.raises(ConfigError, match="stop"):
        chat.bind_tools([add]).invoke(QUESTION, stop=["\n"])


# ---- structured output --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
@pytest.mark.parametrize("schema", [Joke, JokeDict, JOKE_SCHEMA], ids=["pydantic", "typeddict", "json-schema"])
def test_structured_output_validates(chat, method, schema):
    result = chat.with_structured_output(schema, method=method).invoke("Tell me a joke.")
    if schema is Joke:
        assert isinstance(result, Joke)
    else:
        properties = {"setup": {"enum": ["a", "b"]}, "rating": {"enum": [1, 2, 3]}}
        expected = JOKE_SCHEMA if schema is JOKE_SCHEMA else {"properties": properties, "required": list(properties)}
        jsonschema.validate(result, {"type": "object", **expected})


def test_structured_output_streams_and_keeps_the_raw_reply(chat):
    chunks = list(chat.with_structured_output(Joke).stream("Tell me a joke."))
    assert chunks and all(isinstance(c, Joke) for c in chunks)
    out = chat.with_structured_output(Joke, include_raw=True).invoke("Tell me a joke.")
    assert isinstance(out["raw"], AIMessage) and isinstance(out["parsed"], Joke) and out["parsing_error"] is None
    assert Joke.model_validate(json.loads(out["raw"].content)) == out["parsed"]


def test_json_mode_without_a_schema_is_any_object(chat):
    any_object = chat.with_structured_output(None, method="json_mode", include_raw=True)
    whole = any_object.invoke("An object, please.", max_tokens=24)
    assert whole["raw"].response_metadata["finish_reason"] == "stop"
    assert isinstance(whole["parsed"], dict) and whole["parsed"] == json.loads(whole["raw"].content)
    cut = any_object.invoke("JSON, please.", max_tokens=24)  # a key the random members never end
    assert cut["raw"].content.startswith('{"') and cut["parsed"] is None
    assert re.search(r"max_tokens=\d+ ended the structured output before it was whole", str(cut["parsing_error"]))
    result = chat.with_structured_output(JOKE_SCHEMA, method="json_mode").invoke("A joke.")
    jsonschema.validate(result, JOKE_SCHEMA)


def test_a_cut_structured_output_is_an_error():
    short = ChatPackLLM(engine=tool_engine(), max_tokens=5, temperature=0)
    with pytest.raises(OutputParserException, match="cut"):
        short.with_structured_output(Joke, method="function_calling").invoke("Tell me a joke.")
    for schema, method in (
        (Joke, "json_schema"),
        (JokeDict, "json_schema"),
        (JOKE_SCHEMA, "json_schema"),
        (None, "json_mode"),
    ):
        with pytest.raises(OutputParserException):  # never LangChain's partial object of the cut JSON
            short.with_structured_output(schema, method=method).invoke("Tell me a joke.")
    out = short.with_structured_output(Joke, include_raw=True).invoke("Tell me a joke.")
    assert out["parsed"] is None and isinstance(out["parsing_error"], OutputParserException)
    assert out["raw"].response_metadata["finish_reason"] == "length"
    streaming = ChatPackLLM(engine=tool_engine(), max_tokens=5, temperature=0, streaming=True)
    for method in ("function_calling", "json_schema"):
        with pytest.raises(OutputParserException):
            streaming.with_structured_output(Joke, method=method).invoke("Tell me a joke.")
    with pytest.raises(OutputParserException, match="cut"):  # json_schema streams LangChain's partial objects
        list(short.with_structured_output(Joke, method="function_calling").stream("Tell me a joke."))
    out = streaming.with_structured_output(Joke, method="function_calling", include_raw=True).invoke("A joke.")
    assert out["parsed"] is None and "cut" in str(out["parsing_error"])


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((Joke,), {"method": "xml"}, "method='xml'"),
        ((None,), {}, "schema=None"),
        ((Joke,), {"temperature": 0.5}, "temperature"),
        (({"type": "object", "properties": {"a": {"type": "strnig"}}},), {}, "schema=.*strnig"),
        (({"title": "J", "type": "object", "properties": {"a": {"type": "strnig"}}},), FORCED, "schema=.*strnig"),
        (({"title": "Joke schema", "type": "object", "properties": {}},), FORCED, "schema=.*tool names"),
    ],
)
def test_bad_structured_output_arguments_raise(chat, args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        chat.with_structured_output(*args, **kwargs)


def _nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return {"type": "object", "properties": {"a": schema}}


BAD_SCHEMAS = {
    "nan": ({"type": "object", "properties": {"n": {"type": "number", "maximum": float("nan")}}}, "finite"),
    "not json": ({"type": "object", "properties": {"n": {"enum": [{1, 2}]}}}, "JSON values only"),
    "200 deep": (_nested(200), "at most 100 deep"),
    "2000 deep": (_nested(2000), "at most 100 deep"),
}


@pytest.mark.parametrize("case", BAD_SCHEMAS)
def test_a_schema_that_is_not_json_or_too_deep_is_a_config_error_everywhere(chat, case: str) -> None:
    schema, expected = BAD_SCHEMAS[case]
    with pytest.raises(ConfigError, match=expected) as caught:
        Constraint.json_schema(schema)
    assert caught.value.parameter == "constraint"
    tool = {"name": "t", "description": "d", "parameters": schema}
    with pytest.raises(ConfigError, match=expected) as caught:
        chat.bind_tools([tool])
    assert caught.value.parameter == "tools"
    with pytest.raises(ConfigError, match=expected) as caught:
        chat.with_structured_output(schema, method="json_schema")
    assert caught.value.parameter == "schema"


# ---- oneOf, cut outputs -----------------------------------------------------------------------------------

TAGGED = {
    "title": "Pet",
    "oneOf": [
        {
            "type": "object",
            "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["kind", "lives"],
        },
        {
            "type": "object",
            "properties": {"kind": {"const": "dog"}, "name": {"type": "string", "maxLength": 5}},
            "required": ["kind", "name"],
        },
    ],
}
OVERLAPPING = {
    "title": "Pet",
    "oneOf": [{"type": "object"}, {"type": "object", "properties": {"a": {"type": "integer"}}}],
}


class Owner(BaseModel):
    """A pet's owner."""

    pet: Cat | Dog = Field(discriminator="kind")


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_a_one_of_schema_gives_an_object_that_validates(chat, method):
    for prompt in ("Tell me about a pet.", "A dog called Rex."):
        result = chat.with_structured_output(TAGGED, method=method).invoke(prompt)
        jsonschema.validate(result, TAGGED)  # never {}: a top-level oneOf is not dropped
        owner = chat.with_structured_output(Owner, method=method).invoke(prompt)
        assert isinstance(owner, Owner)
        jsonschema.validate(owner.model_dump(), Owner.model_json_schema())


def test_a_one_of_the_grammar_cannot_enforce_is_refused_at_bind(chat):
    for method in ("json_schema", "function_calling"):
        with pytest.raises(ConfigError, match=r"schema=.*oneOf \(at #/oneOf\).*may overlap"):
            chat.with_structured_output(OVERLAPPING, method=method)
    tool = {"name": "t", "description": "d", "parameters": {"type": "object", "oneOf": OVERLAPPING["oneOf"]}}
    with pytest.raises(ConfigError, match=r"tools=.*oneOf \(at #/oneOf\)"):
        chat.bind_tools([tool])
    with pytest.raises(ConfigError, match="language is empty"):
        chat.with_structured_output({"$ref": "#"}, method="json_schema")


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_a_cut_structured_output_says_max_tokens_ended_it(method):
    short = ChatPackLLM(engine=tool_engine(), max_tokens=5, temperature=0)
    with pytest.raises(OutputParserException, match=r"max_tokens=5 ended .* raise max_tokens.*maxLength"):
        short.with_structured_output(Joke, method=method).invoke("Tell me a joke.")
    out = short.with_structured_output(Joke, method=method, include_raw=True).invoke("Tell me a joke.")
    assert "max_tokens=5 ended" in str(out["parsing_error"])
    assert "max_tokens=5 ended" in out["raw"].response_metadata["finish_detail"]
    streaming = ChatPackLLM(engine=tool_engine(), max_tokens=5, temperature=0, streaming=True)
    with pytest.raises(OutputParserException, match="max_tokens=5 ended"):
        streaming.with_structured_output(Joke, method=method).invoke("Tell me a joke.")
