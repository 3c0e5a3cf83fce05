"""Pack methods from text specs: ``sim``, ``opt`` or ``[LABEL:]key=value,...`` with any generation setting.

Example:
    >>> from packllm_integrations import PackEngine  # doctest: +SKIP
    >>> engine = PackEngine.from_models()  # doctest: +SKIP
    >>> [m.name for m in parse_methods(engine, ["pack", "opt", "mined:sim,alignment=mined"])]  # doctest: +SKIP
    ['smollm2-135m', 'gemma3-270m', 'qwen2.5-coder-0.5b', 'pack', 'opt', 'mined']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ..config import GenerationConfig
from ..engine import PackEngine
from ..errors import ConfigError
from .methods import Method, standard_methods

__all__ = ["PRESETS", "parse_method", "parse_methods", "parse_settings", "default_methods"]

_FIELD_TYPES = {f.name: str(f.type) for f in fields(GenerationConfig)}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"weighting": "sim", "tau": 1.0, "reference_by": "token", "fusion": "logits"}
}
"""Named methods: ``paper`` is PackLLM-sim as published (``tau=1``, the reference chosen per
token, the weighted members' logits summed); alignment stays the engine's (``alignment=mined``
in a full spec for the authors' MinED)."""


def _coerce(key: str, text: str) -> Any:
    """A setting's value from its text, by the :class:`GenerationConfig` field's type."""
    kind = _FIELD_TYPES.get(key, "")
    if text.lower() in ("none", "null"):
        return None
    if kind.startswith("tuple[float"):
        from ..host import parse_weights

        return parse_weights(text, separator=":", parameter=key)
    if kind.startswith("tuple[str"):
        return tuple(text.split(":"))
    if kind.startswith("bool") or text.lower() in ("true", "false"):
        if text.lower() not in ("true", "false"):
            raise ConfigError(key, text, "true or false")
        return text.lower() == "true"
    for parse, name in ((int, "int"), (float, "float")):
        if kind.startswith(name) or not kind:
            try:
                return parse(text)
            except ValueError:
                if kind.startswith(name):
                    raise ConfigError(key, text, "an integer" if name == "int" else "a number") from None
    return text


def parse_method(engine: PackEngine, spec: str) -> Method:
    """A pack method from its spec: ``[LABEL:]SETTING[,SETTING...]``.

    Each setting is ``key=value`` (any :class:`GenerationConfig` field; weights joined with
    ``:``) or a bare weighting name (``sim`` means ``weighting=sim``); a spec that is just
    ``paper`` is PackLLM-sim as published (:data:`PRESETS`). The label defaults to the bare
    name when that is all the spec says, else to the spec itself. Settings not given are the
    engine's defaults.

    >>> parse_method(engine, "mined:sim,alignment=mined").config.alignment  # doctest: +SKIP
    'mined'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("method", spec, "a spec such as 'sim', 'opt' or 'label:weighting=sim,alignment=mined'")
    text, label = spec.strip(), None
    head, sep, rest = text.partition(":")
    if sep and "=" not in head and "," not in head:
        label, text = head.strip(), rest.strip()
        if not label or not text:
            raise ConfigError("method", spec, "LABEL:SETTINGS with both parts non-empty")
    if text in PRESETS:
        return Method(label or text, "fused", engine.resolve(**PRESETS[text]))
    settings = parse_settings(text, parameter="method")
    config = engine.resolve(**settings)
    if label is None:
        label = settings["weighting"] if list(settings) == ["weighting"] else text
    return Method(label, "fused", config)


def parse_settings(text: str, *, parameter: str = "settings") -> dict[str, Any]:
    """Generation settings from ``key=value,...`` (a bare word is a weighting name).

    >>> parse_settings("opt,tau=0.5,reference_by=byte")
    {'weighting': 'opt', 'tau': 0.5, 'reference_by': 'byte'}
    """
    settings: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, value = (p.strip() for p in part.partition("="))
        if not key or (eq and not value):
            raise ConfigError(parameter, text, "settings as key=value or a weighting name, joined with commas")
        if key in settings or (not eq and "weighting" in settings):
            raise ConfigError(parameter, text, "each setting once")
        settings[key if eq else "weighting"] = _coerce(key, value) if eq else key
    return settings


def default_methods(engine: PackEngine) -> list[Method]:
    """The pack with its default settings (``pack``), then PackLLM as published (``paper``) and ``opt``;
    a method whose config equals an earlier one's is left out (see :func:`parse_methods`)."""
    return parse_methods(engine, ["pack", "paper", "opt"])


def parse_methods(engine: PackEngine, specs: Sequence[str], *, members: bool = True) -> list[Method]:
    """Each member alone (with ``members``), then the methods of ``specs`` (see :func:`parse_method`).

    ``"pack"`` names the engine's own default config. A spec whose config equals an
    earlier method's is left out (so ``pack`` and ``sim`` run once when ``sim`` is the
    default); the methods are named in :func:`run_suite`'s report.
    """
    if isinstance(specs, str):
        raise ConfigError("specs", specs, "a list of method specs")
    out = standard_methods(engine, ["members"]) if members else []
    seen: list[GenerationConfig] = []
    for spec in specs:
        method = Method("pack", "fused", engine.config) if spec == "pack" else parse_method(engine, spec)
        if method.config in seen:
            continue
        if method.name in {m.name for m in out}:
            raise ConfigError("method", spec, f"a method whose name is not already taken ({method.name!r})")
        seen.append(method.config)  # type: ignore[arg-type]
        out.append(method)
    return out
