"""The methods compared side by side: each member alone, and the pack's weightings.

A method is one column of the results. Every fused method (``uniform``, ``top1``, ``sim``,
``opt``, ``fixed``) is a :class:`~packllm_integrations.GenerationConfig`. A member alone is
scored one of two ways:

- ``"native"`` (default): as a one-member pack, reading its own tokenization of the text:
  the honest single-model baseline. Where the pack chose that member as the reference, its
  tokens and logits are exactly the pack's, so the pack run's result is reused and no extra
  forward pass is made.
- ``"pack"``: fixed one-hot weights inside the pack (free). A member that is not the
  prompt's reference is then scored on the reference tokens translated to its vocabulary
  (MinED), which is not how the member reads text on its own; such methods are named
  ``"<member>[pack]"``.

Example:
    >>> from packllm_integrations import PackEngine  # doctest: +SKIP
    >>> from packllm_integrations.eval import standard_methods
    >>> engine = PackEngine.from_models()  # doctest: +SKIP
    >>> [m.name for m in standard_methods(engine, members="pack")][:2]  # doctest: +SKIP
    ['smollm2-135m[pack]', 'gemma3-270m[pack]']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import GenerationConfig
from ..engine import PackEngine
from ..errors import ConfigError

__all__ = [
    "FUSED_METHODS",
    "MEMBER_MODES",
    "Method",
    "standard_methods",
    "one_hot",
]

FUSED_METHODS = ("uniform", "top1", "sim", "opt")
"""The pack's weightings evaluated by default (``fixed`` joins them when weights are given)."""
MEMBER_MODES = ("native", "pack", "both", "none")
"""How members alone are evaluated: see the module docstring (``both``: both kinds; ``none``: not at all)."""


@dataclass(frozen=True)
class Method:
    """One column of the results.

    Args:
        name: the column's name.
        kind: ``"member"`` (a member alone, its own tokenizer), ``"member-in-pack"``
            (one-hot weights inside the pack) or ``"fused"`` (a pack weighting).
        config: the pack config for ``member-in-pack`` and ``fused`` methods.
        member: the member's name for the two member kinds.

    >>> Method("sim", "fused", GenerationConfig(weighting="sim")).describe()["weighting"]
    'sim'
    """

    name: str
    kind: str
    config: GenerationConfig | None = None
    member: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("member", "member-in-pack", "fused"):
            raise ConfigError("kind", self.kind, "'member', 'member-in-pack' or 'fused'")
        if (self.kind == "member") != (self.config is None):
            raise ConfigError("config", self.config, "None for a member alone, else a GenerationConfig")
        if self.kind != "fused" and not self.member:
            raise ConfigError("member", self.member, "a member name")

    def describe(self) -> dict[str, Any]:
        """The method as plain data (saved with the results)."""
        cfg = self.config
        return {
            "name": self.name,
            "kind": self.kind,
            "member": self.member,
            "weighting": cfg.weighting if cfg else None,
            "weights": list(cfg.weights) if cfg and cfg.weights else None,
            "tau": cfg.tau if cfg else None,
            "reference": cfg.reference if cfg else None,
            "reference_by": cfg.reference_by if cfg else None,
            "fusion": cfg.fusion if cfg else None,
            "scoring": getattr(cfg, "scoring", None) if cfg else None,
            "alignment": getattr(cfg, "alignment", None) if cfg else None,
        }


def one_hot(engine: PackEngine, index: int, **overrides: Any) -> GenerationConfig:
    """A fixed-weighting config that gives member ``index`` all the weight (a member inside the pack)."""
    weights = tuple(1.0 if j == index else 0.0 for j in range(len(engine.members)))
    return engine.resolve(weighting="fixed", weights=weights, **overrides)


def standard_methods(
    engine: PackEngine,
    methods: Sequence[str] = ("members", *FUSED_METHODS),
    *,
    fixed: Sequence[float] | None = None,
    members: str = "native",
    scorings: Sequence[str] | None = None,
    alignments: Sequence[str] | None = None,
    **overrides: Any,
) -> list[Method]:
    """The methods to compare: each member alone, then the pack's weightings.

    Args:
        engine: the pack.
        methods: ``"members"`` and weighting names, in column order; ``"fixed"`` is added at
            the end when ``fixed`` weights are given.
        fixed: member weights for the ``fixed`` method (renormalised).
        members: how members alone are scored: one of :data:`MEMBER_MODES`.
        scorings: values of the config's ``scoring`` field to compare side by side (all
            from the same forward passes): ``top1``, ``sim`` and ``opt`` are repeated for each,
            the first keeping the plain names and the others named ``"sim[own]"``...;
            ``uniform`` and ``fixed`` do not depend on it and appear once.
        alignments: values of the config's ``alignment`` field to compare side by side;
            every fused method is repeated for each (``"sim[natural]"``,
            ``"sim[natural,own]"`` with scorings too).
        **overrides: config fields shared by every fused method (``reference``, ``tau``...).

    >>> [m.name for m in standard_methods(engine)]  # doctest: +SKIP
    ['smollm2-135m', 'gemma3-270m', 'qwen2.5-coder-0.5b', 'uniform', 'top1', 'sim', 'opt']
    """
    if members not in MEMBER_MODES:
        raise ConfigError("members", members, f"one of {', '.join(MEMBER_MODES)}")
    for key in ("weighting", "weights"):
        if key in overrides:
            raise ConfigError(key, overrides[key], "no value here: choose weightings with 'methods' and 'fixed'")
    choices = (("scoring", scorings, "reference', 'own"), ("alignment", alignments, "mined', 'natural"))
    for key, values, example in choices:
        if values is None:
            continue
        if key in overrides:
            raise ConfigError(key, overrides[key], f"no value here when '{key}s' is given")
        if isinstance(values, str) or not values or len(set(values)) != len(values):
            raise ConfigError(f"{key}s", values, f"a list of distinct {key} modes, e.g. ['{example}']")
    kinds: list[str | None] = list(alignments) if alignments is not None else [None]
    modes: list[str | None] = list(scorings) if scorings is not None else [None]
    names = list(methods)
    if fixed is not None and "fixed" not in names:
        names.append("fixed")
    out: list[Method] = []
    for name in names:
        if name == "members":
            for k, member in enumerate(engine.names):
                if members in ("native", "both"):
                    out.append(Method(member, "member", member=member))
                if members in ("pack", "both"):
                    out.append(Method(f"{member}[pack]", "member-in-pack", one_hot(engine, k, **overrides), member))
        elif name in ("fixed", "uniform") or name in FUSED_METHODS:
            if name == "fixed" and fixed is None:
                raise ConfigError("fixed", None, "member weights when the 'fixed' method is asked for")
            extra = {"weights": tuple(fixed)} if name == "fixed" and fixed is not None else {}
            variants = [(a, None) for a in kinds] if name in ("fixed", "uniform") else _variants(kinds, modes)
            for i, (kind, mode) in enumerate(variants):
                tags = [v for v, given in ((kind, alignments), (mode, scorings)) if given is not None and v is not None]
                label = name if i == 0 or not tags else f"{name}[{','.join(tags)}]"
                settings = {**overrides, **extra}
                if kind is not None:
                    settings["alignment"] = kind
                if mode is not None:
                    settings["scoring"] = mode
                out.append(Method(label, "fused", engine.resolve(weighting=name, **settings)))
        else:
            raise ConfigError("methods", name, f"'members', 'fixed' or one of {', '.join(FUSED_METHODS)}")
    seen = [m.name for m in out]
    if len(set(seen)) != len(seen):
        raise ConfigError("methods", seen, "distinct methods")
    return out


def _variants(kinds: Sequence[str | None], modes: Sequence[str | None]) -> list[tuple[str | None, str | None]]:
    return [(kind, mode) for kind in kinds for mode in modes]
