"""The generation settings' table, call-level resolution, weights strings and pack loading.

Every setting a host exposes is one row of :data:`SETTINGS`: the engine's name (a field of
:class:`~packllm_integrations.GenerationConfig`), its type, its doc, its bounds and the
names hosts give it where they differ (LangChain calls ``max_new_tokens`` ``max_tokens``).
The hosts' pydantic fields (:func:`~packllm_integrations.host.pack_model`) are built from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import GenerationConfig, setting_doc
from ..engine import PackEngine
from ..errors import ConfigError
from ..loading import MemberSpec, parse_spec

__all__ = [
    "HOSTS",
    "SETTINGS",
    "Setting",
    "check_settings",
    "engine_settings",
    "host_names",
    "in_host_terms",
    "load_engine",
    "parse_weights",
    "resolve_call",
]

HOSTS = ("langchain", "llama_index")
"""The hosts that have adapters; a host's names are the engine's, except where a row renames them."""


@dataclass(frozen=True)
class Setting:
    """One generation setting: its engine name, type, bounds and per-host names.

    Its doc is the engine's (:func:`~packllm_integrations.config.setting_doc`), plus
    ``note`` where hosts need to know more.
    """

    name: str
    """The engine's name (a :class:`GenerationConfig` field)."""
    type: type
    """The value's type in a host's fields (None is always accepted too: the engine's default)."""
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    renamed: Mapping[str, str] = field(default_factory=dict)
    """Host -> its name for this setting, where it is not the engine's."""
    note: str = ""

    @property
    def doc(self) -> str:
        """The setting's doc, as hosts show it."""
        return f"{setting_doc(self.name)} {self.note}".strip()

    def host_name(self, host: str) -> str:
        """The setting's name in ``host``.

        >>> SETTINGS[0].host_name("langchain"), SETTINGS[0].host_name("llama_index")
        ('max_tokens', 'max_new_tokens')
        """
        return self.renamed.get(host, self.name)

    @property
    def bounds(self) -> dict[str, float]:
        """The bounds as pydantic ``Field`` arguments (``gt``, ``ge``, ``le``)."""
        return {k: v for k, v in (("gt", self.gt), ("ge", self.ge), ("le", self.le)) if v is not None}


SETTINGS: tuple[Setting, ...] = (
    Setting("max_new_tokens", int, ge=1, renamed={"langchain": "max_tokens"}),
    Setting("temperature", float, ge=0),
    Setting("top_k", int, ge=0),
    Setting("top_p", float, gt=0, le=1),
    Setting("seed", int),
    Setting("stop", list[str], note="A string is one stop sequence. A call's own stop replaces this list."),
    Setting("weighting", str),
    Setting("tau", float, gt=0),
    Setting("weights", list[float]),
    Setting("reference", str),
    Setting("reference_by", str),
    Setting("scoring", str),
    Setting("alignment", str),
    Setting("fusion", str),
    Setting("union_k", int, ge=1),
    Setting("gate", float, ge=0, le=1),
    Setting("contrast", float, ge=0),
    Setting("on_member_error", str),
    Setting("json_string_repeats", int, ge=0),
)
"""Every generation setting, in the order hosts list them (``constraint`` is left out: it belongs
to one request, not to a host's model, and reaches the engine through the engine's API)."""


def host_names(host: str) -> dict[str, str]:
    """``host``'s setting names -> the engine's, in table order.

    >>> host_names("langchain")["max_tokens"]
    'max_new_tokens'
    """
    if host not in HOSTS:
        raise ConfigError("host", host, f"one of {', '.join(HOSTS)}")
    return {s.host_name(host): s.name for s in SETTINGS}


def _engine_value(value: Any) -> Any:
    """A host value as the engine takes it (lists become tuples)."""
    return tuple(value) if isinstance(value, list) else value


def check_settings(settings: Mapping[str, Any]) -> GenerationConfig:
    """Check settings (engine names; None values are ignored) before anything loads: milliseconds.

    >>> check_settings({"top_p": 1.5})
    Traceback (most recent call last):
    ...
    packllm_integrations.errors.ConfigError: top_p=1.5 is invalid: expected a number in (0, 1]
    """
    return GenerationConfig().merged(**{k: _engine_value(v) for k, v in settings.items()})


def engine_settings(host: str, values: Mapping[str, Any], *, model_name: str | None = None) -> dict[str, Any]:
    """``host``'s settings under the engine's names: lists as tuples, None values left out.

    A name that is no setting raises :class:`ConfigError` naming it. With ``model_name``, a
    ``model`` argument is accepted when it names this pack (LangChain passes one), else it
    raises; without, ``model`` is no setting.

    >>> engine_settings("langchain", {"max_tokens": 8, "stop": ["\\n"], "seed": None})
    {'max_new_tokens': 8, 'stop': ('\\n',)}
    """
    names = host_names(host)
    out = {}
    for name, value in values.items():
        if name == "model" and model_name is not None:
            if value != model_name:
                raise ConfigError("model", value, f"{model_name!r}: a pack cannot switch members per call")
            continue
        if name not in names:
            raise ConfigError(name, value, f"a generation setting ({', '.join(names)})")
        if value is not None:
            out[names[name]] = _engine_value(value)
    return out


def resolve_call(
    engine: PackEngine,
    host: str,
    own: Mapping[str, Any],
    call: Mapping[str, Any],
    *,
    model_name: str | None = None,
) -> GenerationConfig:
    """The config of one call: the engine's, then the model's own settings, then the call's.

    ``own`` holds engine names (see :func:`engine_settings`); ``call`` holds the call's
    keyword arguments under ``host``'s names, checked by :func:`engine_settings`.

    >>> resolve_call(engine, "langchain", {"temperature": 0.5}, {"max_tokens": 8}).max_new_tokens  # doctest: +SKIP
    8
    """
    overrides = engine_settings(host, call, model_name=model_name)
    try:
        base = engine.config.merged(**{k: _engine_value(v) for k, v in own.items()})
        return engine.resolve(base, **overrides)
    except ConfigError as exc:
        raise in_host_terms(host, exc) from None


def in_host_terms(host: str, error: ConfigError) -> ConfigError:
    """``error`` naming its parameter as ``host`` does (LangChain's ``max_tokens``, not ``max_new_tokens``).

    >>> in_host_terms("langchain", ConfigError("max_new_tokens", 0, "an integer >= 1"))
    ConfigError('max_tokens=0 is invalid: expected an integer >= 1')
    """
    renamed = {s.name: s.host_name(host) for s in SETTINGS}.get(error.parameter, error.parameter)
    return error if renamed == error.parameter else type(error)(renamed, error.value, error.expected)


def parse_weights(text: str, *, separator: str = ",", parameter: str = "weights") -> tuple[float, ...]:
    """Member weights from a string such as ``"0.7,0.3"``; a bad one raises naming ``parameter``.

    >>> parse_weights("0.7,0.3")
    (0.7, 0.3)
    >>> parse_weights("1:3", separator=":")
    (1.0, 3.0)
    """
    try:
        return tuple(float(w) for w in text.split(separator))
    except ValueError:
        shown = "comma-separated numbers" if separator == "," else f"numbers joined with {separator!r}"
        raise ConfigError(parameter, text, f"{shown}, e.g. 0.7{separator}0.3") from None


def load_engine(
    models: Sequence[str | MemberSpec] | None = None,
    engine: PackEngine | None = None,
    settings: Mapping[str, Any] | None = None,
    *,
    progress: bool = True,
) -> PackEngine:
    """The engine a host runs on: ``engine`` as given, or loaded from ``models``.

    Settings (engine names) and member specs are checked first, so a bad value fails in
    milliseconds before any model loads; then again against the pack's members (weights'
    length, reference name). Without ``models`` or ``engine``, the default pack is loaded.

    >>> engine = load_engine(["smollm2-135m", "gemma3-270m"], settings={"weighting": "opt"})  # doctest: +SKIP
    """
    if models is not None and engine is not None:
        raise ConfigError("engine", "<PackEngine>", "either models or engine, not both")
    if engine is not None and not isinstance(engine, PackEngine):
        raise ConfigError("engine", type(engine).__name__, "a PackEngine")
    settings = {k: _engine_value(v) for k, v in (settings or {}).items()}
    check_settings(settings)
    if engine is None:
        if isinstance(models, (str, MemberSpec)):
            raise ConfigError("models", models, "a list of member specs, e.g. ['smollm2-135m', 'gemma3-270m']")
        specs = None if models is None else [parse_spec(s) if isinstance(s, str) else s for s in models]
        engine = PackEngine.from_models(specs, progress=progress)
    engine.resolve(engine.config.merged(**settings))
    return engine
