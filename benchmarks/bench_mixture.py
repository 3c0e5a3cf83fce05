"""The default fusion rule's cost per step: the mixture summed as probabilities against the
same mixture added in log space, on the scores the default pack really fuses.

Usage:
    python benchmarks/bench_mixture.py [--tokens 32] [--reps 15] [--out FILE]

The default pack (llama.cpp members, each GGUF file as it is) generates greedily for three
prompts (prose, Python, a chat); every step's fusion inputs (the members' scores in the
reference vocabulary and the weights) are kept. Then, in one process and interleaved, each
step's mixture is computed both ways, ``reps`` times each:

- **log space** (``_mixture_in_logs``, the rule as it was): each member's log-softmax plus the
  log of its weight, added pair by pair with ``logaddexp``;
- **probabilities** (``_mixture``, the rule as shipped): each member's softmax times its weight,
  summed, one logarithm; a row where some column underflows to 0 while a member's score there
  is finite is summed in log space again.

It prints and writes the median time per step of each, their ratio, how many steps needed
the log-space fallback, the largest difference between the two results on finite columns, and
whether every step's greedy token is the same.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from packllm_integrations import DEFAULT_PACK, PackEngine  # noqa: E402
from packllm_integrations.decoding import fusion  # noqa: E402
from packllm_integrations.decoding import session as session_module  # noqa: E402

PROMPTS = [
    "The history of the city begins with a small settlement on the river, where traders",
    "def merge_sorted(left: list[int], right: list[int]) -> list[int]:\n    ",
    [{"role": "user", "content": "Explain in two sentences why the sky is blue."}],
]


def captured_steps(engine: PackEngine, tokens: int) -> list[tuple[list[torch.Tensor | None], torch.Tensor]]:
    """Every step's fusion inputs while the pack generates ``tokens`` tokens for each prompt."""
    steps: list[tuple[list[torch.Tensor | None], torch.Tensor]] = []
    real = session_module.fuse_by

    def keep(rule, scores, weights):
        steps.append(([None if s is None else s.clone() for s in scores], weights.clone()))
        return real(rule, scores, weights)

    session_module.fuse_by = keep
    try:
        for prompt in PROMPTS:
            engine.generate(prompt, max_new_tokens=tokens)
    finally:
        session_module.fuse_by = real
    return steps


def timed(call, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--reps", type=int, default=15, help="times each step's mixture is computed each way")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mixture.md")
    args = parser.parse_args()

    engine = PackEngine.from_models([f"{name},backend=llama.cpp" for name in DEFAULT_PACK], progress=False)
    steps = captured_steps(engine, args.tokens)
    fallbacks = 0
    real_logs = fusion._mixture_in_logs

    def counted(*a):
        nonlocal fallbacks
        fallbacks += 1
        return real_logs(*a)

    new_ms, old_ms, worst, same = [], [], 0.0, 0
    start = time.perf_counter()
    for scores, weights in steps:
        part = fusion._taking_part(scores, weights)
        fusion._mixture_in_logs = counted
        try:
            new = fusion._mixture(scores, weights)
        finally:
            fusion._mixture_in_logs = real_logs
        old = real_logs(scores, weights, part)
        both = torch.isfinite(old) & torch.isfinite(new)
        worst = max(worst, float((old[both] - new[both]).abs().max()))
        same += int(torch.equal(old.argmax(-1), new.argmax(-1)))
        for _ in range(2):  # interleaved: log space, then probabilities, twice
            old_ms.append(1000 * timed(lambda s=scores, w=weights, p=part: real_logs(s, w, p), args.reps))
            new_ms.append(1000 * timed(lambda s=scores, w=weights: fusion._mixture(s, w), args.reps))
    seconds = time.perf_counter() - start
    width = steps[0][0][0].shape[-1] if steps and steps[0][0][0] is not None else 0
    old_med, new_med = statistics.median(old_ms), statistics.median(new_ms)
    lines = [
        "# The mixture's cost per step: probabilities against log space",
        "",
        f"`python benchmarks/bench_mixture.py --tokens {args.tokens} --reps {args.reps}` in one run: the default "
        f"pack on llama.cpp ({', '.join(DEFAULT_PACK)}), greedy, {args.tokens} tokens for each of "
        f"{len(PROMPTS)} prompts (prose, Python, a chat); {len(steps)} steps' fusion inputs kept, each step's "
        f"mixture then computed both ways {args.reps} times, twice, interleaved ({seconds:.0f} s). "
        f"torch threads {torch.get_num_threads()}, {platform.machine()}.",
        "",
        "| mixture | median ms per step | against log space |",
        "|---|---:|---:|",
        f"| log space (`logaddexp`, the rule as it was) | {old_med:.2f} | 1.00 |",
        f"| probabilities (as shipped) | {new_med:.2f} | {new_med / old_med:.2f} |",
        "",
        f"- Steps: {len(steps)}; the reference vocabulary of the first: {width} columns.",
        f"- Steps that needed the log-space fallback (a column underflowed): {fallbacks} of {len(steps)}.",
        f"- Largest difference between the two on finite columns: {worst:.2e} (log-probability).",
        f"- The same greedy token on {same} of {len(steps)} steps.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
