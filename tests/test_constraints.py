"""Constrained decoding on the tiny random models: what comes out always parses and validates.

Random models are the hard case: they put no mass where a grammar wants it, so every
valid token comes from the mask. Each output with ``finish_reason="stop"`` must validate
against its schema; the schemas bound their strings and arrays so that a random walk ends.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from packllm_integrations import ConfigError, Constraint, ConstraintError, GenerationConfig, PackEngine, TextEvent
from packllm_integrations.cli import main as cli_main
from packllm_integrations.structured.constraints import MIN_REPEAT_SPAN, RepeatGuard, one_of_as_any_of

pytest.importorskip("llguidance")

PROMPTS = ["The value of the", "def main(x, y):", "A class is"]


class Colour(StrEnum):
    red = "red"
    green = "green"


class Point(BaseModel):
    x: int = Field(ge=-50, le=50)
    y: float = Field(ge=0, le=1)


class Shape(BaseModel):
    name: str = Field(max_length=6)
    colour: Colour
    points: list[Point] = Field(max_length=3)
    closed: bool
    label: str | None = Field(default=None, max_length=4)


SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}, "score": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["answer", "score"],
    },
    "nested-pydantic": Shape.model_json_schema(),
    "array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 4},
    "optional": {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "string", "maxLength": 3}},
        "required": ["a"],
    },
    "all-of": {  # each branch must accept the other's keys: neither may be closed (maxProperties ends it)
        "type": "object",
        "maxProperties": 2,
        "allOf": [
            {"properties": {"a": {"enum": [1, 2]}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        ],
    },
}


@pytest.fixture(scope="module")
def engine(bl, sp) -> PackEngine:
    return PackEngine([bl, sp], progress=False, max_new_tokens=160)


def _valid(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("name", list(SCHEMAS))
@pytest.mark.parametrize("alignment", ["natural", "mined"])
@pytest.mark.parametrize("reference", ["tiny-bytelevel", "tiny-sentencepiece", None])
def test_greedy_and_sampled_outputs_validate(engine, name, alignment, reference) -> None:
    schema = SCHEMAS[name]
    constraint = Constraint.json_schema(schema)
    for temperature, seed in ((0.0, None), (1.0, 0)):
        results = engine.generate_batch(
            PROMPTS, constraint=constraint, alignment=alignment, reference=reference, temperature=temperature, seed=seed
        )
        for r in results:
            assert r.finish_reason == "stop", (r.text, r.finish_reason)
            _valid(r.text, schema)


def test_a_stream_gives_the_same_valid_text(engine) -> None:
    constraint = Constraint.json_schema(Shape)
    result = engine.generate(PROMPTS[0], constraint=constraint)
    streamed = "".join(e.text for e in engine.stream(PROMPTS[0], constraint=constraint) if isinstance(e, TextEvent))
    assert streamed == result.text
    Shape.model_validate_json(streamed)


def test_a_batch_gives_each_row_what_it_gives_alone(engine) -> None:
    constraint = Constraint.json_schema(SCHEMAS["flat"])
    batch = engine.generate_batch(PROMPTS, constraint=constraint)
    assert [r.text for r in batch] == [engine.generate(p, constraint=constraint).text for p in PROMPTS]


def test_regex_and_lark_constraints(engine) -> None:
    for temperature in (0.0, 1.0):
        text = engine.generate(
            PROMPTS[1], constraint=Constraint.regex(r"(red|blue) [0-9]{3}"), temperature=temperature, seed=3
        ).text
        assert re.fullmatch(r"(red|blue) [0-9]{3}", text)
    grammar = 'start: expr\nexpr: NUM | "(" expr OP expr ")"\nOP: "+" | "*"\nNUM: /[0-9]/'
    result = engine.generate(PROMPTS[2], constraint=Constraint.lark(grammar), max_new_tokens=200)
    assert result.finish_reason == "stop"
    assert re.fullmatch(r"[0-9()+*]+", result.text) and result.text.count("(") == result.text.count(")")


def test_the_mask_never_removes_the_only_valid_token(engine) -> None:
    """A grammar with one sentence: whatever the members think, that sentence comes out."""
    for seed in range(3):
        r = engine.generate(PROMPTS[0], constraint=Constraint.regex(r"abc\{\}xyz"), temperature=1.0, seed=seed)
        assert (r.text, r.finish_reason) == ("abc{}xyz", "stop")


def test_output_cut_by_max_new_tokens_says_length(engine) -> None:
    r = engine.generate(PROMPTS[0], constraint=Constraint.json_schema(Shape), max_new_tokens=3)
    assert r.finish_reason == "length" and r.usage.completion_tokens == 3


def test_bad_constraints_are_config_errors(engine) -> None:
    with pytest.raises(ConfigError, match="constraint"):
        engine.generate(
            PROMPTS[0], constraint=Constraint.json_schema({"type": "object", "properties": {"x": {"type": "nope"}}})
        )
    with pytest.raises(ConfigError, match="constraint"):
        engine.generate(PROMPTS[0], constraint=Constraint.regex("(unclosed"))
    with pytest.raises(ConfigError, match="constraint"):
        engine.generate(PROMPTS[0], constraint={"type": "object"})
    with pytest.raises(ConfigError, match="stop"):
        engine.generate(PROMPTS[0], constraint=Constraint.json(), stop=["}"])
    with pytest.raises(ConfigError, match="constraint"):
        Constraint.json_schema("{not json")
    with pytest.raises(ConfigError, match="constraint"):
        Constraint("yaml", "x: 1")


def test_json_mode_gives_an_object(engine) -> None:
    r = engine.generate(PROMPTS[0], constraint=Constraint.json(), max_new_tokens=120)
    if r.finish_reason == "stop":
        assert isinstance(json.loads(r.text), dict)
    else:  # an open object may go on: it is cut, and says so
        assert r.finish_reason == "length" and r.text.startswith("{")


def test_the_command_line_takes_a_schema_file_and_a_regex(tmp_path, tiny_pack_folders, capsys) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMAS["flat"]))
    models = [arg for folder in tiny_pack_folders for arg in ("--model", folder)]
    assert cli_main(["generate", "--quiet", "--json", *models, "--json-schema", str(schema), "Hello"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["finish_reason"] == "stop"
    _valid(out["text"], SCHEMAS["flat"])
    assert cli_main(["generate", "--quiet", *models, "--regex", "[a-c]{5}", "Hello"]) == 0
    assert re.fullmatch(r"[a-c]{5}", capsys.readouterr().out.splitlines()[0])
    assert cli_main(["generate", "--quiet", *models, "--json-schema", str(tmp_path / "none.json"), "Hello"]) == 2


# ---- oneOf, anyOf, allOf: every output validates; what cannot be enforced is refused -----------------


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    name: str = Field(max_length=5)


class Pet(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]


COMPOSED = {
    "tagged-union": Pet.model_json_schema(),
    "one-of-by-type": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]},
    "one-of-by-const": {
        "oneOf": [
            {"type": "object", "properties": {"k": {"const": 1}, "a": {"type": "boolean"}}, "required": ["k"]},
            {"type": "object", "properties": {"k": {"enum": [2, 3]}, "b": {"enum": ["x"]}}, "required": ["k", "b"]},
        ]
    },
    "one-of-beside-properties": {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 5}},
        "required": ["n"],
        "maxProperties": 2,
        "additionalProperties": False,
        "oneOf": [{"properties": {"n": {"const": 0}}, "required": ["n"]}, {"properties": {"n": {"enum": [1, 2]}}}],
    },
    "any-of-overlapping": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"enum": [3, "three"]}]},
    "all-of-refs": {
        "$defs": {"A": {"properties": {"a": {"type": "boolean"}}, "required": ["a"]}},
        "type": "object",
        "maxProperties": 2,
        "allOf": [{"$ref": "#/$defs/A"}, {"properties": {"b": {"enum": [1, 2]}}, "required": ["b"]}],
    },
}


@pytest.mark.parametrize("name", list(COMPOSED))
def test_composed_schemas_validate_exactly(engine, name) -> None:
    """jsonschema enforces oneOf as "exactly one": an output matching two branches would fail here."""
    schema = COMPOSED[name]
    constraint = Constraint.json_schema(schema)
    assert "oneOf" not in constraint.source  # each became the anyOf it equals
    for temperature, seed in ((0.0, None), (1.0, 0), (1.0, 1)):
        for r in engine.generate_batch(PROMPTS, constraint=constraint, temperature=temperature, seed=seed):
            assert r.finish_reason == "stop", (r.text, r.finish_reason)
            _valid(r.text, schema)


OVERLAPPING = {
    "integer and number": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
    "objects without a tag": {
        "type": "object",
        "properties": {"p": {"oneOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"b": {}}}]}},
    },
    "a shared enum value": {"oneOf": [{"enum": [1, 2]}, {"const": 2.0}]},
    "a tag neither requires": {
        "oneOf": [{"properties": {"k": {"const": 1}}}, {"properties": {"k": {"const": 2}}}],
    },
}


@pytest.mark.parametrize("name", list(OVERLAPPING))
def test_a_one_of_the_grammar_cannot_enforce_is_refused_where_it_is(name) -> None:
    with pytest.raises(ConfigError, match=r"oneOf \(at #(/properties/p)?/oneOf\).*may overlap.*use anyOf"):
        Constraint.json_schema(OVERLAPPING[name])


def test_disjoint_branches_are_found_through_refs() -> None:
    schema = Pet.model_json_schema()
    assert "oneOf" in json.dumps(schema)
    assert "anyOf" in one_of_as_any_of(schema)["properties"]["pet"]
    assert one_of_as_any_of(schema)["$defs"] == schema["$defs"]


# ---- grammars without a sentence, and grammars that come to a dead end --------------------------------

EMPTY = {
    "left recursion only": Constraint.lark('start: start "a"\n'),
    "a rule that is itself": Constraint.lark("start: x\nx: x\n"),
    "a schema that is its own ref": Constraint.json_schema({"$ref": "#"}),
}


@pytest.mark.parametrize("name", list(EMPTY))
def test_a_grammar_without_a_sentence_is_refused_never_an_empty_success(engine, name) -> None:
    constraint = EMPTY[name]
    assert "language is empty" in (constraint.problem() or "")
    with pytest.raises(ConfigError, match="at least one sentence"):
        engine.generate(PROMPTS[0], constraint=constraint)


def test_a_grammar_that_comes_to_a_dead_end_is_a_constraint_error(engine) -> None:
    """Its first token is allowed, then nothing: never an incomplete output with finish_reason 'stop'."""
    constraint = Constraint.lark('start: "a" x\nx: x\n')
    assert constraint.problem() is None  # not found before the output begins
    with pytest.raises(ConstraintError, match="at step 1.*not a whole sentence"):
        engine.generate(PROMPTS[0], constraint=constraint)


def test_a_grammar_with_only_the_empty_sentence_is_no_error(engine) -> None:
    r = engine.generate(PROMPTS[0], constraint=Constraint.regex("(ab)?"))
    assert r.finish_reason == "stop" and r.text in ("", "ab")


# ---- strings that go round in a loop --------------------------------------------------------------------

FREE_STRING = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}


def test_a_looping_string_is_ended_where_the_loop_shows(engine) -> None:
    """Greedy random members loop inside an unbounded string: with the guard off the object is cut by
    max_new_tokens; with it on, the output is the same up to the second copy of the loop, then the string
    ends and the object validates."""
    constraint = Constraint.json_schema(FREE_STRING)
    off = engine.generate_batch(PROMPTS, constraint=constraint, json_string_repeats=0, max_new_tokens=150)
    on = engine.generate_batch(PROMPTS, constraint=constraint, max_new_tokens=150)
    assert sum(r.finish_reason == "length" for r in off) >= 2  # the failure the guard is for
    for cut, guarded in zip(off, on, strict=True):
        assert guarded.finish_reason == "stop", guarded.text
        _valid(guarded.text, FREE_STRING)
        if cut.finish_reason == "stop":
            assert guarded.text == cut.text
            continue
        head = guarded.text[: guarded.text.rindex('"')]  # up to the quote that ended the string
        assert cut.text.startswith(head)  # the same output until the string was ended
        guard = RepeatGuard(2, whole=True)
        guard.read(head)
        assert guard.looping  # ended where it ends in a loop


def test_the_repeat_guard_reads_json_strings_only() -> None:
    loop = "A cat is a cat, right? " * 2
    for text, whole, looping in [
        ('{"a": "' + loop, True, True),
        ('"' + loop, True, True),  # a string that is the whole output
        ('"' + loop, False, False),  # text before any JSON: not a string of it
        ("<tool_call>\n{" + '"name": "' + loop, False, True),
        ('{"a": "' + loop + '", "b": 1', True, False),  # the string ended
        ('{"a": "' + loop.replace("?", '\\"'), True, True),  # escaped quotes stay inside
        ('{"a": "' + "ha " * 7, True, False),  # shorter than MIN_REPEAT_SPAN
        ('{"a": "' + "!" * MIN_REPEAT_SPAN, True, True),
        ('{"a": "' + loop, True, True),
    ]:
        guard = RepeatGuard(2, whole=whole)
        for ch in text:  # piece by piece, as tokens come
            guard.read(ch)
        assert guard.looping is looping, text
    three = RepeatGuard(3, whole=True)
    three.read('"' + loop)
    assert not three.looping


@pytest.mark.parametrize("bad", [1, -1, "2", 2.0])
def test_bad_json_string_repeats(bad) -> None:
    with pytest.raises(ConfigError, match="json_string_repeats"):
        GenerationConfig(json_string_repeats=bad)


# ---- the command line: every bad schema or grammar is one line and exit code 2 ---------------------------


def _deep_text(levels: int) -> str:
    return '{"type": "object", "properties": {"a": ' * levels + "{}" + "}}" * levels


CLI_BAD = {
    "nested 400 deep": ("--json-schema", _deep_text(400), "at most 100 deep"),
    "nested 5000 deep": ("--json-schema", _deep_text(5000), "at most 100 deep"),
    "NaN": ("--json-schema", '{"type": "number", "maximum": NaN}', "finite"),
    "not JSON": ("--json-schema", "{type: object", "JSON Schema in JSON"),
    "unknown type": ("--json-schema", '{"type": "strnig"}', "strnig"),
    "overlapping oneOf": ("--json-schema", '{"oneOf": [{"type": "integer"}, {"type": "number"}]}', "oneOf"),
    "its own ref": ("--json-schema", '{"$ref": "#"}', "language is empty"),
    "lark syntax": ("--grammar", "start: /a/ /", "Lark grammar"),
    "lark unknown rule": ("--grammar", "start: x", "unknown name"),
    "lark left recursion only": ("--grammar", 'start: start "a"', "language is empty"),
    "lark nested 3000 deep": ("--grammar", "start: " + "(" * 3000 + '"a"' + ")" * 3000, "too deeply nested"),
    "regex": ("--regex", "[z-a]", "regular expression"),
    "regex nested 5000 deep": ("--regex", "(" * 5000 + ")" * 5000, "regular expression"),
}


@pytest.mark.parametrize("name", list(CLI_BAD))
def test_every_bad_schema_or_grammar_on_the_command_line_is_one_line(tmp_path, capsys, name) -> None:
    option, text, expected = CLI_BAD[name]
    value = text
    if option != "--regex":
        value = str(tmp_path / "given")
        Path(value).write_text(text)
    assert cli_main(["generate", "--quiet", "--model", "no-such-model", option, value, "Hello"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"packllm: error: {option}=") and len(err) < 1200, err
    assert expected in err


def test_a_missing_schema_file_is_one_line(tmp_path, capsys) -> None:
    for option in ("--json-schema", "--grammar"):
        assert cli_main(["generate", "--quiet", option, str(tmp_path / "none"), "Hello"]) == 2
        assert capsys.readouterr().err.startswith(f"packllm: error: {option}=")
