"""Real agent loops on a real pack: LangChain's `create_agent` and LlamaIndex's `FunctionAgent`.

The pack is Qwen2.5-Coder-1.5B-Instruct with Qwen2.5-Coder-0.5B-Instruct (the bundled members
that know tool calling; llama.cpp runs them), greedy. The task takes two tools and two calls:
the population of Rome and its weather, then an answer holding both. Without the grammar
the pack writes calls the frameworks cannot read; without leaving out repeated calls it calls
the same tool again instead of answering (see benchmarks/results/agents.md).
"""

import functools

import pytest

from packllm_integrations import PackEngine
from tests.integration.models import need

pytestmark = pytest.mark.integration

PACK = ["qwen2.5-coder-1.5b,backend=llama.cpp", "qwen2.5-coder-0.5b,backend=llama.cpp"]
QUESTION = "How many people live in Rome, and what is the weather there?"
CITIES = {"rome": ("2.8 million", "rainy, 14 C"), "paris": ("2.1 million", "sunny, 21 C")}


def get_population(city: str) -> str:
    """The population of a city."""
    return CITIES.get(city.strip().lower(), ("unknown city", ""))[0]


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return CITIES.get(city.strip().lower(), ("", "unknown city"))[1]


@functools.cache
def engine() -> PackEngine:
    need("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")
    return PackEngine.from_models(PACK, progress=False)


def _check_answer(text: str) -> None:
    assert "2.8" in text and "rain" in text.lower(), text


def test_langchain_create_agent_answers_a_two_step_task():
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import tool

    from packllm_integrations.langchain import ChatPackLLM

    model = ChatPackLLM(engine=engine(), max_tokens=64, temperature=0)
    agent = create_agent(model, tools=[tool(get_population), tool(get_weather)])
    state = agent.invoke({"messages": [("user", QUESTION)]})
    messages = state["messages"]
    calls = [c for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]
    assert {(c["name"], c["args"]["city"].lower()) for c in calls} == {
        ("get_population", "rome"),
        ("get_weather", "rome"),
    }
    results = [m.content for m in messages if isinstance(m, ToolMessage)]
    assert "2.8 million" in results and "rainy, 14 C" in results
    final = messages[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    _check_answer(final.content)


async def test_llama_index_function_agent_answers_a_two_step_task():
    from llama_index.core.agent.workflow import FunctionAgent

    from packllm_integrations.llama_index import PackLLM

    llm = PackLLM(engine=engine(), max_new_tokens=64, temperature=0)
    agent = FunctionAgent(tools=[get_population, get_weather], llm=llm)
    result = await agent.run(user_msg=QUESTION)
    calls = {(c.tool_name, c.tool_kwargs["city"].lower()) for c in result.tool_calls}
    assert calls == {("get_population", "rome"), ("get_weather", "rome")}
    assert {c.tool_output.content for c in result.tool_calls} == {"2.8 million", "rainy, 14 C"}
    _check_answer(result.response.content)


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


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output_gets_the_facts(method):
    from packllm_integrations.langchain import ChatPackLLM

    model = ChatPackLLM(engine=engine(), max_tokens=64, temperature=0)
    _check_facts(model.with_structured_output(_city_facts(), method=method).invoke(FACTS))


def test_llama_index_structured_predict_gets_the_facts():
    from llama_index.core.prompts import PromptTemplate

    from packllm_integrations.llama_index import PackLLM

    llm = PackLLM(engine=engine(), max_new_tokens=64, temperature=0)
    _check_facts(llm.structured_predict(_city_facts(), PromptTemplate("{text}"), text=FACTS))
