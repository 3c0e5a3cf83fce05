"""What :class:`PackLLM` and :class:`ChatPackLLM` share: the pack's fields under LangChain's names.

The fields come from the host layer's settings table (:func:`~packllm_integrations.host.pack_model`),
under LangChain's names (``max_tokens`` for ``max_new_tokens``). ``None`` means "the engine's
default", so an engine built with ``weighting="opt"`` keeps it unless the model says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

from langchain_core.language_models.base import LangSmithParams

from ..config import GenerationConfig
from ..events import GenerationResult
from ..host import PackModel, pack_model, result_metadata, usage_dict

__all__ = ["PackSettings", "generation_info"]


if TYPE_CHECKING:

    class _LangChainFields(PackModel):
        """What ``pack_model("langchain")`` adds to the fields :class:`PackModel` writes out,
        for type checkers and readers: the one setting LangChain names its own way.

        At run time the class is generated from the settings table (full docs, bounds and
        validators included); ``tests/test_adapter_fields.py`` checks these lines against it.
        ``None`` means "the engine's default".
        """

        max_tokens: int | None = None
        """Most tokens to generate (reference-vocabulary tokens)."""

else:
    _LangChainFields = pack_model("langchain")


class PackSettings(_LangChainFields):
    """The pack and its generation settings, as fields of a LangChain model.

    Either ``models`` (specs loaded with :meth:`PackEngine.from_models`) or ``engine`` (an
    engine already built, shared with other models or frameworks) names the pack; with
    neither, the default pack is loaded. Unknown parameters raise at construction.
    """

    _ls_model_type: ClassVar[str]
    """LangSmith's ``ls_model_type``: "llm" or "chat"."""

    if TYPE_CHECKING:  # LangChain's field, from the BaseLanguageModel this class is mixed into
        custom_get_token_ids: Callable[[str], list[int]] | None = None

    def _call_config(self, stop: Sequence[str] | None, kwargs: dict[str, Any]) -> GenerationConfig:
        """The config of one call: the engine's, then this model's settings, then the call's.

        ``kwargs`` may hold any setting by its field name; ``model`` is accepted only when it
        names this pack. Anything else raises :class:`ConfigError`.
        """
        call = dict(kwargs)
        if stop is not None:
            call["stop"] = [stop] if isinstance(stop, str) else list(stop)  # a string is one stop sequence
        return self._resolve(call, model_name=self.model_name)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """Everything that changes the output: the members and the effective settings."""
        config = asdict(self._resolve())
        config["stop"] = list(config["stop"])
        if config["weights"] is not None:
            config["weights"] = list(config["weights"])
        return {"model_name": self.model_name, "members": [dict(m.identity) for m in self.pack.members], **config}

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` for the pack's reference tokenizer (no download).

        The reference is the configured ``reference`` member, else the first member; each
        prompt's own reference may differ when ``reference`` is None.
        """
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return self._reference_member().encode(text)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
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
            params["ls_stop"] = [stops] if isinstance(stops, str) else list(stops)
        return LangSmithParams(ls_model_type=self._ls_model_type, **params)  # type: ignore[typeddict-item]

    def _llm_output(self, results: Sequence[GenerationResult]) -> dict[str, Any]:
        """LangChain's ``llm_output``: the summed token usage and the model name."""
        return {"token_usage": usage_dict(*(r.usage for r in results)), "model_name": self.model_name}


def generation_info(result: GenerationResult) -> dict[str, Any]:
    """A result's ``generation_info``: finish reason, weights, perplexities, reference, token usage."""
    return result_metadata(result, usage_key="token_usage")
