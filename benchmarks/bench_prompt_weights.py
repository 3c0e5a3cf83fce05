"""The weights the default pack gives on short prose and code prompts (default settings).

Usage:
    python benchmarks/bench_prompt_weights.py [--out FILE] [--label NAME]

Prints a Markdown table: per prompt, the reference member, each member's prompt
perplexity and its `sim` weight. Uses only the engine's public API, so the same script
measures any version of the package (put that version first on PYTHONPATH), which is how
benchmarks/results/prompt_weights.md compares the prompt span before and after it was
made the same for every member.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from packllm_integrations import DEFAULT_PACK, PackEngine

PROMPTS = {
    "prose": [
        "The three most important ideas in computer science are",
        "The history of the printing press begins in the fifteenth century, when",
        "Photosynthesis is the process by which plants",
        "After the storm, the small fishing village",
    ],
    "code": [
        "def is_prime(n):",
        "import numpy as np\nimport pandas as pd\n\ndef load(path):",
        "SELECT name, email FROM users WHERE",
        "for (int i = 0; i < n; i++) {",
    ],
}
SHORT = {"smollm2-135m": "SmolLM2", "gemma3-270m": "Gemma3", "qwen2.5-coder-0.5b": "Qwen-coder"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--label", default="this version", help="a name for the version measured")
    args = parser.parse_args()
    torch.set_num_threads(2)
    engine = PackEngine.from_models(list(DEFAULT_PACK), progress=False)
    names = [SHORT.get(n, n) for n in engine.names]
    lines = [
        f"Weights of the default pack ({args.label}): `sim`, tau 1, default alignment; perplexity (weight).",
        "",
        "| kind | prompt | reference | " + " | ".join(names) + " |",
        "|---|---|---|" + "---:|" * len(names),
    ]
    for kind, prompts in PROMPTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            events = engine.weights_batch(prompts)
        for prompt, event in zip(prompts, events, strict=True):
            cells = []
            for name in engine.names:
                ppl = event.prompt_perplexity[name]
                cells.append(f"{'n/a' if ppl is None else f'{ppl:,.1f}'} ({event.weights[name]:.3f})")
            shown = prompt.replace("\n", "\\n").replace("|", "\\|")
            ref = SHORT.get(event.reference, event.reference)
            lines.append(f"| {kind} | `{shown}` | {ref} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
