"""Structured output on a real pack, through LangChain's tool calling and LlamaIndex's `structured_predict`.

The pack is Qwen2.5-Coder-1.5B-Instruct with Qwen2.5-Coder-0.5B-Instruct (the bundled members
that know tool calling; llama.cpp runs them), greedy. The real agent loops on this pack
(LangChain's `create_agent` and LlamaIndex's `FunctionAgent`: two tools, two calls, then an
answer holding both facts) and `with_structured_output`'s default JSON Schema method run in
`notebooks/agent_tool_backend.ipynb`, whose cells check the calls, the answers and the facts;
`tests/test_notebooks.py` runs it top to bottom. Without the grammar the pack writes calls the
frameworks cannot read; without leaving out repeated calls it calls the same tool again
instead of answering (see benchmarks/results/agents.md).
"""

import functools

import pytest

from packllm_integrations import PackEngine
from tests.integration.models import need

pytestmark = pytest.mark.integration

PACK = ["qwen2.5-coder-1.5b,backend=llama.cpp", "qwen2.5-coder-0.5b,backend=llama.cpp"]


@functools.cache
def engine() -> PackEngine:
    need("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
    return PackEngine.from_models(PACK, progress=False)


FACTS = "Rome has 2.8 million people; today it is rainy, 14 C. Extract the city facts."


def _city_facts():
    from pydantic import BaseModel, Field

    class CityFacts(BaseModel):
        city: str = Field(max_length=16)
        population: int  # as a string, the 1.5B member writes "{2.8 million}": it wants a number here
        weather: str = Field(max_length=24)

    return CityFacts


def _check_facts(facts) -> None:
    assert facts.city.lower() == "rome", facts
    assert facts.population == 2_800_000 and "rain" in facts.weather.lower(), facts


def test_langchain_structured_output_by_a_tool_call_gets_the_facts():
    from packllm_integrations.langchain import ChatPackLLM

    model = ChatPackLLM(engine=engine(), max_tokens=64, temperature=0)
    _check_facts(model.with_structured_output(_city_facts(), method="function_calling").invoke(FACTS))


def test_llama_index_structured_predict_gets_the_facts():
    from llama_index.core.prompts import PromptTemplate

    from packllm_integrations.llama_index import PackLLM

    llm = PackLLM(engine=engine(), max_new_tokens=64, temperature=0)
    _check_facts(llm.structured_predict(_city_facts(), PromptTemplate("{text}"), text=FACTS))
