"""Member backends: one file per kind of member, behind :class:`MemberBackend`.

- :class:`TransformersMember` (:mod:`.transformers`): a Hugging Face causal LM in this process.
- :class:`~.llama_cpp.LlamaCppMember` (:mod:`.llama_cpp`): a GGUF file run by llama.cpp, as it is.
- :class:`~.remote.RemoteMember` (:mod:`.remote`): a model on an OpenAI-compatible server.

See :mod:`.base` for the interface a new backend implements. Each backend's library
(transformers, llama_cpp, httpx) is imported only when that backend is used.
"""

from typing import TYPE_CHECKING, Any

from .base import MemberBackend, Prefill, Scores, SparseScores, Tokenizer, dense

if TYPE_CHECKING:  # at run time through __getattr__ below
    from .transformers import Member, TransformersMember

__all__ = ["Member", "MemberBackend", "Prefill", "Scores", "SparseScores", "Tokenizer", "TransformersMember", "dense"]


def __getattr__(name: str) -> Any:
    if name in ("TransformersMember", "Member"):  # imports transformers: only when asked for
        from . import transformers

        return getattr(transformers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
