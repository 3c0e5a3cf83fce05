"""The request configuration: one frozen dataclass, validated where it is built."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError
from .structured.constraints import Constraint

__all__ = ["FUSIONS", "GenerationConfig", "STRATEGIES", "TOKEN_FUSIONS", "setting_doc"]

STRATEGIES = ("sim", "opt", "uniform", "top1", "fixed")
"""The weighting strategies (:mod:`.decoding.weighting` computes them)."""

FUSIONS = ("logits", "mixture", "union", "gated", "contrastive", "sequence")
"""The fusion rules (:func:`.decoding.fusion.fuse_by` applies the token-level ones; ``sequence``
is for scoring only, :mod:`.decoding.scoring`)."""
TOKEN_FUSIONS = FUSIONS[:-1]
"""The fusion rules that can generate (``sequence`` fuses whole continuations' scores)."""


def _setting(default: Any, doc: str) -> Any:
    """A config field with its doc (read by :func:`setting_doc`, and so by every host's fields)."""
    return field(default=default, metadata={"doc": doc})


def setting_doc(name: str) -> str:
    """The doc of setting ``name`` (a :class:`GenerationConfig` field).

    >>> setting_doc("top_k")
    'Sample only among the k most likely tokens (0: no limit).'
    """
    for f in fields(GenerationConfig):
        if f.name == name:
            return str(f.metadata["doc"])
    raise KeyError(name)


@dataclass(frozen=True)
class GenerationConfig:
    """How to weight the members and how to decode.

    Every field can be overridden per call (``engine.generate(prompt, temperature=0.7)``).
    Each field's doc is in its metadata (:func:`setting_doc`); the adapters' fields show
    the same text.

    Example:
        >>> GenerationConfig(max_new_tokens=32, weighting="opt").max_new_tokens
        32
        >>> GenerationConfig(top_p=1.5)
        Traceback (most recent call last):
        ...
        packllm_integrations.errors.ConfigError: top_p=1.5 is invalid: expected a number in (0, 1]
    """

    max_new_tokens: int = _setting(256, "Most tokens to generate (reference-vocabulary tokens).")
    temperature: float = _setting(0.0, "0 for greedy decoding; above 0, sampling at that temperature.")
    top_k: int = _setting(0, "Sample only among the k most likely tokens (0: no limit).")
    top_p: float = _setting(
        1.0, "Nucleus sampling: only the most likely tokens whose probability reaches top_p (1: no limit)."
    )
    seed: int | None = _setting(None, "Seed of the sampler: with temperature > 0, the same seed gives the same text.")
    stop: tuple[str, ...] = _setting((), "Stop strings: generation ends before the first one, which is never returned.")
    weighting: str = _setting(
        "sim", "How the members are weighted per prompt: 'sim', 'opt', 'uniform', 'top1' or 'fixed' (needs weights)."
    )
    tau: float = _setting(
        0.2,
        "Temperature of 'sim' weighting (softmax of minus log prompt perplexity over tau). 0.2, chosen by the "
        "evaluation suite, gives the member that knows the prompt's domain nearly all the weight; the paper's 1 "
        "spreads it (see docs/RESULTS.md).",
    )
    weights: tuple[float, ...] | None = _setting(
        None, "Fixed member weights in pack order, renormalised (implies weighting='fixed')."
    )
    reference: str | None = _setting(
        None,
        "Member whose vocabulary the fused distribution uses; None: per prompt, the member that predicts the "
        "prompt best (see reference_by).",
    )
    reference_by: str = _setting(
        "byte",
        "With reference=None, how each prompt's reference member is chosen: 'byte' (the lowest negative "
        "log-likelihood per UTF-8 byte of its own tokenization, chosen by the evaluation suite) or 'token' (the "
        "authors' rule: the lowest perplexity per token, which favours a tokenizer that cuts the text into more, "
        "easier tokens).",
    )
    scoring: str = _setting(
        "reference",
        "How members with different tokenizers are scored on the prompt: 'reference' (the authors' way: every "
        "member is scored on the reference member's tokens) or 'own' (every member on its own tokenization, its "
        "negative log-likelihood per UTF-8 byte put on the reference's per-token scale). Members that share the "
        "reference's tokenizer score the same either way; 'opt' always searches in the reference token space, "
        "for the weights that lower the perplexity of the fusion rule in use ('mixture': of the mixture; the others: "
        "of the weighted sum of logits). Chat prompts are always scored 'own', on their messages' text alone (each "
        "member renders them with its own template).",
    )
    alignment: str = _setting(
        "natural",
        "How a member whose tokenizer differs from the reference's reads the text: 'mined' (the authors' way: "
        "the reference's tokens translated one-for-one through the vocabulary map) or 'natural' (its own "
        "tokenization of the same text, re-tokenized as text is generated). Either way its next-token "
        "distribution is mapped into the reference vocabulary.",
    )
    fusion: str = _setting(
        "mixture",
        "How the weighted members' next-token scores become one distribution: 'logits' (the paper: the weighted "
        "sum of logits), 'mixture' (the weighted mixture of the members' probabilities over the whole vocabulary), "
        "'union' (the weighted mixture of probabilities over the union of each member's union_k "
        "best tokens), 'gated' (the leading member alone where its best token has probability >= gate or every "
        "member's best token is the same; the weighted sum elsewhere) or 'contrastive' (the pack without its "
        "lowest-weighted member against that member: (1 + contrast) log p_expert - contrast log p_amateur, among "
        "tokens with at least a tenth of the expert's best probability). For score() only, 'sequence': each member "
        "scores the continuation in its own tokenization and the weights mix those log-likelihoods (no vocabulary "
        "alignment; generation refuses it).",
    )
    union_k: int = _setting(10, "With fusion='union', how many of each member's best tokens join the union.")
    gate: float = _setting(
        0.5, "With fusion='gated', the leading member's best-token probability from which it is followed alone."
    )
    contrast: float = _setting(
        0.5, "With fusion='contrastive', how strongly the weakest member's preferences are subtracted (0: none)."
    )
    on_member_error: str = _setting(
        "raise",
        "What a member's failure does to a request (its backend raises, or it gives NaN or infinite scores): "
        "'raise' (a MemberError naming the member and the step, carrying the text so far) or 'drop' (the member "
        "leaves the request, the others' weights are renormalised, and the result's 'dropped' says so; the "
        "reference member of a prompt cannot be dropped).",
    )
    constraint: Constraint | None = _setting(
        None,
        "What the output must match: a Constraint (Constraint.json_schema(...), .regex(...), .lark(...)); "
        "every step's fused distribution is masked by it, and finish_reason 'stop' means the output is complete. "
        "None: free text.",
    )
    json_string_repeats: int = _setting(
        2,
        "Under a JSON constraint, a string whose text ends with one span repeated this many times in a row (the "
        "copies covering 24 characters or more) is ended there: only tokens that close it are allowed, where the "
        "grammar allows one. Small packs otherwise repeat themselves inside a string until max_new_tokens cuts "
        "the object. 0: never.",
    )

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        _check_number("temperature", self.temperature, "a number >= 0", lambda v: v >= 0)
        _check_int("top_k", self.top_k, 0)
        _check_number("top_p", self.top_p, "a number in (0, 1]", lambda v: 0 < v <= 1)
        _check_number("tau", self.tau, "a number > 0", lambda v: v > 0)
        if self.json_string_repeats != 0:
            _check_int("json_string_repeats", self.json_string_repeats, 2)
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**64
        ):
            raise ConfigError("seed", self.seed, "an integer from 0 to 2**64 - 1, or None")
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if stop is None:
            stop = ()
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError("stop", self.stop, "a string or a list of non-empty strings")
        object.__setattr__(self, "stop", tuple(stop))
        if self.weighting not in STRATEGIES:
            raise ConfigError("weighting", self.weighting, f"one of {', '.join(STRATEGIES)}")
        if self.weights is not None:
            if isinstance(self.weights, (str, bytes)) or not isinstance(self.weights, Sequence):
                raise ConfigError("weights", self.weights, "a list of numbers, one per member")
            values = []
            for w in self.weights:
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                    raise ConfigError("weights", self.weights, "finite numbers >= 0")
                values.append(float(w))
            if not sum(values) > 0:
                raise ConfigError("weights", self.weights, "numbers with a positive sum")
            if not math.isfinite(sum(values)):
                raise ConfigError("weights", self.weights, "numbers whose sum is finite (they are renormalised)")
            object.__setattr__(self, "weights", tuple(values))
        if self.weighting == "fixed" and self.weights is None:
            raise ConfigError("weights", None, "a list of member weights when weighting='fixed'")
        if self.weights is not None and self.weighting != "fixed":
            raise ConfigError("weighting", self.weighting, "'fixed' when weights are given")
        if self.scoring not in ("reference", "own"):
            raise ConfigError("scoring", self.scoring, "'reference' or 'own'")
        if self.reference_by not in ("token", "byte"):
            raise ConfigError("reference_by", self.reference_by, "'token' or 'byte'")
        if self.alignment not in ("mined", "natural"):
            raise ConfigError("alignment", self.alignment, "'mined' or 'natural'")
        if self.fusion not in FUSIONS:
            raise ConfigError("fusion", self.fusion, f"one of {', '.join(FUSIONS)}")
        _check_int("union_k", self.union_k, 1)
        _check_number("gate", self.gate, "a probability in [0, 1]", lambda v: 0 <= v <= 1)
        _check_number("contrast", self.contrast, "a number >= 0", lambda v: v >= 0)
        if self.on_member_error not in ("raise", "drop"):
            raise ConfigError("on_member_error", self.on_member_error, "'raise' or 'drop'")
        if self.reference is not None and (not isinstance(self.reference, str) or not self.reference):
            raise ConfigError("reference", self.reference, "a member name or None")
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise ConfigError("constraint", self.constraint, "a Constraint (Constraint.json_schema(...), ...) or None")
        if self.constraint is not None and self.stop:
            raise ConfigError("stop", self.stop, "no stop strings with a constraint (the grammar decides the end)")

    def merged(self, **overrides: Any) -> GenerationConfig:
        """A copy with ``overrides`` applied (None values are ignored); unknown names raise."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(unknown[0], overrides[unknown[0]], f"a known setting ({', '.join(sorted(known))})")
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "weights" in changes and "weighting" not in changes:
            changes["weighting"] = "fixed"
        if changes.get("weighting", "fixed") != "fixed" and "weights" not in changes:
            changes["weights"] = None
        return replace(self, **changes) if changes else self


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, value, f"an integer >= {minimum}")


def _check_number(name: str, value: Any, expected: str, ok: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(name, value, expected)
