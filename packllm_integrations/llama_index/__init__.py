"""LlamaIndex adapter: a fused pack wherever LlamaIndex takes an LLM (``Settings.llm``, query engines).

:class:`PackLLM` takes member specs (``models=[...]``) or an already built engine
(``engine=...``), so one loaded pack can serve LlamaIndex and LangChain in one process.
Needs ``llama-index-core``.

Example:
    >>> from llama_index.core import Settings
    >>> from packllm_integrations.llama_index import PackLLM
    >>> Settings.llm = PackLLM(models=["smollm2-135m", "qwen2.5-coder-0.5b"], max_new_tokens=64)  # doctest: +SKIP
    >>> Settings.tokenizer = Settings.llm.tokenize  # doctest: +SKIP
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("packllm_integrations.llama_index needs LlamaIndex: pip install llama-index-core") from exc

from .base import PackLLM, to_chat_messages

__all__ = ["PackLLM", "to_chat_messages"]
