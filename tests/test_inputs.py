"""Inputs that used to be read wrongly, silently: each now works as meant or fails naming itself."""

from __future__ import annotations

import pytest

from packllm_integrations import ConfigError, GenerationConfig, Member, PackEngine
from packllm_integrations.host import load_engine
from packllm_integrations.loading import load_pack


@pytest.mark.parametrize("call", [load_pack, lambda s: PackEngine.from_models(s), lambda s: load_engine(s)])
def test_one_string_is_not_a_list_of_specs(call) -> None:
    with pytest.raises(ConfigError, match="models='smollm2-135m'"):
        call("smollm2-135m")


def test_an_empty_list_of_specs_is_not_the_default_pack() -> None:
    with pytest.raises(ConfigError, match="at least one member spec"):
        PackEngine.from_models([])
    with pytest.raises(ConfigError, match="at least one member spec"):
        load_engine([])


@pytest.mark.parametrize("seed", [2**64, -1, 1.5])
def test_seeds_out_of_range(seed) -> None:
    with pytest.raises(ConfigError, match="seed"):
        GenerationConfig(seed=seed)
    GenerationConfig(seed=2**64 - 1)


def test_a_dict_is_not_a_config(bl: Member) -> None:
    with pytest.raises(ConfigError, match="config='dict'"):
        PackEngine([bl], {"temperature": 0.5})  # type: ignore[arg-type]
    engine = PackEngine([bl])
    with pytest.raises(ConfigError, match="config='dict'"):
        engine.generate("The value", {"temperature": 0.5})  # type: ignore[arg-type]


def test_langchain_stop_string_is_one_stop_sequence(bl: Member) -> None:
    from packllm_integrations.langchain import ChatPackLLM, PackLLM

    engine = PackEngine([bl])
    prompt = "The function returns the value of the"
    text = engine.generate(prompt, max_new_tokens=16).text
    # a two-character stop whose second character occurs earlier on its own: split into
    # characters, it would cut the text there
    i = next(i for i in range(1, len(text) - 1) if text[i + 1] in text[:i] and text[i : i + 2] not in text[:i])
    stop = text[i : i + 2]
    llm = PackLLM(engine=engine, max_tokens=16)
    assert llm.invoke(prompt, stop=stop) == text[: text.index(stop)]
    chat = ChatPackLLM(engine=engine, max_tokens=16)
    reply = chat.invoke("Hi", stop=stop).content
    assert stop not in reply
