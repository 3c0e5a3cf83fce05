"""LangChain adapters: a fused pack wherever LangChain takes an LLM or a chat model.

- :class:`PackLLM`, a ``BaseLLM`` (text in, text out; batched ``batch``).
- :class:`ChatPackLLM`, a ``BaseChatModel`` (messages rendered by each member's chat template).

Both take member specs (``models=[...]``) or an already built engine (``engine=...``), so
one loaded pack can serve several models, and LlamaIndex too, from one copy of each member.
Needs ``langchain-core``.

Example:
    >>> from packllm_integrations.langchain import ChatPackLLM, PackLLM
    >>> llm = PackLLM(models=["smollm2-135m", "qwen2.5-coder-0.5b"], max_tokens=32)  # doctest: +SKIP
    >>> chat = ChatPackLLM(engine=llm.engine, max_tokens=32)  # doctest: +SKIP
"""

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("packllm_integrations.langchain needs LangChain: pip install langchain-core") from exc

from .chat_models import ChatPackLLM
from .llms import PackLLM

__all__ = ["ChatPackLLM", "PackLLM"]
