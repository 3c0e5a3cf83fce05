"""Member backends: one file per kind of member, behind :class:`MemberBackend`.

- :class:`Member` (:mod:`.transformers`): a Hugging Face causal LM in this process.

See :mod:`.base` for the interface a new backend implements.
"""

from .base import MemberBackend, Prefill, Scores, SparseScores, Tokenizer, dense
from .transformers import Member

__all__ = ["Member", "MemberBackend", "Prefill", "Scores", "SparseScores", "Tokenizer", "dense"]
