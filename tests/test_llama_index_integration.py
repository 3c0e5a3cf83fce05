"""The LlamaIndex adapter on a real small pack, in a VectorStoreIndex with a real local embedding model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.llms import ChatMessage

from packllm_integrations.llama_index import PackLLM
from tests.test_adapters_common import embedding_model_folder, real_engine

pytestmark = pytest.mark.integration

DOCUMENTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 "
    "for the World's Fair and is 330 metres tall.",
    "Python's list type is a mutable sequence. Tuples are immutable sequences, so they can be "
    "used as dictionary keys when their items are hashable.",
    "The Great Wall of China is a series of fortifications built across northern China over "
    "many centuries; most of the existing wall dates from the Ming dynasty.",
]


@pytest.fixture(scope="module")
def llm() -> PackLLM:
    return PackLLM(engine=real_engine(), max_new_tokens=12)


@pytest.fixture
def debug() -> LlamaDebugHandler:
    return LlamaDebugHandler(print_trace_on_end=False)


@pytest.fixture
def settings(llm: PackLLM, debug: LlamaDebugHandler, monkeypatch: pytest.MonkeyPatch) -> Iterator[PackLLM]:
    """The pack as ``Settings.llm`` (and its tokenizer), the bundled MiniLM as ``Settings.embed_model``."""
    import llama_index.core

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    saved = (Settings._llm, Settings._embed_model, llama_index.core.global_tokenizer, Settings._callback_manager)
    Settings.callback_manager = CallbackManager([debug])
    Settings.llm = llm
    Settings.tokenizer = llm.tokenize
    Settings.embed_model = HuggingFaceEmbedding(model_name=str(embedding_model_folder()), device="cpu")
    try:
        yield llm
    finally:
        (Settings._llm, Settings._embed_model, llama_index.core.global_tokenizer, Settings._callback_manager) = saved


def test_vector_store_index_query_with_and_without_streaming(settings, debug):
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS])
    question = "When was the Eiffel Tower completed?"
    response = index.as_query_engine(similarity_top_k=1).query(question)
    assert response.response.strip()
    assert "1889" in response.source_nodes[0].node.get_content()
    streaming = index.as_query_engine(similarity_top_k=1, streaming=True).query(question)
    pieces = list(streaming.response_gen)
    assert len(pieces) > 1
    assert "".join(pieces) == response.response  # greedy: streaming gives the same answer
    assert len(debug.get_event_pairs(CBEventType.LLM)) == 2


def test_metadata_is_the_packs(llm):
    meta = llm.metadata
    assert meta.context_window == 8192  # SmolLM2's window, the smaller of the two
    assert meta.num_output == 12
    assert meta.is_chat_model is True  # both members ship a chat template


def test_chat_and_async_chat_agree(llm):
    messages = [ChatMessage(role="user", content="Name a prime number.")]
    reply = llm.chat(messages)
    assert reply.message.content.strip()
    assert set(reply.additional_kwargs["weights"]) == {"smollm2-135m", "qwen2.5-coder-0.5b"}
    assert asyncio.run(llm.achat(messages)).message.content == reply.message.content
