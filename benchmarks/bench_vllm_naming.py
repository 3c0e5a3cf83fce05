"""Greedy naming on a one-tokenizer pack: a vLLM member asked for the other member's candidates
only where they could change the choice, against at every step, measured in one run.

Usage:
    python benchmarks/bench_vllm_naming.py

Qwen2.5-Coder-0.5B on vLLM (CPU build, from the venv ``tests/vllm_server.py`` manages, its
worker on core 1, ``top_k=20``) + Qwen2.5-Coder-1.5B in process (llama.cpp), greedy, 32 tokens
on 6 prompts; the served member's requests per generated token (prefill included), the time
per token, and the greedy text against the same pack in process (Qwen2.5-Coder-0.5B on
transformers, float32: the folder vLLM serves). Prints a Markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import packllm_integrations.decoding.naming as naming  # noqa: E402
from packllm_integrations import PackEngine, load_member  # noqa: E402
from tests.vllm_server import VllmServer, model_folder, venv_python  # noqa: E402

PROMPTS = [
    "def fibonacci(n):\n",
    "The capital of France is",
    "import numpy as np\n\ndef normalize(x):\n",
    "SELECT name, email FROM users WHERE",
    "class Stack:\n    def __init__(self):\n",
    "Water boils at a temperature of",
]


def main() -> None:
    python = venv_python()
    if python is None:
        sys.exit("no vLLM venv: run the vLLM tests once with PACKLLM_VLLM=install")
    big = load_member("qwen2.5-coder-1.5b,backend=llama.cpp,name=big", progress=False)
    small_here = load_member("qwen2.5-coder-0.5b,backend=transformers,name=small", progress=False)
    want = [
        g.text for g in (PackEngine([small_here, big], progress=False, max_new_tokens=32).generate(p) for p in PROMPTS)
    ]
    rows = []
    with VllmServer(python, model_folder("qwen2.5-coder-0.5b"), served_name="small", kv_gb=1, cpus="1") as srv:
        small = load_member(f"openai:{srv.url},tokenizer=qwen2.5-coder-0.5b,name=small,top_k=20", progress=False)
        settled = naming.greedy_settled
        for mode in ("only where the choice could change", "at every step"):
            naming.greedy_settled = settled if mode.startswith("only") else (lambda parts: False)
            engine = PackEngine([small, big], progress=False, max_new_tokens=32)
            before, start = small.requests, time.perf_counter()
            got = [engine.generate(p) for p in PROMPTS]
            took = time.perf_counter() - start
            tokens = sum(g.usage.completion_tokens for g in got)
            same = sum(g.text == w for g, w in zip(got, want, strict=True))
            rows.append(
                f"| {mode} | {(small.requests - before) / tokens:.2f} | {took / tokens * 1000:.0f} | "
                f"{same} / {len(PROMPTS)} |"
            )
            print(rows[-1], flush=True)
        naming.greedy_settled = settled
        small.close()
    print("| candidates named | served member's requests / token | ms / token | greedy text equal to in process |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
