"""The host layer (`packllm_integrations.host`) on tiny in-memory members, with no framework."""

from __future__ import annotations

import doctest
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from packllm_integrations import (
    ConfigError,
    FinishEvent,
    GenerationConfig,
    ModelNotFoundError,
    PackEngine,
    PromptError,
    TextEvent,
)
from packllm_integrations.host import (
    SETTINGS,
    Runner,
    acollect_results,
    check_settings,
    engine_settings,
    host_names,
    load_engine,
    merge_messages,
    pack_model,
    parse_weights,
    resolve_call,
    result_metadata,
    usage_dict,
    weights_metadata,
)
from packllm_integrations.host import fields as host_fields
from packllm_integrations.host import settings as host_settings
from packllm_integrations.host import translate as host_translate
from tests.test_adapters_common import OutOfMemoryOnce, tiny_engine

PROMPTS = ["The default value of a keyword argument", "def f(x):"]


@pytest.fixture(scope="module")
def engine() -> PackEngine:
    return tiny_engine()


# ---- the settings table ---------------------------------------------------------------------


def test_the_table_has_every_engine_setting_in_order():
    per_request = {"constraint"}  # a request's own (a call's structured output), not a field of a host's model
    assert [s.name for s in SETTINGS] == [f.name for f in fields(GenerationConfig) if f.name not in per_request]
    assert all(s.doc.strip() and s.doc.endswith(".") for s in SETTINGS)


def test_host_names():
    langchain, llama_index = host_names("langchain"), host_names("llama_index")
    assert langchain["max_tokens"] == "max_new_tokens" and "max_new_tokens" not in langchain
    assert all(k == v for k, v in llama_index.items())
    assert list(langchain.values()) == list(llama_index.values()) == [s.name for s in SETTINGS]
    with pytest.raises(ConfigError, match="host='haystack'"):
        host_names("haystack")


def _accepted_by_engine(name: str, value: float) -> bool:
    try:
        GenerationConfig(**{name: value})
    except ConfigError:
        return False
    return True


def _accepted_by_host(engine: PackEngine, name: str, value: float) -> bool:
    try:
        pack_model("llama_index")(engine=engine, **{name: value})
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.bounds], ids=lambda s: s.name)
def test_bounds_agree_with_the_engines_checks(engine, setting):
    step = 1 if setting.type is int else 1e-9
    probes = {v + d for v in setting.bounds.values() for d in (-step, 0, step)}
    for value in sorted(setting.type(p) for p in probes):
        assert _accepted_by_host(engine, setting.name, value) == _accepted_by_engine(setting.name, value), value


def test_generated_fields_names_defaults_docs_and_schema():
    model = pack_model("langchain")
    assert model is pack_model("langchain") and model.host == "langchain"
    names = ["models", "engine", *host_names("langchain"), "timeout", "max_retries"]
    assert list(model.model_fields) == names
    schema = model.model_json_schema()["properties"]
    for setting in SETTINGS:
        name = setting.host_name("langchain")
        assert model.model_fields[name].default is None
        assert model.model_fields[name].description == f"{setting.doc} None: the engine's default."
        assert schema[name]["description"] == model.model_fields[name].description
    assert schema["top_p"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    assert schema["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1}
    assert model.model_fields["max_retries"].default == 2 and model.model_fields["timeout"].default is None
    assert "engine" not in schema and model.model_fields["engine"].exclude  # an object, not data


def test_bound_errors_use_the_engines_words_under_the_hosts_name(engine):
    with pytest.raises(ValidationError, match=r"max_tokens=0 is invalid: expected an integer >= 1"):
        pack_model("langchain")(engine=engine, max_tokens=0)
    with pytest.raises(ValidationError, match=r"temperature=-1.0 is invalid: expected a number >= 0"):
        pack_model("langchain")(engine=engine, temperature=-1)
    with pytest.raises(ValidationError, match=r"top_p=1.5 is invalid: expected a number in \(0, 1\]"):
        pack_model("llama_index")(engine=engine, top_p=1.5)
    with pytest.raises(ValidationError, match="valid number"):  # not a bound: pydantic's own message
        pack_model("llama_index")(engine=engine, top_p="x")
    with pytest.raises(ValidationError, match="Extra inputs"):
        pack_model("llama_index")(engine=engine, max_tokens=3)


def test_a_model_sets_up_its_pack_and_keeps_its_settings(engine):
    model = pack_model("langchain")(engine=engine, max_tokens=5, weights=[3, 1], stop=["\n"])
    assert model.pack is engine and model.model_name == "packllm:tiny-bytelevel+tiny-sentencepiece"
    assert model._own_settings() == {"max_new_tokens": 5, "weights": (3.0, 1.0), "stop": ("\n",)}
    config = model._resolve()
    assert (config.max_new_tokens, config.weighting, config.stop) == (5, "fixed", ("\n",))


# ---- call settings ---------------------------------------------------------------------------


def test_resolve_call_layers_engine_then_model_then_call(bl, sp):
    engine = PackEngine([bl, sp], progress=False, weighting="uniform", max_new_tokens=16, tau=2.0)
    own = {"max_new_tokens": 5, "temperature": 0.5, "stop": ("a",)}
    config = resolve_call(engine, "langchain", own, {"max_tokens": 3, "stop": ["x", "y"]})
    assert (config.max_new_tokens, config.temperature, config.stop) == (3, 0.5, ("x", "y"))
    assert (config.weighting, config.tau) == ("uniform", 2.0)  # the engine's, kept
    assert resolve_call(engine, "llama_index", own, {}).max_new_tokens == 5
    assert resolve_call(engine, "llama_index", {}, {"weights": [1, 3]}).weights == (1.0, 3.0)


def test_engine_settings_rename_convert_and_drop_unset():
    values = {"max_tokens": 8, "weights": [1, 3], "stop": ["\n"], "seed": None}
    assert engine_settings("langchain", values) == {"max_new_tokens": 8, "weights": (1, 3), "stop": ("\n",)}
    assert engine_settings("llama_index", {"max_new_tokens": 8}) == {"max_new_tokens": 8}
    with pytest.raises(ConfigError, match="max_new_tokens=8"):
        engine_settings("langchain", {"max_new_tokens": 8})


def test_resolve_call_rejects_unknown_names_and_other_models(engine):
    with pytest.raises(ConfigError, match=r"max_new_tokens=3 is invalid: expected a generation setting \(max_tokens"):
        resolve_call(engine, "langchain", {}, {"max_new_tokens": 3})
    with pytest.raises(ConfigError, match="max_tokens=3"):
        resolve_call(engine, "llama_index", {}, {"max_tokens": 3})
    with pytest.raises(ConfigError, match="model='other'.*cannot switch members"):
        resolve_call(engine, "langchain", {}, {"model": "other"}, model_name="packllm:a+b")
    assert resolve_call(engine, "langchain", {}, {"model": "packllm:a+b"}, model_name="packllm:a+b") == engine.config
    with pytest.raises(ConfigError, match="model='packllm:a"):  # without a name to match, model is no setting
        resolve_call(engine, "langchain", {}, {"model": "packllm:a+b"})
    with pytest.raises(ConfigError, match="top_p=2"):
        resolve_call(engine, "langchain", {}, {"top_p": 2})
    with pytest.raises(ConfigError, match="2 numbers, one per member"):
        resolve_call(engine, "langchain", {}, {"weights": [1, 2, 3]})


def test_check_settings_and_parse_weights():
    assert check_settings({"weights": [1, 3], "tau": None}).weights == (1.0, 3.0)
    with pytest.raises(ConfigError, match="tau=0"):
        check_settings({"tau": 0})
    assert parse_weights("0.7,0.3") == (0.7, 0.3)
    assert parse_weights("1:3", separator=":") == (1.0, 3.0)
    with pytest.raises(ConfigError, match=r"weights='a,b' is invalid: expected comma-separated numbers, e\.g\. 0\.7,"):
        parse_weights("a,b")
    with pytest.raises(ConfigError, match=r"fixed='1,' is invalid"):
        parse_weights("1,", parameter="fixed")
    with pytest.raises(ConfigError, match=r"weights='1:x' is invalid: expected numbers joined with ':'"):
        parse_weights("1:x", separator=":")


# ---- loading ------------------------------------------------------------------------------------


def test_load_engine_checks_settings_and_specs_before_loading():
    with pytest.raises(ConfigError, match="top_p=1.5"):
        load_engine(["no-such-model"], settings={"top_p": 1.5})
    with pytest.raises(ConfigError, match="model="):  # the second spec is malformed: nothing loads
        load_engine(["no-such-model", "tiny,colour=red"])
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load_engine(["no-such-model"], settings={"top_p": 0.5})


def test_load_engine_takes_an_engine_and_checks_it(engine):
    assert load_engine(engine=engine, settings={"reference": engine.names[1]}) is engine
    with pytest.raises(ConfigError, match="either models or engine"):
        load_engine(["smollm2-135m"], engine)
    with pytest.raises(ConfigError, match="engine='str' is invalid: expected a PackEngine"):
        load_engine(engine="engine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="2 numbers, one per member"):
        load_engine(engine=engine, settings={"weights": (1.0, 2.0, 3.0)})


def test_load_engine_loads_specs(tiny_folder: Path):
    loaded = load_engine([f"{tiny_folder},name=solo"], settings={"reference": "solo"}, progress=False)
    assert loaded.names == ["solo"] and loaded.progress is False
    with pytest.raises(ConfigError, match="reference='other'"):  # checked against the loaded members
        load_engine([str(tiny_folder)], settings={"reference": "other"}, progress=False)


# ---- runners --------------------------------------------------------------------------------------


def _texts(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextEvent))


def test_runner_events_are_the_engines_events(engine):
    events = list(Runner(engine, timeout=600, max_retries=2).events(PROMPTS[:1], engine.config))
    assert _texts(events) == engine.generate(PROMPTS[0]).text
    assert isinstance(events[-1], FinishEvent)
    assert [r.text for r in Runner(engine).results(PROMPTS, engine.config)] == [
        r.text for r in engine.generate_batch(PROMPTS)
    ]


def test_runner_checks_its_limits_and_prompts_at_the_call(engine):
    for bad in ({"timeout": 0}, {"timeout": float("nan")}, {"timeout": "5"}, {"max_retries": -1}, {"max_retries": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Runner(engine, **bad)
    with pytest.raises(PromptError, match="prompts"):
        Runner(engine).events([123], engine.config)  # type: ignore[list-item]


def test_runner_timeout(engine):
    events = Runner(engine, timeout=1e-6).events(PROMPTS[:1], engine.config)
    with pytest.raises(TimeoutError, match=r"timeout=1e-06 s"):
        list(events)


def test_out_of_memory_before_any_output_is_retried(engine, monkeypatch):
    monkeypatch.setattr("packllm_integrations.host.running.BACKOFF_S", 0.0)
    expected = engine.generate(PROMPTS[0]).text
    with OutOfMemoryOnce(engine.members[1].model) as fault:
        assert _texts(Runner(engine, max_retries=1).events(PROMPTS[:1], engine.config)) == expected
    assert fault.failures == 1
    with OutOfMemoryOnce(engine.members[1].model) as fault, pytest.raises(torch.OutOfMemoryError):
        list(Runner(engine, max_retries=0).events(PROMPTS[:1], engine.config))


@pytest.mark.parametrize("restart", [False, True])
def test_out_of_memory_after_output_is_retried_only_when_asked(engine, monkeypatch, restart):
    monkeypatch.setattr("packllm_integrations.host.running.BACKOFF_S", 0.0)
    expected = engine.generate(PROMPTS[0])
    with OutOfMemoryOnce(engine.members[0].model, armed=False) as fault:
        events = Runner(engine, max_retries=2).events(PROMPTS[:1], engine.config, restart_after_output=restart)
        next(events)
        fault.arm()
        if restart:
            finished = [e for e in events if isinstance(e, FinishEvent)]
            assert [e.result.text for e in finished] == [expected.text]
        else:
            with pytest.raises(torch.OutOfMemoryError):
                list(events)
    assert fault.failures == 1


async def test_async_runner_matches_the_sync_one(engine):
    expected = [r.text for r in Runner(engine).results(PROMPTS, engine.config)]
    assert [r.text for r in await Runner(engine).aresults(PROMPTS, engine.config)] == expected
    events = [e async for e in Runner(engine).aevents(PROMPTS[:1], engine.config)]
    assert _texts(events) == expected[0]
    with pytest.raises(TimeoutError):
        await Runner(engine, timeout=1e-6).aresults(PROMPTS, engine.config)


async def test_acollect_results_names_missing_prompts(engine):
    with pytest.raises(RuntimeError, match=r"without a result for prompts \[1\]"):
        await acollect_results(Runner(engine).aevents(PROMPTS[:1], engine.config), 2)


# ---- results and messages ----------------------------------------------------------------------------


def test_result_metadata(engine):
    result = engine.generate(PROMPTS[0])
    info = result_metadata(result)
    assert list(info) == ["finish_reason", "weights", "prompt_perplexity", "reference", "usage"]
    assert info["weights"] == result.weights and info["weights"] is not result.weights
    assert info["usage"] == {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.total_tokens,
    }
    assert list(result_metadata(result, usage_key="token_usage"))[-1] == "token_usage"
    assert result.to_dict() == {"text": result.text, **result_metadata(result)}
    weights = engine.weights(PROMPTS[0])
    assert weights_metadata(weights) == {
        "weights": weights.weights,
        "prompt_perplexity": weights.prompt_perplexity,
        "reference": weights.reference,
    }
    two = engine.generate_batch(PROMPTS)
    assert usage_dict(*(r.usage for r in two))["total_tokens"] == sum(r.usage.total_tokens for r in two)
    assert usage_dict() == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_merge_messages():
    pairs = [("system", "a"), ("system", "b"), ("user", "c"), ("assistant", "d"), ("assistant", "")]
    assert merge_messages(pairs) == [
        {"role": "system", "content": "a\n\nb"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d\n\n"},
    ]
    assert merge_messages(iter([("user", "x")])) == [{"role": "user", "content": "x"}]
    with pytest.raises(PromptError, match="at least one message"):
        merge_messages([])


@pytest.mark.parametrize("module", [host_settings, host_fields, host_translate], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    outcome = doctest.testmod(module)
    assert outcome.attempted > 0 and outcome.failed == 0
