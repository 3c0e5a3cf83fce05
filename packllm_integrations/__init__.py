"""PackLLM test-time fusion of causal language models.

The engine (:class:`PackEngine`) is framework-free; adapters for LangChain and LlamaIndex
live in :mod:`packllm_integrations.langchain` and :mod:`packllm_integrations.llama_index`.

Example:
    >>> from packllm_integrations import PackEngine
    >>> engine = PackEngine.from_models()  # the default pack  # doctest: +SKIP
    >>> print(engine.generate("def fibonacci(n):", max_new_tokens=48).text)  # doctest: +SKIP
"""

from typing import TYPE_CHECKING, Any

from .backends import MemberBackend, SparseScores
from .config import GenerationConfig
from .engine import PackEngine, Prompt
from .errors import (
    BackendError,
    ConfigError,
    ConstraintError,
    GenerationTimeoutError,
    MemberError,
    ModelLoadError,
    ModelNotFoundError,
    PackLLMError,
    PromptError,
    PromptTooLongError,
)
from .events import FinishEvent, GenerationResult, ScoreResult, TextEvent, Usage, WeightsEvent
from .loading import CATALOG, DEFAULT_PACK, MemberSpec, load_member, load_pack
from .structured.constraints import Constraint
from .structured.tools import Conversation, InvalidCall, Tool, ToolCall

if TYPE_CHECKING:  # at run time through __getattr__ below, so that transformers loads only when used
    from .backends.transformers import Member, TransformersMember

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CATALOG",
    "DEFAULT_PACK",
    "ConfigError",
    "Constraint",
    "ConstraintError",
    "Conversation",
    "FinishEvent",
    "GenerationConfig",
    "GenerationResult",
    "GenerationTimeoutError",
    "InvalidCall",
    "Member",
    "MemberBackend",
    "MemberError",
    "MemberSpec",
    "ModelLoadError",
    "ModelNotFoundError",
    "PackEngine",
    "PackLLMError",
    "Prompt",
    "PromptError",
    "PromptTooLongError",
    "ScoreResult",
    "SparseScores",
    "TextEvent",
    "Tool",
    "ToolCall",
    "TransformersMember",
    "Usage",
    "WeightsEvent",
    "load_member",
    "load_pack",
]


def __getattr__(name: str) -> Any:
    if name in ("TransformersMember", "Member"):  # the transformers backend imports transformers: only when used
        from . import backends

        return getattr(backends, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
