"""Choosing the next token from fused logits: a pure function.

The settings are checked where the config is built (:class:`~..config.GenerationConfig`);
the one fault that shows only in the logits, a temperature so small that ``logits /
temperature`` overflows, raises a :class:`~..errors.ConfigError` naming ``temperature`` at
the step where it happens.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["sample"]


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Next token ids [B] from logits [B, V].

    ``temperature == 0`` is greedy (argmax; ties: the lowest id). Otherwise the logits are
    divided by the temperature, cut to the ``top_k`` best (0: no cut) and to the smallest
    set whose probability reaches ``top_p`` (1.0: no cut), then sampled with ``generator``.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - ordered.softmax(dim=-1) >= top_p  # keep the token that crosses top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered)
    probs = scores.softmax(dim=-1)
    if not bool(torch.isfinite(probs).all()):  # logits / temperature overflowed
        raise ConfigError("temperature", temperature, "a temperature large enough to sample with (or 0 for greedy)")
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
