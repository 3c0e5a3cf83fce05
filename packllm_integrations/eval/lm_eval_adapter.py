"""A pack as an lm-evaluation-harness model: ``--model packllm``.

Importing this module registers :class:`PackLM` under the name ``packllm`` in lm-eval's
model registry. lm-eval (0.4.13) finds models only through that registry, filled by its
own ``lm_eval.models`` module; it reads no entry points or plugins, so a plain
``lm_eval --model packllm`` cannot see this class. Two ways in:

- the command line: ``python -m packllm_integrations.eval.lm_eval_cli`` registers the model,
  then runs lm-eval's own command line with the same arguments::

      python -m packllm_integrations.eval.lm_eval_cli run --model packllm \\
          --model_args models=smollm2-135m+gemma3-270m,weighting=opt \\
          --tasks packllm_demo_mc --include_path tests/data/lm_eval --batch_size 8

- Python: pass an instance (it may wrap an engine you already loaded)::

      import lm_eval
      from packllm_integrations.eval.lm_eval_adapter import PackLM
      lm_eval.simple_evaluate(model=PackLM(engine=engine), tasks=["packllm_demo_mc"], ...)

Model arguments (``--model_args``): ``models`` (member specs joined with ``+``, their own
options joined with ``;`` because lm-eval splits its arguments at commas, e.g.
``models=qwen2.5-coder-0.5b;backend=llama.cpp+openai:http://127.0.0.1:8080/v1;tokenizer=smollm2-135m``;
default: the default pack), ``weighting``, ``weights`` (joined with ``:``), ``tau``, ``reference``,
``scoring``, ``alignment``, ``weights_on`` (``context`` or ``full``), ``window_chars`` and ``context_chars`` (rolling
log-likelihood windows), ``max_gen_toks``; lm-eval's ``--batch_size`` is honoured.

Requests map onto the engine: ``loglikelihood`` -> :meth:`PackEngine.score` (weights from
the context); ``loglikelihood_rolling`` -> the text cut into windows by
:func:`~packllm_integrations.eval.tasks.rolling_windows` (the first after an empty context,
each later one after the text before it), log-likelihoods summed; ``generate_until`` ->
:meth:`PackEngine.generate_batch` with the request's stop strings. With an empty context the
engine has no prompt token to weight on, so it uses uniform weights, and a reference member
without a BOS token cannot score the text's first token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..engine import PackEngine
from ..errors import ConfigError
from ..host import check_settings, load_engine, parse_weights
from .errors import MissingDependencyError
from .tasks import rolling_windows

try:
    import lm_eval.models  # noqa: F401  (fills the registry first: get_model only imports it when empty)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry
except ImportError as exc:  # pragma: no cover - exercised only without lm-eval
    raise MissingDependencyError("the lm-eval adapter needs lm-eval: pip install 'lm-eval>=0.4.9'") from exc

__all__ = ["PackLM", "MODEL_NAME"]

logger = logging.getLogger(__name__)

MODEL_NAME = "packllm"


class PackLM(LM):
    """lm-eval's ``LM`` over a :class:`~packllm_integrations.PackEngine`.

    Args:
        models: member specs joined with ``+``, a spec's options joined with ``,`` or ``;``
            (ignored when ``engine`` is given).
        engine: an already built engine (Python use; shares loaded members).
        weighting, weights, tau, reference, scoring, alignment: the fusion config (see
            :class:`~packllm_integrations.GenerationConfig`); ``weights`` may be a string
            ``"0.2:0.8"``.
        weights_on: ``"context"`` or ``"full"`` (see :meth:`PackEngine.score`).
        batch_size: pairs or prompts per engine call (``"auto"`` means 8).
        window_chars, context_chars: windows of ``loglikelihood_rolling``.
        max_gen_toks: default most new tokens of ``generate_until`` (default: the engine's
            ``max_new_tokens``).
        progress: show progress bars.
        **kwargs: lm-eval's ``max_batch_size`` and ``device`` are accepted (the members'
            devices come from their specs); any other argument raises.

    >>> lm = PackLM(models="smollm2-135m+gemma3-270m", weighting="opt")  # doctest: +SKIP
    """

    def __init__(
        self,
        models: str | None = None,
        engine: PackEngine | None = None,
        weighting: str | None = None,
        weights: str | Sequence[float] | None = None,
        tau: float | None = None,
        reference: str | None = None,
        scoring: str | None = None,
        alignment: str | None = None,
        weights_on: str = "context",
        batch_size: int | str | None = None,
        window_chars: int = 1200,
        context_chars: int = 600,
        max_gen_toks: int | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - {"max_batch_size", "device"})
        if unknown:
            raise ConfigError(unknown[0], kwargs[unknown[0]], "a packllm model argument (see PackLM's docstring)")
        if weights_on not in ("context", "full"):
            raise ConfigError("weights_on", weights_on, "'context' or 'full'")
        if isinstance(weights, str):
            weights = parse_weights(weights, separator=":")
        overrides = {
            "weighting": weighting,
            "weights": weights,
            "tau": tau,
            "reference": reference,
            "scoring": scoring,
            "alignment": alignment,
        }
        check_settings(overrides)  # fail on a bad setting before loading any model
        rolling_windows("", window_chars, context_chars)  # checks both sizes
        specs = None  # models are ignored beside an engine; lm-eval's commas split specs' options
        if models and engine is None:
            specs = [spec.replace(";", ",") for spec in models.split("+")]
        engine = load_engine(specs, engine, overrides, progress=progress)
        self.engine = engine
        self.config = engine.resolve(**overrides)
        self.weights_on = weights_on
        self.batch_size = _batch_size(batch_size)
        self.window_chars = window_chars
        self.context_chars = context_chars
        self.max_gen_toks = self.config.max_new_tokens if max_gen_toks is None else max_gen_toks
        self.progress = progress
        self.weights_seen: list[dict[str, float]] = []
        """The fusion weights of every scored pair and generated prompt, in request order."""

    # ---- lm-eval's three request types ---------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(logprob, is_greedy)`` of each ``(context, continuation)`` request."""
        pairs = [(str(r.args[0]), str(r.args[1])) for r in requests]
        out = []
        for pair, result in zip(pairs, self._score(pairs, "loglikelihood", disable_tqdm), strict=True):
            answer = (result.logprob, result.is_greedy)
            self.cache_hook.add_partial("loglikelihood", pair, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The whole log-likelihood of each text, summed over its windows."""
        texts = [str(r.args[0]) for r in requests]
        pairs, owner = [], []
        for i, text in enumerate(texts):
            windows = rolling_windows(text, self.window_chars, self.context_chars)
            pairs += windows
            owner += [i] * len(windows)
        totals = [0.0] * len(texts)
        if pairs:
            for i, result in zip(owner, self._score(pairs, "loglikelihood_rolling", disable_tqdm), strict=True):
                totals[i] += result.logprob
        for text, total in zip(texts, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with ``do_sample``) text up to the first stop string."""
        from tqdm.auto import tqdm

        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        settings: dict[str, dict[str, Any]] = {}
        for i, r in enumerate(requests):
            kwargs = dict(r.args[1]) if len(r.args) > 1 and r.args[1] else {}
            key = repr(sorted(kwargs.items()))
            groups.setdefault(key, []).append(i)
            settings[key] = kwargs
        with tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm or not self.progress) as bar:
            for key, indices in groups.items():
                overrides = self._generation_overrides(settings[key])
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    prompts = [str(requests[i].args[0]) for i in chunk]
                    for i, prompt, result in zip(
                        chunk, prompts, self.engine.generate_batch(prompts, self.config, **overrides), strict=True
                    ):
                        out[i] = result.text
                        self.weights_seen.append(result.weights)
                        self.cache_hook.add_partial("generate_until", (prompt, settings[key]), result.text)
                    bar.update(len(chunk))
        return [text or "" for text in out]

    # ---- helpers --------------------------------------------------------------------------

    def _score(self, pairs: list[tuple[str, str]], desc: str, disable_tqdm: bool) -> list[Any]:
        from tqdm.auto import tqdm

        results = []
        with tqdm(total=len(pairs), desc=desc, disable=disable_tqdm or not self.progress) as bar:
            for start in range(0, len(pairs), self.batch_size):
                batch = pairs[start : start + self.batch_size]
                scored = self.engine.score(batch, self.config, weights_on=self.weights_on)
                results += scored
                self.weights_seen += [r.weights for r in scored]
                bar.update(len(batch))
        return results

    def _generation_overrides(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """lm-eval's generation kwargs as engine config overrides; unknown ones raise."""
        kwargs = dict(kwargs)
        until = kwargs.pop("until", None)
        if isinstance(until, str):
            until = [until]
        stop = tuple(s for s in (until or []) if s)
        max_new = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", self.max_gen_toks)))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        top_p = kwargs.pop("top_p", None)
        top_k = kwargs.pop("top_k", None)
        seed = kwargs.pop("seed", None)
        if kwargs:
            name = sorted(kwargs)[0]
            raise ConfigError(
                name,
                kwargs[name],
                "a generation setting packllm supports (until, max_gen_toks, "
                "do_sample, temperature, top_p, top_k, seed)",
            )
        return {
            "stop": stop,
            "max_new_tokens": max_new,
            "temperature": temperature if do_sample else 0.0,
            "top_p": float(top_p) if do_sample and top_p is not None else None,
            "top_k": int(top_k) if do_sample and top_k is not None else None,
            "seed": seed,
        }

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model in its results."""
        return {
            "packllm_members": self.engine.names,
            "packllm_weighting": self.config.weighting,
            "packllm_reference": self.config.reference,
            "packllm_weights_on": self.weights_on,
        }


def _batch_size(value: int | str | None) -> int:
    if value is None or value == "auto" or (isinstance(value, str) and value.startswith("auto")):
        return 8
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError("batch_size", value, "a positive integer or 'auto'") from None
    if size < 1:
        raise ConfigError("batch_size", value, "a positive integer or 'auto'")
    return size


model_registry.register(MODEL_NAME)(PackLM)
