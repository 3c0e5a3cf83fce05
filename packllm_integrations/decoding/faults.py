"""Members that fail during a request: finding bad scores, dropping a member from a prompt.

A member fails when its backend raises or when its scores are not numbers the fusion can
use (NaN, +inf, or nothing finite at all). What happens then is the request's
``on_member_error``: ``"raise"`` stops it with a :class:`~..errors.MemberError` (naming the
member and the step, carrying the text so far), ``"drop"`` takes the member out of the
prompts it failed on and renormalises the others' weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from ..backends.base import Scores, SparseScores
from ..errors import BackendError, MemberError, PackLLMError

__all__ = ["bad_rows", "without_member", "non_finite_members", "prompt_fault", "prefill_faults", "NOT_FINITE_NLL"]

NOT_FINITE_NLL = "its prompt perplexity is not a finite number (NaN or infinite scores)"


def bad_rows(scores: Scores) -> list[int]:
    """The rows of next-token scores [B, W] that hold a NaN or +inf, or no finite value.

    -inf alone is fine (a token ruled out, or padding past a narrower vocabulary).

    >>> bad_rows(torch.tensor([[0.0, -math.inf], [math.nan, 1.0], [-math.inf, -math.inf]]))
    [1, 2]
    """
    values = scores.logprobs if isinstance(scores, SparseScores) else scores
    if values.shape[-1] == 0:
        return list(range(values.shape[0]))
    top = values.max(dim=-1).values  # one pass: a NaN anywhere makes the max NaN
    return (torch.isnan(top) | torch.isinf(top)).nonzero().flatten().tolist()


def non_finite_members(nll: torch.Tensor | None) -> list[int]:
    """The members whose prompt NLL [K] is not a finite number."""
    if nll is None:
        return []
    return [k for k, v in enumerate(nll.tolist()) if not math.isfinite(v)]


def without_member(weights: torch.Tensor, k: int) -> torch.Tensor | None:
    """``weights`` [K] with member k's set to 0 and the rest renormalised; None if nothing is left.

    >>> without_member(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), 0).tolist()
    [0.0, 0.5, 0.5]
    """
    out = weights.clone()
    out[k] = 0
    total = float(out.sum())
    return out / total if total > 0 else None


def prompt_fault(names: Sequence[str], bad: Sequence[int], reference: int, on_member_error: str, prompt: int) -> None:
    """Members ``bad`` have no finite prompt NLL on ``prompt``: raise a :class:`MemberError`, or
    return so that they are dropped (``on_member_error="drop"``, when neither the prompt's
    reference member nor every member is among them)."""
    for k in bad:
        if on_member_error != "drop" or k == reference or len(bad) == len(names):
            raise MemberError(names[k], None, NOT_FINITE_NLL, (prompt,))


@contextmanager
def prefill_faults(member: str, prompts: Iterable[int]) -> Iterator[None]:
    """A backend that fails while its member reads the prompts raises a :class:`MemberError`
    naming the member, as a failure mid-decode does (the pack's own errors, such as a prompt
    too long, and out-of-memory, which the host retries, pass as they are)."""
    try:
        yield
    except BackendError as exc:
        raise MemberError(member, None, exc.reason, tuple(prompts)) from exc
    except (torch.OutOfMemoryError, MemoryError, AssertionError, PackLLMError):
        raise  # out of memory (the host retries), the pack's own errors and checks
    except Exception as exc:
        raise MemberError(member, None, f"{type(exc).__name__}: {exc}", tuple(prompts)) from exc
