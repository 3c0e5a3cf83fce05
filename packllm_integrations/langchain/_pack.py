"""What :class:`PackLLM` and :class:`ChatPackLLM` share: the pack settings and the runner.

The settings are pydantic fields that mirror :class:`~packllm_integrations.GenerationConfig`
under LangChain's names (``max_tokens`` for ``max_new_tokens``). ``None`` means "the engine's
default", so an engine built with ``weighting="opt"`` keeps it unless the model says otherwise.

The runner walks the engine's event stream (a plain generator) with a deadline and retries;
its async twin steps the same generator in worker threads, one decoding step per thread call,
so the event loop is never blocked and no thread outlives the call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..aio import iterate_in_threads
from ..config import GenerationConfig
from ..engine import PackEngine, Prompt
from ..errors import ConfigError
from ..events import Event, FinishEvent, GenerationResult
from ..loading import MemberSpec
from ..members import Member

__all__ = ["PackSettings", "run_events", "arun_events", "collect", "acollect", "result_info", "token_usage"]

T = TypeVar("T")

# LangChain's name -> the engine's name, for settings whose names differ.
_ENGINE_NAMES = {"max_tokens": "max_new_tokens"}
_SETTINGS = (
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "stop",
    "weighting",
    "tau",
    "weights",
    "reference",
    "scoring",
    "alignment",
)
_BACKOFF_S = 0.5  # first wait before a retry; doubled for each further one


class PackSettings(BaseModel):
    """The pack and its generation settings, as fields of a LangChain model.

    Either ``models`` (specs loaded with :meth:`PackEngine.from_models`) or ``engine`` (an
    engine already built, shared with other models or frameworks) names the pack; with
    neither, the default pack is loaded. Unknown parameters raise at construction.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    models: list[str | MemberSpec] | None = None
    """Member specs (catalog names, model folders, GGUF files, :class:`MemberSpec`), loaded
    once at construction. Give either ``models`` or ``engine``."""

    engine: PackEngine | None = Field(default=None, exclude=True, repr=False)
    """An already built :class:`PackEngine`; pass the same one to several models (LangChain
    or LlamaIndex) to serve them from one copy of each member. Set after construction."""

    max_tokens: int | None = None
    """Most tokens to generate (reference-vocabulary tokens). None: the engine's default."""

    temperature: float | None = None
    """0 for greedy decoding, above 0 to sample. None: the engine's default (greedy)."""

    top_k: int | None = None
    """Sample only among the k most likely tokens (0: no limit)."""

    top_p: float | None = None
    """Nucleus sampling: the most likely tokens whose probability reaches top_p (1: no limit)."""

    seed: int | None = None
    """Seed of the sampler: with ``temperature > 0``, the same seed gives the same text."""

    stop: list[str] | None = None
    """Stop strings: generation ends before the first one, which is never returned. A call's
    own ``stop`` replaces this list."""

    weighting: str | None = None
    """How the members are weighted per prompt: 'sim', 'opt', 'uniform', 'top1' or 'fixed'."""

    tau: float | None = None
    """Temperature of 'sim' weighting (softmax of minus log prompt perplexity over tau)."""

    weights: list[float] | None = None
    """Fixed member weights in pack order (implies ``weighting='fixed'``)."""

    reference: str | None = None
    """Member whose vocabulary the fused distribution uses; None: per prompt, the member
    with the lowest prompt perplexity."""

    scoring: str | None = None
    """How members with different tokenizers score the prompt: 'reference' (the authors'
    way, on the reference member's translated tokens) or 'own' (each on its own
    tokenization, per byte). None: the engine's default."""

    alignment: str | None = None
    """How members with other tokenizers read the text: 'mined' (the reference's tokens
    translated through the vocabulary map) or 'natural' (their own tokenization).
    None: the engine's default."""

    timeout: float | None = Field(default=None, gt=0)
    """Seconds one call may take; checked between decoding steps, then ``TimeoutError``."""

    max_retries: int = Field(default=2, ge=0)
    """Retries of a call whose device ran out of memory (``torch.OutOfMemoryError``, e.g.
    while concurrent requests share a GPU), after waits of 0.5 s, 1 s, 2 s... A stream is
    retried only before its first chunk. Other errors are raised at once."""

    @model_validator(mode="after")
    def _set_up_pack(self) -> PackSettings:
        """Check every setting, then load the pack (checks come first: loading takes seconds)."""
        settings = self._engine_settings(self._own_settings())
        self.engine = PackEngine.shared_or_loaded(self.models, self.engine, settings)
        return self

    # ---- settings -----------------------------------------------------------------------

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
        return {name: getattr(self, name) for name in _SETTINGS if getattr(self, name) is not None}

    @staticmethod
    def _engine_settings(settings: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in settings.items():
            if isinstance(value, list):
                value = tuple(value)
            out[_ENGINE_NAMES.get(name, name)] = value
        return out

    def _call_config(self, stop: Sequence[str] | None, kwargs: dict[str, Any]) -> GenerationConfig:
        """The config of one call: the engine's, then this model's settings, then the call's.

        ``kwargs`` may hold any setting by its field name; ``model`` is accepted only when it
        names this pack. Anything else raises :class:`ConfigError`.
        """
        call = {}
        for name, value in kwargs.items():
            if name == "model":
                if value != self.model_name:
                    raise ConfigError("model", value, f"{self.model_name!r}: a pack cannot switch members per call")
                continue
            if name not in _SETTINGS:
                raise ConfigError(name, value, f"a generation setting ({', '.join(_SETTINGS)})")
            call[name] = value
        if stop is not None:
            call["stop"] = list(stop)
        engine = self.pack
        base = engine.config.merged(**self._engine_settings(self._own_settings()))
        return engine.resolve(base, **self._engine_settings(call))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """Everything that changes the output: the members and the effective settings."""
        config = asdict(self._call_config(None, {}))
        config["stop"] = list(config["stop"])
        if config["weights"] is not None:
            config["weights"] = list(config["weights"])
        return {"model_name": self.model_name, "members": [_member_identity(m) for m in self.pack.members], **config}

    def _ls_settings(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """LangSmith's standard parameters, following per-call overrides."""
        model = kwargs.get("model")
        temperature = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        params: dict[str, Any] = {
            "ls_provider": "packllm",
            "ls_model_name": model if isinstance(model, str) else self.model_name,
            "ls_temperature": temperature if temperature is not None else self.pack.config.temperature,
            "ls_max_tokens": max_tokens if max_tokens is not None else self.pack.config.max_new_tokens,
        }
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _reference_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` for the reference tokenizer (configured reference, else the first member)."""
        member = self.pack.reference_member(self._call_config(None, {}))
        return member.encode(text)


def _member_identity(member: Member) -> dict[str, str]:
    """What tells two members apart in a cache key: name, weights' origin and dtype."""
    parameter = next(member.model.parameters(), None)
    return {
        "name": member.name,
        "model": str(getattr(member.model.config, "name_or_path", "") or ""),
        "dtype": str(parameter.dtype) if parameter is not None else "",
    }


# ---- results --------------------------------------------------------------------------------


def token_usage(results: Sequence[GenerationResult]) -> dict[str, int]:
    """Summed token counts in the OpenAI-style keys LangChain's callbacks read."""
    prompt = sum(r.usage.prompt_tokens for r in results)
    completion = sum(r.usage.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def result_info(result: GenerationResult) -> dict[str, Any]:
    """A result's ``generation_info``: finish reason, weights, perplexities, reference, usage."""
    return {
        "finish_reason": result.finish_reason,
        "weights": dict(result.weights),
        "prompt_perplexity": dict(result.prompt_perplexity),
        "reference": result.reference,
        "token_usage": token_usage([result]),
    }


# ---- running ---------------------------------------------------------------------------------


def run_events(
    engine: PackEngine,
    prompts: Sequence[Prompt],
    config: GenerationConfig,
    *,
    timeout: float | None,
    max_retries: int,
    restart_after_output: bool = False,
) -> Iterator[Event]:
    """The engine's events for ``prompts``, within ``timeout`` seconds, with OOM retries.

    A call whose device runs out of memory is started again (at most ``max_retries`` times)
    if it has yielded nothing yet, or at any point with ``restart_after_output`` (for
    callers that only keep the final results).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    attempt = 0
    while True:
        yielded = False
        try:
            for event in engine.stream_batch(prompts, config):
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"generation took longer than timeout={timeout} s")
                yielded = True
                yield event
            return
        except torch.OutOfMemoryError:
            if attempt >= max_retries or (yielded and not restart_after_output):
                raise
            attempt += 1
            time.sleep(_BACKOFF_S * 2 ** (attempt - 1))


def collect(events: Iterator[Event], count: int) -> list[GenerationResult]:
    """The final results of ``count`` prompts, in prompt order."""
    results: dict[int, GenerationResult] = {}
    for event in events:
        if isinstance(event, FinishEvent):
            results[event.index] = event.result
    return [results[i] for i in range(count)]


async def arun_events(
    engine: PackEngine,
    prompts: Sequence[Prompt],
    config: GenerationConfig,
    *,
    timeout: float | None,
    max_retries: int,
    restart_after_output: bool = False,
) -> AsyncIterator[Event]:
    """:func:`run_events` stepped in worker threads (the event loop stays free)."""
    events = run_events(
        engine, prompts, config, timeout=timeout, max_retries=max_retries, restart_after_output=restart_after_output
    )
    async for event in iterate_in_threads(events):
        yield event


async def acollect(events: AsyncIterator[Event], count: int) -> list[GenerationResult]:
    """:func:`collect` for an async event stream."""
    results: dict[int, GenerationResult] = {}
    async for event in events:
        if isinstance(event, FinishEvent):
            results[event.index] = event.result
    return [results[i] for i in range(count)]
