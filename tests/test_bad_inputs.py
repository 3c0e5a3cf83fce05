"""Bad inputs through every front end: the engine, ``packllm generate``, LangChain (``PackLLM``,
``ChatPackLLM``) and LlamaIndex (``PackLLM``).

Each must fail with a typed error that names the parameter, as that front end spells it
(LangChain's ``max_tokens``), and shows the value; the command line exits with code 2. The
settings' bad values are derived from the host layer's table (``host.SETTINGS``: types and
bounds), so a setting added there is covered here without a new line (and must be a
``packllm generate`` option); what no type or bound describes is listed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from packllm_integrations import ConfigError, PackEngine, PromptError
from packllm_integrations.cli import build_parser, main
from packllm_integrations.host import SETTINGS, Setting
from packllm_integrations.langchain import ChatPackLLM
from packllm_integrations.langchain import PackLLM as LangChainLLM
from packllm_integrations.llama_index import PackLLM as LlamaIndexLLM
from tests import tiny


@dataclass(frozen=True)
class Bad:
    """A bad value of one setting (engine name); ``at_run``: found only when a token is sampled."""

    setting: str
    value: Any
    at_run: bool = False

    def __str__(self) -> str:
        return f"{self.setting}={self.value!r}"


def derived(s: Setting) -> list[Bad]:
    """Bad values of a setting read from its row: just past each bound, the wrong type, an unknown name."""
    out = []
    if s.ge is not None:
        out.append(Bad(s.name, s.type(s.ge - 1)))
    if s.gt is not None:
        out.append(Bad(s.name, s.type(s.gt)))
    if s.le is not None:
        out.append(Bad(s.name, s.type(s.le + 0.5)))
    if s.type in (int, float):
        out.append(Bad(s.name, "many"))
    elif s.type is str:
        out.append(Bad(s.name, "no-such-choice"))
    elif s.type == list[str]:
        out.append(Bad(s.name, [""]))
    elif s.type == list[float]:
        out.append(Bad(s.name, [-1.0, 1.0]))
    return out


BY_HAND = [
    Bad("seed", 2**64),
    Bad("seed", -1),
    Bad("weights", [1e308, 1e308]),  # their sum overflows when they are renormalised
    Bad("weights", [1.0]),  # one weight for a pack of two
    Bad("temperature", 1e-40, at_run=True),  # logits / temperature overflow: sampling underflows
]
ROWS = [bad for s in SETTINGS for bad in derived(s)] + BY_HAND
AT_CONFIG = [bad for bad in ROWS if not bad.at_run]
HOST_NAMES = {"langchain": {s.name: s.host_name("langchain") for s in SETTINGS}}
HOST_NAMES["llama_index"] = {s.name: s.host_name("llama_index") for s in SETTINGS}
PROMPT = "The value of"
BAD_PROMPTS = [pytest.param("", id="empty"), pytest.param("caf\udce9", id="lone-surrogate")]


@pytest.fixture(scope="module")
def engine() -> PackEngine:
    return PackEngine([tiny.bytelevel_member(), tiny.sentencepiece_member()], progress=False, max_new_tokens=2)


def _names(error: BaseException, name: str, value: Any) -> None:
    """``error`` is typed, names ``name`` as its parameter and shows ``value``."""
    assert isinstance(error, ConfigError), repr(error)
    assert error.parameter == name, str(error)
    as_list = list if isinstance(value, list) else (lambda v: v)  # hosts pass lists on as tuples
    assert as_list(error.value) == value or repr(value)[:20] in str(error), str(error)


def _names_field(error: ValidationError, host: str, bad: Bad) -> None:
    """A pydantic error at construction names the host's field (and never the engine's other name)."""
    name = HOST_NAMES[host][bad.setting]
    text = str(error)
    assert name in text, text
    if name != bad.setting:
        assert bad.setting not in text, text


# ---- the table covers every setting ----------------------------------------------------------


def test_every_setting_has_bad_values() -> None:
    assert {s.name for s in SETTINGS} == {bad.setting for s in SETTINGS for bad in derived(s)}


def test_every_setting_is_a_generate_option() -> None:
    (generate,) = [a for a in build_parser()._subparsers._group_actions if "generate" in a.choices]
    options = {o for action in generate.choices["generate"]._actions for o in action.option_strings}
    assert {"--" + s.name.replace("_", "-") for s in SETTINGS} <= options


# ---- the engine ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ROWS, ids=str)
def test_engine_call(engine: PackEngine, bad: Bad) -> None:
    with pytest.raises(ConfigError) as info:
        engine.generate(PROMPT, **{bad.setting: bad.value})
    _names(info.value, bad.setting, bad.value)


@pytest.mark.parametrize("bad", AT_CONFIG, ids=str)
def test_engine_construction(engine: PackEngine, bad: Bad) -> None:
    with pytest.raises(ConfigError) as info:
        PackEngine(engine.members, progress=False, **{bad.setting: bad.value})
    _names(info.value, bad.setting, bad.value)


@pytest.mark.parametrize("prompt", BAD_PROMPTS)
def test_engine_prompts(engine: PackEngine, prompt: str) -> None:
    with pytest.raises(PromptError, match="prompt"):
        engine.generate(prompt)
    with pytest.raises(PromptError, match=r"prompts\[1\]"):
        engine.generate_batch(["fine", prompt])


@pytest.mark.parametrize(
    "models, name",
    [("smollm2-135m", "models"), ([], "models"), ([",dtype=int3"], "dtype"), (["tiny,device=cuda:99"], "device")],
    ids=["one-string", "empty-list", "bad-dtype", "absent-device"],
)
def test_engine_specs(models: Any, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        PackEngine.from_models(models, progress=False)
    assert info.value.parameter == name


@pytest.mark.parametrize("limit, value", [("timeout", 0), ("timeout", -1.0), ("config", {"temperature": 0.5})])
def test_engine_limits_and_config(engine: PackEngine, limit: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"{limit}="):
        engine.generate(PROMPT, **{limit: value})


# ---- packllm generate -------------------------------------------------------------------------


def _cli_options(bad: Bad) -> list[str]:
    flag = "--" + bad.setting.replace("_", "-")
    if bad.setting == "weights":
        return [f"{flag}={','.join(str(w) for w in bad.value)}"]
    values = bad.value if isinstance(bad.value, list) else [bad.value]
    return [f"{flag}={v}" for v in values]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(["generate", "--quiet", *argv])
    except SystemExit as exit:  # argparse's own errors (a wrong type, an unknown choice)
        code = exit.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("bad", ROWS, ids=str)
def test_cli_options(capsys, tiny_pack_folders: list[str], bad: Bad) -> None:
    models = [f"--model={m}" for m in tiny_pack_folders]
    code, err = _cli(capsys, *models, "--max-new-tokens=2", *_cli_options(bad), PROMPT)
    flag = "--" + bad.setting.replace("_", "-")
    assert code == 2 and (f"{bad.setting}=" in err or flag in err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("prompt", BAD_PROMPTS)
def test_cli_prompts(capsys, tiny_pack_folders: list[str], prompt: str) -> None:
    code, err = _cli(capsys, f"--model={tiny_pack_folders[0]}", "--max-new-tokens=2", prompt)
    assert code == 2 and "prompt" in err and err.startswith("packllm: error:"), err


@pytest.mark.parametrize(
    "spec, name", [(",dtype=int3", "dtype"), ("{},device=cuda:99", "device"), ("{},colour=red", "model")]
)
def test_cli_specs(capsys, tiny_pack_folders: list[str], spec: str, name: str) -> None:
    code, err = _cli(capsys, f"--model={spec.format(tiny_pack_folders[0])}", PROMPT)
    assert code == 2 and f"{name}=" in err, err


# ---- LangChain and LlamaIndex ------------------------------------------------------------------

ADAPTERS = [
    pytest.param(LangChainLLM, "langchain", id="langchain-llm"),
    pytest.param(ChatPackLLM, "langchain", id="langchain-chat"),
    pytest.param(LlamaIndexLLM, "llama_index", id="llama-index"),
]


def _invoke(model: Any, prompt: str, **kwargs: Any) -> Any:
    if isinstance(model, LlamaIndexLLM):
        return model.complete(prompt, **kwargs)
    return model.invoke(prompt, **kwargs)


@pytest.mark.parametrize("adapter, host", ADAPTERS)
@pytest.mark.parametrize("bad", ROWS, ids=str)
def test_adapter_call(engine: PackEngine, adapter: type, host: str, bad: Bad) -> None:
    name = HOST_NAMES[host][bad.setting]
    model = adapter(engine=engine)
    with pytest.raises(ConfigError) as info:
        _invoke(model, PROMPT, **{name: bad.value})
    _names(info.value, name, bad.value)


@pytest.mark.parametrize("adapter, host", ADAPTERS)
@pytest.mark.parametrize("bad", AT_CONFIG, ids=str)
def test_adapter_construction(engine: PackEngine, adapter: type, host: str, bad: Bad) -> None:
    with pytest.raises(ValidationError) as info:
        adapter(engine=engine, **{HOST_NAMES[host][bad.setting]: bad.value})
    _names_field(info.value, host, bad)


@pytest.mark.parametrize("adapter, host", ADAPTERS)
@pytest.mark.parametrize("prompt", BAD_PROMPTS)
def test_adapter_prompts(engine: PackEngine, adapter: type, host: str, prompt: str) -> None:
    if adapter is ChatPackLLM and not prompt:
        pytest.skip("an empty chat message is a valid conversation (each template renders text around it)")
    with pytest.raises(PromptError, match="prompt"):
        _invoke(adapter(engine=engine), prompt)


@pytest.mark.parametrize("adapter, host", ADAPTERS)
@pytest.mark.parametrize(
    "field, value, shown",
    [
        ("models", "smollm2-135m", "models='smollm2-135m'"),
        ("models", [], "models=[]"),
        ("models", [",dtype=int3"], "dtype='int3'"),
        ("models", ["tiny,device=cuda:99"], "device='cuda:99'"),
        ("timeout", 0, "timeout"),
        ("max_retries", -1, "max_retries"),
    ],
)
def test_adapter_pack_and_limits(adapter: type, host: str, field: str, value: Any, shown: str) -> None:
    with pytest.raises(ValidationError, match=shown.replace("[", r"\[").replace("]", r"\]")):
        adapter(**{field: value})


@pytest.mark.parametrize("adapter, host", ADAPTERS)
def test_a_stop_string_is_one_stop_sequence(engine: PackEngine, adapter: type, host: str) -> None:
    """``stop="xy"`` (the field or the call's) stops at "xy", never at "x" or "y" alone."""
    full = _text(_invoke(adapter(engine=engine, **{HOST_NAMES[host]["max_new_tokens"]: 12}), "Hi"))
    # two characters that occur in the text only apart from each other, never together
    stop = next(a + b for a in full for b in full if a + b not in full and a.strip() and b.strip())
    for model, kwargs in [
        (adapter(engine=engine, stop=stop, **{HOST_NAMES[host]["max_new_tokens"]: 12}), {}),
        (adapter(engine=engine, **{HOST_NAMES[host]["max_new_tokens"]: 12}), {"stop": stop}),
    ]:
        assert _text(_invoke(model, "Hi", **kwargs)) == full
        assert model.stop is None or model.stop == [stop]


def _text(reply: Any) -> str:
    return reply.content if hasattr(reply, "content") else getattr(reply, "text", reply)
