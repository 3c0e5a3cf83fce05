"""Constrained decoding on the bundled models: all three reference vocabularies, both backends."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from packllm_integrations import Constraint, PackEngine, TextEvent, load_member
from tests.integration.models import need

pytestmark = pytest.mark.integration
pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
    "required": ["city", "country"],
}
PROMPTS = [
    "Extract the city and its country as JSON.\nText: Paris is the capital of France.\nJSON: ",
    "Extract the city and its country as JSON.\nText: We flew to Tokyo, Japan, in May.\nJSON: ",
]


@pytest.fixture(scope="module")
def pack() -> PackEngine:
    need("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")
    members = [load_member(n, progress=False) for n in ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")]
    return PackEngine(members, progress=False, max_new_tokens=40)


# Each member's vocabulary as the reference; the automatic choice (one of these) runs in the stream test below.
@pytest.mark.parametrize("reference", ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"])
def test_the_default_pack_writes_valid_json_with_any_reference(pack, reference) -> None:
    results = pack.generate_batch(PROMPTS, constraint=Constraint.json_schema(SCHEMA), reference=reference)
    for r in results:
        assert r.finish_reason == "stop", r.text
        jsonschema.validate(json.loads(r.text), SCHEMA)
    values = [json.loads(r.text) for r in results]
    assert values[0]["city"] == "Paris" and values[1]["city"] == "Tokyo"  # the pack reads the texts


def test_a_stream_and_a_regex_on_the_default_pack(pack) -> None:
    constraint = Constraint.regex(r"[0-9]{4}")
    pieces = [
        e.text
        for e in pack.stream("The Berlin Wall fell in the year", constraint=constraint)
        if isinstance(e, TextEvent)
    ]
    assert re.fullmatch(r"[0-9]{4}", "".join(pieces))


def test_a_llama_cpp_member_under_a_constraint() -> None:
    need("qwen2.5-coder-0.5b")
    pytest.importorskip("llama_cpp")
    engine = PackEngine([load_member("qwen2.5-coder-0.5b,backend=llama.cpp", progress=False)], progress=False)
    result = engine.generate(PROMPTS[0], constraint=Constraint.json_schema(SCHEMA), max_new_tokens=40)
    assert result.finish_reason == "stop" and json.loads(result.text)["country"] == "France"
