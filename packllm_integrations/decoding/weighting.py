"""Fusion weights from prompt perplexities: pure functions (PACKLLM.md section 2).

Each strategy takes the members' mean prompt negative log-likelihoods ``nll`` ([K], the log
of each prompt perplexity) and returns weights ([K], non-negative, summing to 1). ``opt``
also needs the members' logits on the prompt, in the reference vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..config import STRATEGIES
from ..errors import ConfigError

__all__ = [
    "STRATEGIES",
    "sim_weights",
    "opt_weights",
    "uniform_weights",
    "top1_weights",
    "fixed_weights",
    "mixture_nlls",
    "compute_weights",
]

BETAS = tuple(i / 20 for i in range(21))
"""The greedy search's grid: 0, 0.05, ..., 1.0."""


def sim_weights(nll: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """PackLLM-sim: ``softmax(-nll / tau)``; with ``tau = 1`` weights are proportional to 1/PPL.

    >>> sim_weights(torch.tensor([1.0, 1.0]))
    tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    if not tau > 0:
        raise ConfigError("tau", tau, "a number > 0")
    return torch.softmax(-nll.double() / tau, dim=0)


def uniform_weights(k: int) -> torch.Tensor:
    """The ensemble baseline: 1/K each."""
    return torch.full((k,), 1.0 / k, dtype=torch.float64)


def top1_weights(nll: torch.Tensor) -> torch.Tensor:
    """Top1-PPL: all weight on the member with the lowest prompt perplexity (ties: the first)."""
    out = torch.zeros(nll.numel(), dtype=torch.float64)
    out[int(torch.argmin(nll))] = 1.0
    return out


def fixed_weights(weights: Sequence[float], k: int) -> torch.Tensor:
    """User weights, renormalised to sum to 1."""
    values = [float(w) for w in weights]
    if len(values) != k:
        raise ConfigError("weights", list(weights), f"{k} numbers, one per member")
    if any(not (w >= 0) for w in values):
        raise ConfigError("weights", list(weights), "numbers >= 0")
    total = sum(values)
    if not total > 0:
        raise ConfigError("weights", list(weights), "numbers with a positive sum")
    return torch.tensor([w / total for w in values], dtype=torch.float64)


def mixture_nlls(current: torch.Tensor, candidate: torch.Tensor, targets: torch.Tensor, chunk: int = 8) -> list[float]:
    """Mean NLL of ``softmax(beta * current + (1 - beta) * candidate)`` for every beta of the grid.

    Works through a few rows at a time and tries all 21 betas on them while they are in the
    processor's cache, instead of sweeping the whole [T, V] matrices once per beta.
    """
    totals = [0.0] * len(BETAS)
    count = current.shape[0]
    for start in range(0, count, chunk):
        a, b = current[start : start + chunk], candidate[start : start + chunk]
        y = targets[start : start + chunk, None]
        picked_a, picked_b = a.gather(-1, y).squeeze(-1), b.gather(-1, y).squeeze(-1)
        for i, beta in enumerate(BETAS):
            mixed = beta * a + (1 - beta) * b
            picked = beta * picked_a + (1 - beta) * picked_b
            totals[i] += float((torch.logsumexp(mixed, dim=-1) - picked).double().sum())
    return [t / max(1, count) for t in totals]


def opt_weights(nll: torch.Tensor, logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """PackLLM-opt: the greedy search that lowers the fused perplexity on the prompt.

    ``logits[k]`` is member k's logits on the prompt positions [T, V] (in the reference
    vocabulary) and ``targets`` the next tokens [T]. Members are visited best first; each
    is mixed in with the beta in {0, 0.05, ..., 1} that gives the strictly smallest fused
    NLL (ties keep the smallest beta), and every member is visited.
    """
    k = len(logits)
    order = sorted(range(k), key=lambda i: (float(nll[i]), i))
    weights = torch.zeros(k, dtype=torch.float64)
    weights[order[0]] = 1.0
    current = logits[order[0]]
    for j in order[1:]:
        candidate = logits[j]
        best_beta, best_value = BETAS[0], float("inf")
        for beta, value in zip(BETAS, mixture_nlls(current, candidate, targets), strict=True):
            if value < best_value:
                best_beta, best_value = beta, value
        current = best_beta * current + (1 - best_beta) * candidate
        weights *= best_beta
        weights[j] = 1 - best_beta
    return weights


def compute_weights(
    weighting: str,
    nll: torch.Tensor | None,
    logits: Callable[[], Sequence[torch.Tensor]],
    targets: torch.Tensor,
    count: int,
    *,
    tau: float = 1.0,
    fixed: Sequence[float] | None = None,
) -> torch.Tensor:
    """The prompt's weights [K] for the strategy ``weighting`` (one of :data:`STRATEGIES`)
    among ``count`` members.

    ``nll`` holds the members' prompt NLLs (None: nothing to score, so uniform weights);
    ``logits`` is called only by 'opt', which needs the members' logits on the prompt;
    ``tau`` is 'sim''s temperature and ``fixed`` the user's weights for 'fixed'.

    >>> compute_weights("sim", torch.tensor([0.0, 0.0]), list, torch.zeros(0), 2).tolist()
    [0.5, 0.5]
    """
    if weighting == "fixed":
        return fixed_weights(fixed or (), count)
    if weighting == "uniform" or nll is None:
        return uniform_weights(count)
    if weighting == "sim":
        return sim_weights(nll, tau)
    if weighting == "top1":
        return top1_weights(nll)
    if weighting == "opt":
        return opt_weights(nll, logits(), targets)
    raise ConfigError("weighting", weighting, f"one of {', '.join(STRATEGIES)}")
