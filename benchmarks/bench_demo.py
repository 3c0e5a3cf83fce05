"""``make demo``'s generation under the default backend and under transformers, in one run.

Runs ``packllm generate --max-new-tokens 64 PROMPT`` (what ``make demo`` runs once set up) as a
child process per backend, alternating, and reports each one's wall time and peak memory
(the child's maximum resident set size) and their ratios. The float32 copies the
transformers path reads must already be cached (a first load builds them), so the times are
those of a later run, not of a new machine.

    python benchmarks/bench_demo.py --repeats 2 --out benchmarks/results/demo.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "def is_prime(n):"  # what `make demo` asks (the Makefile's PROMPT)
BACKENDS = {"default (llama.cpp)": {}, "transformers": {"PACKLLM_BACKEND": "transformers"}}


def run_once(extra_env: dict[str, str], tokens: int) -> float:
    """Wall seconds of one generation in a child process."""
    packllm = str(Path(sys.executable).with_name("packllm"))
    start = time.perf_counter()
    cmd = [packllm, "generate", "--quiet", "--max-new-tokens", str(tokens), PROMPT]
    subprocess.run(cmd, env={**os.environ, **extra_env}, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo.md"))
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in BACKENDS}
    peaks: dict[str, float] = {}
    order = ["transformers", "default (llama.cpp)"]
    for name in order:  # one warm-up each (page cache), not counted
        run_once(BACKENDS[name], 4)
    for name in reversed(order):
        peaks[name] = _peak_alone(BACKENDS[name], args.max_new_tokens)
    for _ in range(args.repeats):
        for name in order:
            walls[name].append(run_once(BACKENDS[name], args.max_new_tokens))
    base, new = statistics.median(walls["transformers"]), statistics.median(walls["default (llama.cpp)"])
    lines = [
        "# `make demo`: the default backend against transformers",
        "",
        f"`python benchmarks/bench_demo.py --repeats {args.repeats}`; {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. `packllm generate --max-new-tokens "
        f"{args.max_new_tokens}` on the default pack, as `make demo` runs it once set up (models cached); "
        "median wall time of the repeats, peak memory of one run in a child process of its own.",
        "",
        "| backend | wall s (median) | peak memory MB |",
        "|---|---|---|",
    ]
    for name in BACKENDS:
        lines.append(f"| {name} | {statistics.median(walls[name]):.1f} | {peaks[name]:.0f} |")
    lines += [
        "",
        f"**Default / transformers: {base / new:.2f}x faster, "
        f"{peaks['transformers'] / peaks['default (llama.cpp)']:.2f}x less peak memory.**",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


def _peak_alone(env: dict[str, str], tokens: int) -> float:
    """Peak memory (MB) of one run measured in a fresh Python child (ru_maxrss of its children)."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    packllm = str(Path(sys.executable).with_name("packllm"))
    cmd = [sys.executable, "-c", code, packllm, "generate", "--quiet", "--max-new-tokens", str(tokens), PROMPT]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


if __name__ == "__main__":
    main()
