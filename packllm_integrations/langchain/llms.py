"""A fused pack as a LangChain text-completion model (:class:`PackLLM`, a ``BaseLLM``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from ..events import Event, FinishEvent, GenerationResult, TextEvent
from ._pack import PackSettings, generation_info

__all__ = ["PackLLM"]


class PackLLM(PackSettings, BaseLLM):
    """PackLLM test-time fusion of several causal LMs, as a LangChain LLM.

    Each prompt gets its own fusion weights (from the members' prompt perplexities); they
    are returned, with the perplexities, in each generation's ``generation_info``.
    ``batch`` decodes all its prompts in one batched engine call; ``stream`` yields a chunk
    per text piece; the async methods run the decoding steps in worker threads.

    Chat messages given to a ``BaseLLM`` are flattened by LangChain into ``"Human: ..."``
    text; use :class:`ChatPackLLM` to have each member render them with its chat template.

    Example:
        >>> from packllm_integrations.langchain import PackLLM
        >>> llm = PackLLM(models=["smollm2-135m", "qwen2.5-coder-0.5b"], max_tokens=24)  # doctest: +SKIP
        >>> llm.invoke("def fibonacci(n):")  # doctest: +SKIP
        '\\n    if n <= 1:\\n        return n\\n ...'
        >>> llm.generate(["def add(a, b):"]).generations[0][0].generation_info["weights"]  # doctest: +SKIP
        {'smollm2-135m': 0.0001, 'qwen2.5-coder-0.5b': 0.9999}

        One engine serves several models without loading the members twice:

        >>> creative = PackLLM(engine=llm.engine, temperature=0.8, seed=7)  # doctest: +SKIP
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    @property
    def _llm_type(self) -> str:
        return "packllm"

    _ls_model_type: ClassVar[str] = "llm"

    # ---- generation ---------------------------------------------------------------------

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        return self._llm_result(self._runner().results(prompts, self._call_config(stop, kwargs)))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        return self._llm_result(await self._runner().aresults(prompts, self._call_config(stop, kwargs)))

    def _llm_result(self, results: list[GenerationResult]) -> LLMResult:
        return LLMResult(
            generations=[[Generation(text=r.text, generation_info=generation_info(r))] for r in results],
            llm_output=self._llm_output(results),
        )

    # ---- streaming ----------------------------------------------------------------------

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        """A chunk per text piece, then an empty chunk holding the ``generation_info``."""
        for event in self._runner().events([prompt], self._call_config(stop, kwargs)):
            chunk = _chunk(event)
            if chunk is None:
                continue
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        async for event in self._runner().aevents([prompt], self._call_config(stop, kwargs)):
            chunk = _chunk(event)
            if chunk is None:
                continue
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def _chunk(event: Event) -> GenerationChunk | None:
    """The chunk of an engine event: text pieces, and the final info on an empty chunk."""
    if isinstance(event, TextEvent):
        return GenerationChunk(text=event.text)
    if isinstance(event, FinishEvent):
        return GenerationChunk(text="", generation_info=generation_info(event.result))
    return None
