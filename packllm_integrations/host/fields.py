"""The hosts' pydantic fields, generated from the settings table, and what they share.

:func:`pack_model` builds, once per host, a pydantic model holding the pack (``models`` or
``engine``), every generation setting under the host's names with its doc and bounds, and
the runner limits (``timeout``, ``max_retries``). A host's adapter subclasses it beside the
host's own base class. ``None`` means "the engine's default", so an engine built with
``weighting="opt"`` keeps it unless the model says otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import SkipJsonSchema

from ..config import GenerationConfig
from ..engine import PackEngine
from ..errors import ConfigError
from ..loading import MemberSpec
from .running import Runner
from .settings import SETTINGS, Setting, engine_settings, host_names, in_host_terms, load_engine, resolve_call

if TYPE_CHECKING:
    from .. import MemberBackend

__all__ = ["PackModel", "pack_model"]

_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})

MODELS_DOC = (
    "Member specs (catalog names, model folders, GGUF files, MemberSpec), loaded once at construction; "
    "give either models or engine (neither: the default pack)."
)
ENGINE_DOC = (
    "An already built PackEngine; pass the same one to several models (LangChain or LlamaIndex) to serve "
    "them from one copy of each member. Set after construction."
)
TIMEOUT_DOC = "Seconds one call may take; checked between decoding steps, then TimeoutError."
MAX_RETRIES_DOC = (
    "Retries of a call whose device ran out of memory (torch.OutOfMemoryError, e.g. while concurrent requests "
    "share a GPU), after waits of 0.5 s, 1 s, 2 s... A stream is retried only before its first chunk. Other "
    "errors are raised at once."
)


class PackModel(BaseModel):
    """What every host's model shares: the pack, its settings and the runner.

    Either ``models`` (specs loaded with :meth:`PackEngine.from_models`) or ``engine`` (an
    engine already built, shared with other models or frameworks) names the pack; with
    neither, the default pack is loaded. Unknown parameters raise at construction. The
    fields themselves are added by :func:`pack_model`; each adapter writes its host's out
    for type checkers and readers (``tests/test_adapter_fields.py`` checks them against it).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    host: ClassVar[str]
    """The host whose setting names the fields use (set by :func:`pack_model`)."""

    if TYPE_CHECKING:  # the fields every host has, as pack_model() adds them
        models: list[str | MemberSpec] | None = None
        """Member specs (catalog names, model folders, GGUF files, MemberSpec); or give ``engine``."""
        engine: PackEngine | None = None
        """An already built PackEngine, possibly shared with other models; set after construction."""
        # The settings every host names alike (each host writes out its own max tokens' name):
        temperature: float | None = None
        """0 for greedy decoding; above 0, sampling at that temperature."""
        top_k: int | None = None
        """Sample only among the k most likely tokens (0: no limit)."""
        top_p: float | None = None
        """Nucleus sampling: the most likely tokens whose probability reaches top_p (1: no limit)."""
        seed: int | None = None
        """Seed of the sampler (with temperature > 0)."""
        stop: list[str] | None = None
        """Stop strings (a string is one); a call's own stop replaces this list."""
        weighting: str | None = None
        """'sim', 'opt', 'uniform', 'top1' or 'fixed' (needs weights)."""
        tau: float | None = None
        """Temperature of 'sim' weighting."""
        weights: list[float] | None = None
        """Fixed member weights in pack order (implies weighting='fixed')."""
        reference: str | None = None
        """Member whose vocabulary the fused distribution uses (None: per prompt)."""
        reference_by: str | None = None
        """With reference None, how each prompt's reference is chosen: 'token' or 'byte' (lowest NLL per byte)."""
        scoring: str | None = None
        """How members with different tokenizers are scored on the prompt: 'reference' or 'own'."""
        alignment: str | None = None
        """How a member with another tokenizer reads the text: 'mined' or 'natural'."""
        fusion: str | None = None
        """How the weighted members' scores are fused: 'logits', 'mixture', 'union', 'gated' or 'contrastive'."""
        union_k: int | None = None
        """With fusion='union', how many of each member's best tokens join the union."""
        gate: float | None = None
        """With fusion='gated', the leading member's best-token probability from which it is followed alone."""
        contrast: float | None = None
        """With fusion='contrastive', how strongly the weakest member's preferences are subtracted."""
        on_member_error: str | None = None
        """What a member's failure does to a request: 'raise' or 'drop'."""
        json_string_repeats: int | None = None
        """Under a JSON constraint, end a string that repeats one span this many times (0: never)."""
        timeout: float | None = None
        """Seconds one call may take, then TimeoutError."""
        max_retries: int = 2
        """Retries of a call whose device ran out of memory."""

    @model_validator(mode="after")
    def _set_up_pack(self) -> PackModel:
        """Check every setting, then load the pack (checks come first: loading takes seconds)."""
        try:
            self.engine = load_engine(self.models, self.engine, self._own_settings())
        except ConfigError as exc:
            raise in_host_terms(self.host, exc) from None
        return self

    @property
    def pack(self) -> PackEngine:
        """The engine (always set once the model is constructed)."""
        if self.engine is None:  # only reachable through model_construct(), which skips validation
            raise ConfigError("engine", None, "a PackEngine (build the model normally, not with model_construct)")
        return self.engine

    @property
    def model_name(self) -> str:
        """The pack's name: ``packllm:`` and the member names joined by ``+``."""
        return "packllm:" + "+".join(self.pack.names)

    def _own_settings(self) -> dict[str, Any]:
        """This model's settings that are set, under the engine's names."""
        return engine_settings(self.host, {name: getattr(self, name) for name in host_names(self.host)})

    def _resolve(self, call: Mapping[str, Any] | None = None, *, model_name: str | None = None) -> GenerationConfig:
        """The config of one call (see :func:`~packllm_integrations.host.resolve_call`)."""
        return resolve_call(self.pack, self.host, self._own_settings(), call or {}, model_name=model_name)

    def _reference_member(self) -> MemberBackend:
        """The configured reference member, else the first (for counting tokens)."""
        return self.pack.reference_member(self._resolve())

    def _runner(self) -> Runner:
        """Runs this model's calls: within ``timeout``, retried on out-of-memory (see :class:`Runner`)."""
        return Runner(self.pack, timeout=self.timeout, max_retries=self.max_retries)


def _bounds_in_host_terms(setting: Setting, host: str) -> Any:
    """A wrap validator that reports a bound's failure as the engine would, under ``host``'s name."""

    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if not all(e["type"] in _BOUND_ERRORS for e in exc.errors()):
                raise
            value = setting.type(value)  # the value as pydantic read it (e.g. -1 -> -1.0)
            try:
                GenerationConfig(**{setting.name: value})
            except ConfigError as error:
                raise in_host_terms(host, error) from None
            raise

    return WrapValidator(check)


def _one_string_is_one_item(value: Any) -> Any:
    """A plain string given for a list of strings (``stop="\\n\\n"``) is that one string, never its characters."""
    return [value] if isinstance(value, str) else value


def _specs_not_a_string(value: Any) -> Any:
    """``models`` is a list of specs: one string is refused rather than read character by character."""
    if isinstance(value, (str, MemberSpec)):
        raise ConfigError("models", value, "a list of member specs, e.g. ['smollm2-135m', 'gemma3-270m']")
    return value


def _setting_field(setting: Setting, host: str) -> tuple[Any, FieldInfo]:
    annotation: Any = setting.type | None
    if setting.type == list[str]:
        annotation = Annotated[annotation, BeforeValidator(_one_string_is_one_item)]
    if setting.bounds:
        annotation = Annotated[annotation, _bounds_in_host_terms(setting, host)]
    doc = f"{setting.doc} None: the engine's default."
    return annotation, Field(default=None, description=doc, **setting.bounds)


@functools.cache
def pack_model(host: str) -> type[PackModel]:
    """The :class:`PackModel` of ``host``: its fields generated from the settings table.

    Field names are ``host``'s (see :data:`~packllm_integrations.host.SETTINGS`), defaults
    None (the engine's default), docs are the fields' descriptions, bounds are checked at
    construction and reported in the engine's words under the host's name.

    >>> from packllm_integrations.host import pack_model
    >>> fields = pack_model("langchain").model_fields
    >>> fields["max_tokens"].description
    "Most tokens to generate (reference-vocabulary tokens). None: the engine's default."
    >>> fields["top_p"].metadata[:2]
    [Gt(gt=0), Le(le=1)]
    """
    host_names(host)  # an unknown host raises
    fields: dict[str, Any] = {
        "models": (
            Annotated[list[str | MemberSpec] | None, BeforeValidator(_specs_not_a_string)],
            Field(default=None, description=MODELS_DOC),
        ),
        "engine": (
            SkipJsonSchema[PackEngine] | None,
            Field(default=None, exclude=True, repr=False, description=ENGINE_DOC),
        ),
    }
    fields.update({s.host_name(host): _setting_field(s, host) for s in SETTINGS})
    fields["timeout"] = (float | None, Field(default=None, gt=0, description=TIMEOUT_DOC))
    fields["max_retries"] = (int, Field(default=2, ge=0, description=MAX_RETRIES_DOC))
    model = create_model(f"PackModel_{host}", __base__=PackModel, __module__=__name__, **fields)
    model.host = host
    return model
