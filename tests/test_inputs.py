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


@pytest.mark.parametrize("prompts", [[""], ["fine", ""]])
def test_an_empty_prompt_is_a_prompt_error(bl: Member, prompts: list[str]) -> None:
    from packllm_integrations import PromptError

    engine = PackEngine([bl])
    with pytest.raises(PromptError, match="prompt"):
        engine.generate_batch(prompts, max_new_tokens=2)
    assert engine.score([("", "The value")])[0].tokens > 0  # an empty context is fine


def test_a_spec_reports_its_bad_option_not_its_missing_model() -> None:
    from packllm_integrations.loading import parse_spec

    with pytest.raises(ConfigError, match="dtype='int3'"):
        parse_spec(",dtype=int3")


def test_a_cuda_device_that_is_not_here(monkeypatch) -> None:
    import torch

    from packllm_integrations.loading import MemberSpec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device='cuda:0'"):
        MemberSpec("smollm2-135m", device="cuda:0")


def test_weights_that_overflow_when_normalised() -> None:
    with pytest.raises(ConfigError, match="weights"):
        GenerationConfig(weighting="fixed", weights=(1e308, 1e308))


def test_a_temperature_too_small_to_sample_with(bl: Member) -> None:
    engine = PackEngine([bl])
    with pytest.raises(ConfigError, match="temperature"):
        engine.generate("The value", max_new_tokens=2, temperature=1e-40, seed=0)


def test_unreadable_model_folders(tmp_path, tiny_folder) -> None:
    import shutil

    from packllm_integrations import ModelLoadError
    from packllm_integrations.loading import load_member

    empty = tmp_path / "empty-config"
    shutil.copytree(tiny_folder, empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="empty-config"):
        load_member(str(empty), progress=False)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_folder, pickled)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickled"):
        load_member(str(pickled), progress=False)


def test_lone_surrogates_and_invalid_utf8(bl: Member, tiny_folder_bl, capsysbinary, monkeypatch) -> None:
    import io
    import sys

    from packllm_integrations import PromptError
    from packllm_integrations.cli import main

    engine = PackEngine([bl])
    with pytest.raises(PromptError, match="surrogate"):
        engine.generate("caf\udce9", max_new_tokens=2)  # what invalid UTF-8 in argv becomes
    with pytest.raises(PromptError, match="surrogate"):
        engine.generate([{"role": "user", "content": "caf\udce9"}], max_new_tokens=2)
    assert main(["generate", "--quiet", "--model", str(tiny_folder_bl), "--max-new-tokens", "2", "caf\udce9"]) == 2
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait")))
    assert main(["generate", "--quiet", "--model", str(tiny_folder_bl), "--max-new-tokens", "2", "-"]) == 2
    assert b"UTF-8" in capsysbinary.readouterr().err
