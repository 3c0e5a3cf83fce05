"""Where the pack's weights go on a task's prompts, and whether they point at the member that answers.

Usage:
    python benchmarks/task_weights.py --suite benchmarks/results/suite-default --task tomi --limit 200

Reads a suite run's per-item outcomes (``suite.json``: each member alone and the pack) and the
pack's weights of each prompt: those the run recorded, or, for a run made before the suite
kept them, computed again (one batched prefill per member, with the method's settings from
that run), and reports:

- each member's mean weight, and how often it has the most weight;
- the items grouped by the member with the most weight: how many, each member's score alone
  and the pack's on them; so a gap to the best member shows whether the weights follow the
  member that answers best, or another one.

Computing weights again reads the prompts, it does not generate: a few minutes where the
suite run took many.
The output goes to ``<suite>/<task>_weights.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from run_suite import PACKS  # noqa: E402

from packllm_integrations import PackEngine, load_member  # noqa: E402
from packllm_integrations.eval.results import EvalReport  # noqa: E402
from packllm_integrations.eval.suite import build_tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", type=Path, required=True, help="a suite run's folder (its suite.json)")
    parser.add_argument("--task", required=True, help="a generation task of that run (its prompts are rebuilt)")
    parser.add_argument("--limit", type=int, default=None, help="the --limit the run used")
    parser.add_argument("--seed", type=int, default=0, help="the --seed the run used")
    parser.add_argument("--method", default="pack", help="the pack method whose outcomes and settings to read")
    parser.add_argument("--pack", choices=PACKS, default="default")
    parser.add_argument("--batch", type=int, default=8, help="prompts per prefill")
    args = parser.parse_args()

    report = EvalReport.load(args.suite / "suite.json")
    result = report.task(args.task)
    if args.method not in result.per_item:
        raise SystemExit(f"--method {args.method!r} did not run {args.task!r} in {args.suite}")
    settings = report.settings.get("configs", {}).get(args.method, {})
    names = list(report.members)
    if set(names) - set(result.per_item):
        raise SystemExit(f"the run lacks members alone: {sorted(set(names) - set(result.per_item))}")
    given = ", ".join(f"{k}={v}" for k, v in settings.items()) or "the defaults"
    weights = result.weights.get(args.method, [])
    if len(weights) == result.items:  # the run recorded them (runs since the suite keeps generation weights)
        source = "the weights are the run's own"
    else:
        (task,) = build_tasks([args.task], limit=args.limit, seed=args.seed)
        prompts = list(task.prompts) if hasattr(task, "prompts") else [text for _, text, _ in task.pairs]
        if len(prompts) != result.items:
            raise SystemExit(f"{len(prompts)} prompts rebuilt, {result.items} items in the run: check --limit/--seed")
        engine = PackEngine([load_member(f"{n},backend=llama.cpp", progress=False) for n in PACKS[args.pack]])
        if engine.names != names:
            raise SystemExit(f"--pack {args.pack} is {engine.names}, the run's members are {names}")
        config = engine.resolve(**settings)
        started = time.perf_counter()
        weights = []
        for start in range(0, len(prompts), args.batch):
            weights += [e.weights for e in engine.weights_batch(prompts[start : start + args.batch], config)]
        source = f"the weights are computed again in {time.perf_counter() - started:.0f} s with the method's settings"

    top = [max(names, key=w.__getitem__) for w in weights]
    values = {m: result.per_item[m] for m in [*names, args.method]}
    n = len(weights)
    out = [
        f"# Where the weights go: {args.task} ({args.suite.name}, `{args.method}`)",
        "",
        f"`python benchmarks/task_weights.py --suite {args.suite} --task {args.task}"
        f"{f' --limit {args.limit}' if args.limit else ''}{f' --seed {args.seed}' if args.seed else ''}"
        f"{f' --method {args.method}' if args.method != 'pack' else ''}"
        f"{f' --pack {args.pack}' if args.pack != 'default' else ''}` ({n} prompts; {platform.machine()}, "
        f"{os.cpu_count()} cores). The outcomes are the run's own; {source} ({given}).",
        "",
        "| member | mean weight | items where it has the most weight | its score alone |",
        "|---|---:|---:|---:|",
    ]
    for m in names:
        mean = sum(w[m] for w in weights) / n
        out.append(f"| {m} | {mean:.3f} | {top.count(m)} | {sum(values[m]) / n:.3f} |")
    out += [
        "",
        f"Items grouped by the member with the most weight: each member's score alone and `{args.method}`'s.",
        "",
        f"| most weight | items | mean top weight | {' | '.join(names)} | {args.method} |",
        "|---|---:|---:|" + "---:|" * (len(names) + 1),
    ]
    for leader in names:
        idx = [i for i, t in enumerate(top) if t == leader]
        if not idx:
            continue
        cells = [f"{sum(values[m][i] for i in idx) / len(idx):.3f}" for m in [*names, args.method]]
        lead = sum(weights[i][leader] for i in idx) / len(idx)
        out.append(f"| {leader} | {len(idx)} | {lead:.3f} | {' | '.join(cells)} |")
    followed = sum(values[t][i] for i, t in enumerate(top)) / n
    best = max(names, key=lambda m: sum(values[m]))
    score = {m: sum(v) / n for m, v in values.items()}
    out += [
        "",
        f"Following the member with the most weight on each item would score {followed:.3f}; "
        f"the best member alone ({best}) {score[best]:.3f}; `{args.method}` {score[args.method]:.3f}.",
    ]
    text = "\n".join(out) + "\n"
    print(text)
    (args.suite / f"{args.task}_weights.md").write_text(text)


if __name__ == "__main__":
    main()
