"""Agent loops on the bundled models: does the pack call the right tools, then answer from the results?

Ten tasks, each needing two tool calls (two tools, or one tool twice) and an answer that
holds both results. The loop is what LangChain's and LlamaIndex's agents do: bind the tools
(``tool_choice="auto"``), run the tool of each call, send the result back, stop at a reply
without calls (at most 5 model turns). Greedy, llama.cpp members, ``max_tokens=64``.

For each model or pack, with and without ``allow_repeated_calls`` (without: the default,
a call the conversation already answered is left out, and a reply of only such repeats
becomes an answer from the results):

    python benchmarks/bench_agents.py [--out benchmarks/results/agents.md]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("PACKLLM_BACKEND", "llama.cpp")

from langchain_core.messages import HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from packllm_integrations import PackEngine  # noqa: E402
from packllm_integrations.langchain import ChatPackLLM  # noqa: E402

CITIES = {
    "paris": {"weather": "sunny, 21 C", "time": "14:05", "population": "2.1 million"},
    "rome": {"weather": "rainy, 14 C", "time": "14:05", "population": "2.8 million"},
    "oslo": {"weather": "snowing, -3 C", "time": "14:05", "population": "0.7 million"},
}


def _fact(kind: str, city: str) -> str:
    return CITIES.get(city.strip().lower(), {}).get(kind, "unknown city")


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return _fact("weather", city)


@tool
def get_time(city: str) -> str:
    """The local time in a city."""
    return _fact("time", city)


@tool
def get_population(city: str) -> str:
    """The population of a city."""
    return _fact("population", city)


TASKS = [
    (
        "weather and time",
        [get_weather, get_time],
        "What is the weather in Paris, and what time is it there?",
        {("get_weather", "paris"), ("get_time", "paris")},
        ["sunny", "14:05"],
    ),
    (
        "two cities",
        [get_weather, get_population],
        "What is the weather in Paris and in Rome?",
        {("get_weather", "paris"), ("get_weather", "rome")},
        ["sunny", "rain"],
    ),
    (
        "population and weather",
        [get_weather, get_population],
        "How many people live in Rome, and what is the weather there?",
        {("get_population", "rome"), ("get_weather", "rome")},
        ["2.8", "rain"],
    ),
    (
        "two populations",
        [get_population, get_weather],
        "Which has more people, Rome or Oslo? Look up both populations.",
        {("get_population", "rome"), ("get_population", "oslo")},
        ["2.8", "0.7"],
    ),
    (
        "weather in oslo and rome",
        [get_weather, get_time],
        "Is it colder in Oslo or in Rome right now? Check the weather in both.",
        {("get_weather", "oslo"), ("get_weather", "rome")},
        ["snow", "rain"],
    ),
    (
        "oslo time and weather",
        [get_time, get_weather, get_population],
        "What time is it in Oslo, and what is the weather like there?",
        {("get_time", "oslo"), ("get_weather", "oslo")},
        ["14:05", "snow"],
    ),
    (
        "paris population and time",
        [get_population, get_time],
        "How many people live in Paris, and what is the local time there?",
        {("get_population", "paris"), ("get_time", "paris")},
        ["2.1", "14:05"],
    ),
    (
        "paris and oslo populations",
        [get_population],
        "Give me the populations of Paris and of Oslo.",
        {("get_population", "paris"), ("get_population", "oslo")},
        ["2.1", "0.7"],
    ),
    (
        "rome time and population",
        [get_time, get_population, get_weather],
        "What is the local time in Rome, and how many people live there?",
        {("get_time", "rome"), ("get_population", "rome")},
        ["14:05", "2.8"],
    ),
    (
        "paris weather and oslo population",
        [get_weather, get_population],
        "What is the weather in Paris, and what is the population of Oslo?",
        {("get_weather", "paris"), ("get_population", "oslo")},
        ["sunny", "0.7"],
    ),
]
PACKS = {
    "qwen2.5-coder-0.5b": ["qwen2.5-coder-0.5b"],
    "qwen2.5-coder-1.5b": ["qwen2.5-coder-1.5b"],
    "pack: 1.5b + 0.5b": ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"],
    "default pack (3 members)": ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"],
}


def run(chat: ChatPackLLM, tools: list, question: str, repeats: bool) -> tuple[set, str, int]:
    """The calls made, the final text (empty: no answer within 5 turns) and the turns taken."""
    bound = chat.bind_tools(tools, allow_repeated_calls=repeats)
    messages: list = [HumanMessage(question)]
    calls: set = set()
    by_name = {t.name: t for t in tools}
    for turn in range(1, 6):
        reply = bound.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return calls, reply.content, turn
        for call in reply.tool_calls:
            calls.add((call["name"], str(call["args"].get("city", "")).strip().lower()))
            result = by_name[call["name"]].invoke(call["args"])
            messages.append(ToolMessage(str(result), tool_call_id=call["id"], name=call["name"]))
    return calls, "", 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for label, specs in PACKS.items():
        chat = ChatPackLLM(engine=PackEngine.from_models(specs, progress=False), max_tokens=64, temperature=0)
        for repeats in (False, True):
            if repeats and label != "pack: 1.5b + 0.5b":
                continue
            for name, tools, question, wanted, facts in TASKS:
                start = time.perf_counter()
                calls, text, turns = run(chat, tools, question, repeats)
                seconds = time.perf_counter() - start
                right_calls = calls == wanted
                answered = bool(text) and all(f in text.lower() for f in facts)
                rows.append(
                    (label, "kept" if repeats else "left out", name, right_calls, answered, turns, seconds, text)
                )
                print(rows[-1][:7], repr(text[:80]), flush=True)
    lines = [
        "# Agent loops on the bundled models",
        "",
        "`python benchmarks/bench_agents.py` (one run; greedy, llama.cpp members, `max_tokens=64`, at most 5 turns).",
        "Right calls: exactly the two calls the task needs (tool and city). Answered: the last reply, without",
        "calls, holds both facts. Repeated calls: `allow_repeated_calls` (kept) or the default (left out).",
        "",
        "| model or pack | repeated calls | task | right calls | answered | turns | seconds | final text |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, repeats, name, right, answered, turns, seconds, text in rows:
        shown = text[:90].replace("\n", " ").replace("|", "/") or "(none within 5 turns)"
        lines.append(
            f"| {label} | {repeats} | {name} | {'yes' if right else 'no'} | {'yes' if answered else 'no'} "
            f"| {turns} | {seconds:.0f} | {shown} |"
        )
    for label in PACKS:
        for repeats in ("left out", "kept"):
            mine = [r for r in rows if r[0] == label and r[1] == repeats]
            if mine:
                ok = sum(r[3] and r[4] for r in mine)
                lines.append(
                    f"\n{label}, repeated calls {repeats}: {ok}/{len(mine)} tasks done (right calls and answer)."
                )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
