"""Tool calling in the engine: tools rendered per member, the grammar of tool_choice, replies read back."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jsonschema
import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from packllm_integrations import ConfigError, PromptError, TextEvent
from packllm_integrations.structured.chat_format import TOOLS_SECTION, content_spans, merge
from packllm_integrations.structured.constraints import Grammars
from packllm_integrations.structured.replies import ReplyStream, call_form, parse_reply
from packllm_integrations.structured.tools import Conversation, Tool, ToolCall, normalise_tool_choice, tool_constraint
from tests.test_adapters_common import tool_engine

ADD = Tool(
    "add",
    "Add two small integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer", "enum": [1, 2, 3]}, "b": {"type": "integer", "enum": [4, 5]}},
        "required": ["a", "b"],
    },
)
WEATHER = Tool(
    "get_weather",
    "The weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
    },
)
NESTED = Tool(  # a pydantic-style schema: $defs and $ref, an array, an optional field
    "book",
    "Book a trip.",
    {
        "$defs": {"Leg": {"type": "object", "properties": {"to": {"enum": ["A", "B"]}}, "required": ["to"]}},
        "type": "object",
        "properties": {
            "legs": {"type": "array", "items": {"$ref": "#/$defs/Leg"}, "minItems": 1, "maxItems": 2},
            "note": {"type": "string", "maxLength": 6},
        },
        "required": ["legs"],
    },
)
NO_ARGS = Tool("ping", "Ping.")
TOOLS = [ADD, WEATHER, NESTED, NO_ARGS]
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 5?"}]


@pytest.fixture(scope="module")
def engine():
    return tool_engine()


def _valid(call: ToolCall, tools=TOOLS) -> None:
    (tool,) = [t for t in tools if t.name == call.name]
    jsonschema.validate(call.arguments, dict(tool.parameters))


# ---- tools, choices ---------------------------------------------------------------------------


def test_tool_from_openai_dicts():
    spec = {"type": "function", "function": {"name": "add", "description": "Add.", "parameters": ADD.parameters}}
    assert Tool.of(spec) == Tool("add", "Add.", ADD.parameters)
    assert Tool.of({"name": "ping"}).parameters == {"type": "object", "properties": {}}
    assert Tool.of(ADD.openai()) == ADD


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "has space"}, "tool names"),
        ({"parameters": {}}, "OpenAI-style"),
        ({"name": "x", "parameters": {"type": "string"}}, "object JSON Schema"),
        ("add", "OpenAI-style"),
    ],
)
def test_bad_tools_raise(spec, match):
    with pytest.raises(ConfigError, match=match):
        Tool.of(spec)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, "auto"),
        ("auto", "auto"),
        ("any", "required"),
        ("required", "required"),
        (True, "required"),
        ("none", "none"),
        (False, "none"),
        ("add", "add"),
        ({"type": "function", "function": {"name": "ping"}}, "ping"),
    ],
)
def test_tool_choice(choice, expected):
    assert normalise_tool_choice(choice, TOOLS) == expected


def test_unknown_tool_choice_names_the_tools():
    with pytest.raises(ConfigError, match=r"tool_choice='multiply'.*'add', 'get_weather'"):
        normalise_tool_choice("multiply", TOOLS)


# ---- the grammar -------------------------------------------------------------------------------


def _accepts(member, constraint, text: str) -> bool:
    matcher = tool_engine()._grammars.matcher(member, constraint)
    ids = member.tokenizer(text, add_special_tokens=False)["input_ids"]
    try:
        for token in ids:
            matcher.advance(token)
    except Exception:  # noqa: BLE001 - a refused token
        return False
    return matcher.complete


CALL = '{"name": "add", "arguments": {"a": 2, "b": 5}}'


@pytest.mark.parametrize("member", [0, 1, 2], ids=["native-template", "chatml", "sentencepiece"])
@pytest.mark.parametrize(
    ("choice", "text", "ok"),
    [
        ("auto", "Seven.", True),
        ("auto", f"<tool_call>\n{CALL}\n</tool_call>", True),
        ("auto", CALL, True),
        ("auto", f"```json\n{CALL}\n```", True),
        ("auto", f"\n<tool_call>\n{CALL}\n</tool_call>", True),
        ("auto", "<tool>add</tool>", False),  # begins like a call, is none
        ("auto", '{"a": 2}', False),
        ("auto", '<tool_call>\n{"name": "add", "arguments": {"a": 7, "b": 5}}\n</tool_call>', False),  # 7: no enum
        ("auto", '<tool_call>\n{"name": "mul", "arguments": {}}\n</tool_call>', False),
        ("required", "Seven.", False),
        ("required", f"<tool_call>\n{CALL}\n</tool_call>", True),
        ("add", '{"name": "ping", "arguments": {}}', False),
        ("ping", '{"name": "ping", "arguments": {}}', True),
        ("none", "Seven.", True),
        ("none", CALL, False),
        ("required", f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL}\n</tool_call>", False),  # one call
    ],
)
def test_grammar_of_each_choice(engine, member, choice, text, ok):
    assert _accepts(engine.members[member], tool_constraint(TOOLS, choice, parallel=False), text) is ok


def test_parallel_calls_only_when_asked(engine):
    two = f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL}\n</tool_call>"
    assert _accepts(engine.members[0], tool_constraint(TOOLS, "required", parallel=True), two)
    assert not _accepts(engine.members[0], tool_constraint(TOOLS, "add", parallel=True), two)  # a named tool: one


def test_the_tag_is_one_token_where_the_vocabulary_has_it(engine):
    # tiny-tools has "<tool_call>" as an ordinary added token (Qwen2.5 does): the grammar allows it whole.
    member = engine.members[0]
    tag = member.tokenizer.convert_tokens_to_ids("<tool_call>")
    assert tag not in member.special_ids
    allowed = engine._grammars.matcher(member, tool_constraint(TOOLS, "required")).allowed()
    assert bool(allowed[tag])


def test_the_tags_read_as_text_where_the_vocabulary_already_holds_them(engine):
    """A GGUF file's tokenizer, converted, holds Qwen2.5's tags in its vocabulary as well as among
    its added tokens. Read as special tokens there, the grammar refused the whole-tag tokens a
    member writes (and its mask offered ``</tool_call>`` where it then refused it)."""
    base = engine.members[0]
    spec = json.loads(base.tokenizer.backend_tokenizer.to_str())
    tags = [t for t in spec["added_tokens"] if "tool_call" in t["content"]]
    assert tags and not any(t["special"] for t in tags)
    spec["model"]["vocab"].update({t["content"]: t["id"] for t in tags})  # the tags are ASCII: spelled as they are
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|im_end|>")
    member = SimpleNamespace(
        name="gguf-like",
        tokenizer=tok,
        vocab_size=base.vocab_size,
        eos_token_ids=base.eos_token_ids,
        tokenizer_fingerprint="gguf-like",
    )
    text = f"<tool_call>\n{CALL}\n</tool_call>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tags[0]["id"] and ids[-1] == tags[1]["id"]  # each tag one token
    matcher = Grammars().matcher(member, tool_constraint(TOOLS, "required", parallel=False))
    for token in ids:
        matcher.advance(token)
    assert matcher.complete


# ---- rendering --------------------------------------------------------------------------------


def test_content_spans_find_the_messages_not_the_templates_text():
    # a default system prompt that holds the user's word: the span is the message's
    text = "<s>system\nYou are a helpful assistant.</s>\n<s>user\nhelpful</s>\n<s>user\n Thanks </s>\n<s>assistant\n"
    messages = [{"role": "user", "content": "helpful"}, {"role": "user", "content": "  Thanks  "}]
    spans = content_spans(text, messages)
    assert [text[a:b] for a, b in spans] == ["helpful", "Thanks"]  # the second, stripped by the template
    assert spans[0][0] == text.index("<s>user") + len("<s>user\n")
    assert content_spans(text, [{"role": "user", "content": "absent"}]) == []


HISTORY = [
    *QUESTION,
    {"role": "assistant", "content": "", "tool_calls": [ToolCall("add", {"a": 2, "b": 5}, "call_1")]},
    {"role": "tool", "content": "7", "tool_call_id": "call_1", "name": "add"},
    {"role": "tool", "content": "8", "tool_call_id": "call_2", "name": "add"},
]


def test_which_templates_render_tools(engine):
    assert [m.renders_tools for m in engine.members] == [True, False, False]


def test_a_template_that_renders_tools_gets_them(engine):
    text = engine.members[0].render_chat(HISTORY, TOOLS)
    assert json.dumps(ADD.openai()) in text
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 5}}\n</tool_call>' in text
    assert "<tool_response>\n7\n</tool_response>" in text and TOOLS_SECTION[:20] not in text


@pytest.mark.parametrize("member", [1, 2])
def test_other_members_read_tools_calls_and_results_as_text(engine, member):
    text = engine.members[member].render_chat(HISTORY, TOOLS)
    assert "Be brief.\n\n# Tools" in text
    assert json.dumps(WEATHER.openai()) in text
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 5}}\n</tool_call>' in text
    # two results in one user turn, as Qwen's template writes them
    assert "<tool_response>\n7\n</tool_response>\n<tool_response>\n8\n</tool_response>" in text
    if member == 2:  # no template: the plain format
        assert text.startswith("System: Be brief.") and text.endswith("Assistant:")


def test_messages_without_tools_render_as_before(engine):
    for m in engine.members:
        assert m.render_chat(QUESTION) == m.render_chat(QUESTION, ())


def test_merge_keeps_calls_and_results_apart():
    call = {"role": "assistant", "content": "", "tool_calls": [ToolCall("ping", {}, "c")]}
    result = {"role": "tool", "content": "pong", "tool_call_id": "c", "name": "ping"}
    merged = merge([{"role": "assistant", "content": "a"}, call, result, dict(result)])
    assert len(merged) == 4


@pytest.mark.parametrize(
    "bad",
    [
        [{"role": "user", "content": "x", "tool_calls": [ToolCall("ping", {}, "c")]}],
        [{"role": "assistant", "content": "", "tool_calls": [{"name": "ping"}]}],
    ],
)
def test_bad_tool_messages_raise(engine, bad):
    with pytest.raises(PromptError, match="tool_calls"):
        engine.generate(Conversation(bad, TOOLS), max_new_tokens=1)


# ---- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "temperature", "choice"),
    [
        (None, 0.0, "required"),
        ("tiny-tools", 1.0, "required"),
        ("tiny-bytelevel", 0.0, "book"),
        ("tiny-sentencepiece", 1.0, "book"),
        ("tiny-tools", 0.0, "add"),
        ("tiny-sentencepiece", 0.0, "auto"),
        ("tiny-bytelevel", 1.0, "auto"),
    ],
)
def test_every_call_validates(engine, reference, temperature, choice):
    constraint = tool_constraint(TOOLS, choice, parallel=True)
    prompts = [Conversation(QUESTION, TOOLS), Conversation(HISTORY, TOOLS)]
    results = engine.generate_batch(
        prompts, reference=reference, temperature=temperature, seed=3, constraint=constraint
    )
    for result in results:
        reply = parse_reply(result.text, TOOLS)
        for call in reply.calls:  # whole calls validate, finished or cut after them
            _valid(call)
            assert choice in ("auto", "required") or call.name == choice
        if result.finish_reason == "stop":
            assert not reply.invalid
            assert reply.calls or (choice == "auto" and reply.content)
        else:  # cut by max_new_tokens: a call it cut is invalid, never reported as a call
            assert result.finish_reason == "length"
            assert all("cut" in c.error for c in reply.invalid)


def test_a_recursive_tool_schema_validates(engine):
    tree = Tool(  # "#" is the arguments' own root: the call's schema must keep it pointing there
        "tree",
        "A tree.",
        {
            "type": "object",
            "properties": {"child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}, "v": {"enum": [1]}},
            "required": ["child", "v"],
        },
    )
    constraint = tool_constraint([tree, NESTED], "tree")
    results = engine.generate_batch(
        [Conversation(QUESTION, [tree])] * 4, temperature=1.0, seed=1, constraint=constraint, max_new_tokens=200
    )
    calls = [c for r in results if r.finish_reason == "stop" for c in parse_reply(r.text, [tree]).calls]
    assert calls
    for call in calls:
        _valid(call, [tree])
    other = Tool("t", "d", {"type": "object", "properties": {"a": {"$ref": "#/properties/b"}, "b": {"type": "null"}}})
    with pytest.raises(ConfigError, match="tools='#/properties/b'"):
        tool_constraint([other])


def test_none_never_calls(engine):
    result = engine.generate(Conversation(QUESTION, TOOLS), constraint=tool_constraint(TOOLS, "none"), seed=1)
    assert call_form(result.text) == "text"


def test_streamed_calls_equal_the_whole_reply(engine):
    constraint = tool_constraint(TOOLS, "required", parallel=True)
    for seed in range(3):
        prompt = Conversation(HISTORY, TOOLS)
        whole = engine.generate(prompt, constraint=constraint, temperature=1.0, seed=seed, max_new_tokens=96)
        stream, pieces = ReplyStream(TOOLS), []
        for event in engine.stream(prompt, constraint=constraint, temperature=1.0, seed=seed, max_new_tokens=96):
            if isinstance(event, TextEvent):
                pieces += stream.feed(event.text)
        pieces += stream.close()
        reply = parse_reply(whole.text, TOOLS)
        assert [(c.name, c.arguments) for c in pieces] == [(c.name, c.arguments) for c in reply.calls]


# ---- replies ---------------------------------------------------------------------------------


REPLIES = [
    f"<tool_call>\n{CALL}\n</tool_call>",
    f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n" + '{"name": "ping", "arguments": {"x": "}\\n"}}\n</tool_call>',
    f"  {CALL}",
    f"```json\n{CALL}\n```",
    "Plain text, with a <tool_call> later on.",
    f"<tool_call>\n{CALL}\n</tool",  # the closing tag cut: the call is whole
    "<",
    "",
]


@pytest.mark.parametrize("text", REPLIES)
@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_stream_reads_what_parse_reads(text, step):
    stream, pieces = ReplyStream(), []
    for i in range(0, len(text), step):
        pieces += stream.feed(text[i : i + step])
    pieces += stream.close()
    reply = parse_reply(text)
    assert "".join(p for p in pieces if isinstance(p, str)) == reply.content
    assert [(c.name, c.arguments) for c in pieces if isinstance(c, ToolCall)] == [
        (c.name, c.arguments) for c in reply.calls
    ]


def test_repeated_calls_and_cut_calls():
    reply = parse_reply(
        f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n" + CALL[:36]
    )
    assert len(reply.calls) == 1  # the repeat is left out
    (cut,) = reply.invalid
    assert cut.name == "add" and "cut" in cut.error
    assert parse_reply('{"name": "add", "arguments": {"a"').invalid[0].error.startswith("the output was cut")
    assert parse_reply('<tool_call>\n{"name": "mul", "arguments": {}}\n</tool_call>', TOOLS).invalid
    ids = {c.id for c in parse_reply(REPLIES[1]).calls}
    assert len(ids) == 2 and all(i.startswith("call_") for i in ids)


# ---- repeated calls (host) --------------------------------------------------------------------


def test_calls_the_conversation_answered_are_left_out_under_auto():
    from packllm_integrations.host import ToolRequest, split_call

    text = f"<tool_call>\n{CALL}\n</tool_call>"
    request = ToolRequest.of(TOOLS).given(HISTORY)  # HISTORY answered add(2, 5) as call_1
    reply = request.reply(text)
    assert reply.calls == [] and reply.repeats == 1
    stream = request.stream()
    assert stream.feed(text) == [] and stream.close() == [] and stream.repeats == 1
    assert request.results == (("add", "7"), ("add", "8"))
    prompt = request.answer_prompt(HISTORY)
    assert prompt[0]["role"] == "system" and "- add: 7\n- add: 8" in prompt[0]["content"]
    assert [m["role"] for m in prompt] == ["system", "user"] and prompt[1]["content"] == "What is 2 + 5?"
    # asked for, or allowed: the call is made again
    assert ToolRequest.of(TOOLS, "add").given(HISTORY).reply(text).calls
    allowed, _, _ = split_call({"tools": TOOLS, "allow_repeated_calls": True})
    assert allowed.given(HISTORY).reply(text).calls
    with pytest.raises(ConfigError, match="allow_repeated_calls"):
        split_call({"tools": TOOLS, "allow_repeated_calls": "yes"})


def test_a_call_answered_before_the_last_user_message_is_a_new_question():
    from packllm_integrations.host import ToolRequest

    asked_again = [*HISTORY, {"role": "assistant", "content": "7"}, {"role": "user", "content": "And now?"}]
    request = ToolRequest.of(TOOLS).given(asked_again)
    reply = request.reply(f"<tool_call>\n{CALL}\n</tool_call>")
    assert [c.name for c in reply.calls] == ["add"] and reply.repeats == 0
    assert request.results == ()  # the earlier turn's results do not answer this one
