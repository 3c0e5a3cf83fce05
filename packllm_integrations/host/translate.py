"""Engine results to host metadata, and host chat messages to the engine's.

Every host reports the same facts under the same keys: the fusion ``weights``, each
member's ``prompt_perplexity``, the ``reference`` member, and at the end the
``finish_reason`` and token usage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..events import GenerationResult, Usage
from ..structured.chat_format import merge

__all__ = ["merge_messages", "result_metadata", "usage_dict", "weights_metadata"]


class _Weighted(Protocol):
    weights: dict[str, float]
    prompt_perplexity: dict[str, float | None]
    reference: str


def usage_dict(*usages: Usage) -> dict[str, int]:
    """Summed token counts under the OpenAI-style keys hosts read.

    >>> usage_dict(Usage(3, 5), Usage(2, 1))
    {'prompt_tokens': 5, 'completion_tokens': 6, 'total_tokens': 11}
    """
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def weights_metadata(item: _Weighted) -> dict[str, Any]:
    """The weights of a prompt (a ``WeightsEvent``, ``GenerationResult`` or ``ScoreResult``): copies.

    >>> from packllm_integrations import WeightsEvent
    >>> weights_metadata(WeightsEvent(0, {"a": 0.6, "b": 0.4}, {"a": 2.0, "b": 3.1}, "a", 7))
    {'weights': {'a': 0.6, 'b': 0.4}, 'prompt_perplexity': {'a': 2.0, 'b': 3.1}, 'reference': 'a'}
    """
    return {
        "weights": dict(item.weights),
        "prompt_perplexity": dict(item.prompt_perplexity),
        "reference": item.reference,
    }


def result_metadata(result: GenerationResult, *, usage_key: str = "usage") -> dict[str, Any]:
    """A final result's metadata: finish reason, weights, perplexities, reference, usage.

    LangChain reads the usage under ``token_usage``; LlamaIndex and the CLI under ``usage``.
    """
    out = {"finish_reason": result.finish_reason, **weights_metadata(result), usage_key: usage_dict(result.usage)}
    if result.dropped:  # members dropped on failure (on_member_error="drop")
        out["dropped"] = dict(result.dropped)
    return out


def merge_messages(messages: Iterable[tuple[str, str] | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``(role, text)`` pairs (or message dicts) as the engine's chat messages, consecutive plain ones joined.

    The join is a blank line, so that strict chat templates (strictly alternating roles)
    accept them; messages with tool calls or results are kept apart. No message at all
    raises :class:`PromptError`.

    >>> merge_messages([("system", "Be brief."), ("user", "Hi"), ("user", "there")])
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi\\n\\nthere'}]
    """
    return merge({"role": m[0], "content": m[1]} if isinstance(m, tuple) else m for m in messages)
