"""Constrained decoding on the tiny random models: what comes out always parses and validates.

Random models are the hard case: they put no mass where a grammar wants it, so every
valid token comes from the mask. Each output with ``finish_reason="stop"`` must validate
against its schema; the schemas bound their strings and arrays so that a random walk ends.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum

import jsonschema
import pytest
from pydantic import BaseModel, Field

from packllm_integrations import ConfigError, Constraint, PackEngine, TextEvent
from packllm_integrations.cli import main as cli_main

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
