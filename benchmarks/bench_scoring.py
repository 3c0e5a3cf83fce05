"""What scoring multiple-choice options costs, with and without reading each question's context once.

Usage:
    python benchmarks/bench_scoring.py [--items 6] [--tasks medmcqa,logiqa,socialiqa] [--out FILE]
    python benchmarks/bench_scoring.py --cost [--items 6] [--rounds 2]   # every weighting and rule, as shipped

The suite's multiple-choice tasks score every option as its own (context, option) pair, so a
question's context is read once per option. Two things now read it once per question, and
this script measures both in one run, on the default pack (llama.cpp members, 2 cores):

- **shared prefixes** (llama.cpp backend): rows of a prefill that start with an earlier
  row's ids copy that row's KV cells and logits instead of reading the ids again;
- **weights once per context** (``PackEngine.score``): pairs after the same context reuse
  the first pair's weights and prompt perplexities.

"before" turns both off in this process (the shared-prefix threshold is set past any row,
and no two contexts are taken as equal), "after" is the package as it is. Each method
scores the same pairs in batches of 8 (the harness's default) under both; the script prints
the wall time of each, the ratio, the largest difference in any option's log-likelihood
between the two (and, for the members alone, between each and every pair scored in a request
of its own), and whether every predicted option is the same. Methods: each member alone (a one-member
pack), the pack's defaults (``sim``, natural alignment) and ``fusion="sequence"`` with own
scoring. The members' forward passes alone are the members-alone rows: the last column puts
each pack method's time over their sum.

``--cost`` measures only the package as shipped, for every weighting (``sim``, ``opt``,
``uniform``) and fusion rule (the default ``mixture``; ``logits``, with ``sim`` and ``opt``;
``union``, ``gated``, ``contrastive``, ``sequence``): each
method's time over the members' forward passes on the same pairs, in interleaved rounds
(the least of them, and the medians), written to ``results/scoring_cost.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from packllm_integrations import DEFAULT_PACK, PackEngine, ScoreResult  # noqa: E402
from packllm_integrations.backends import llama_cpp_context  # noqa: E402
from packllm_integrations.decoding import scoring  # noqa: E402
from packllm_integrations.eval.suite import build_tasks  # noqa: E402

BATCH = 8


@contextlib.contextmanager
def before() -> Iterator[None]:
    """Both savings off: no row shares a prefix, and no two contexts are taken as the same."""
    threshold, key = llama_cpp_context.SHARED_PREFIX, scoring._own_key
    llama_cpp_context.SHARED_PREFIX = 1 << 30
    scoring._own_key = lambda planned, b: object()  # type: ignore[assignment]  # never equal to another
    try:
        yield
    finally:
        llama_cpp_context.SHARED_PREFIX, scoring._own_key = threshold, key


def timed(engine: PackEngine, pairs: list[tuple[str, str]], settings: dict) -> tuple[float, list[ScoreResult]]:
    start = time.perf_counter()
    out: list[ScoreResult] = []
    for i in range(0, len(pairs), BATCH):
        out += engine.score(pairs[i : i + BATCH], **settings)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=6, help="questions per task")
    parser.add_argument("--tasks", default="medmcqa,logiqa,socialiqa")
    parser.add_argument("--out", type=Path, help="default: results/scoring.md (results/scoring_cost.md with --cost)")
    parser.add_argument("--cost", action="store_true", help="every weighting and rule against the members, as shipped")
    parser.add_argument("--rounds", type=int, default=3, help="with --cost: interleaved rounds (the least is kept)")
    args = parser.parse_args()
    tasks = build_tasks(args.tasks.split(","), limit=args.items, seed=0)
    pack = PackEngine.from_models([f"{n},backend=llama.cpp" for n in DEFAULT_PACK], progress=False)
    if args.cost:
        cost(pack, tasks, args)
        return
    args.out = args.out or HERE / "results" / "scoring.md"
    methods: list[tuple[str, PackEngine, dict]] = [(m.name, PackEngine([m], progress=False), {}) for m in pack.members]
    methods += [("pack (sim, natural)", pack, {}), ("sequence (own)", pack, {"fusion": "sequence", "scoring": "own"})]
    warm = tasks[0].pairs()[:2]
    for _, engine, settings in methods:
        engine.score(warm, **settings)  # tokenizer indexes, projections' maps
    for member in pack.members:  # the maps of every reference a prompt may pick
        pack.score(warm, reference=member.name)
    lines = [
        "# Scoring multiple-choice options: each question's context read once",
        "",
        f"`python benchmarks/bench_scoring.py --items {args.items} --tasks {args.tasks}`; default pack on llama.cpp, "
        f"{torch.get_num_threads()} threads, {platform.machine()}, Python {platform.python_version()}. Batches of "
        f"{BATCH} pairs. before = shared prefixes and per-context weights off in the same process; after = as "
        "shipped. Differences: the largest gap in any option's log-likelihood (nats) between the two modes, and "
        "(members alone) between each mode and every pair scored in a request of its own. after / members: the "
        "pack method's time over the sum of the members-alone times (their forward passes), both after.",
        "",
        "| task | pairs | method | before s | after s | speed-up | before - after | before - alone | after - alone "
        "| same choices | after / members |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    print("\n".join(lines), flush=True)
    for task in tasks:
        pairs = task.pairs()
        members = {"before": 0.0, "after": 0.0}
        for name, engine, settings in methods:
            with before():
                slow, old = timed(engine, pairs, settings)
            fast, new = timed(engine, pairs, settings)
            if engine is not pack:
                members["before"] += slow
                members["after"] += fast
            diff = _largest(old, new)
            same = task.score(old) == task.score(new)
            if engine is pack:
                apart = "| - | - "
            else:  # each pair in a request of its own: what neither saving can change
                alone = [engine.score([pair])[0] for pair in pairs]
                apart = f"| {_largest(old, alone):.1e} | {_largest(new, alone):.1e} "
            share = "" if engine is not pack else f"{fast / members['after']:.2f}x"
            row = f"| {task.name} | {len(pairs)} | {name} | {slow:.1f} | {fast:.1f} | {slow / fast:.2f}x | {diff:.1e} "
            row += apart + "| "
            lines.append(row + f"{'yes' if same else 'no'} | {share} |")
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


COST_METHODS = {
    "sim (the default)": {},
    "opt": {"weighting": "opt"},
    "sim, logits": {"fusion": "logits"},
    "opt, logits": {"weighting": "opt", "fusion": "logits"},
    "uniform": {"weighting": "uniform"},
    "union": {"fusion": "union"},
    "gated": {"fusion": "gated"},
    "contrastive": {"fusion": "contrastive"},
    "sequence (own)": {"fusion": "sequence", "scoring": "own"},
}


def cost(pack: PackEngine, tasks: list, args: argparse.Namespace) -> None:
    """Each weighting and rule against the members' own passes over the same pairs (--cost)."""
    solos = [(m.name, PackEngine([m], progress=False)) for m in pack.members]
    warm = tasks[0].pairs()[:2]
    for _, solo in solos:
        solo.score(warm)
    for member in pack.members:  # every vocabulary map and projection, whichever member a prompt picks
        pack.score(warm, reference=member.name)
    for settings in COST_METHODS.values():
        pack.score(warm, **settings)
    lines = [
        "# Scoring multiple-choice options: every weighting and fusion rule against the members",
        "",
        f"`python benchmarks/bench_scoring.py --cost --items {args.items} --tasks {args.tasks} --rounds "
        f"{args.rounds}`; default pack on llama.cpp, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"Python {platform.python_version()}. Each task's pairs scored in batches of {BATCH} by each member alone "
        "(a one-member pack: its forward passes) and by the pack under each setting, interleaved batch by batch "
        "(every method on a batch, then the next batch) in each round; each batch's least time over the rounds "
        "(the least disturbed: the machine is shared), summed. Ratio: the setting's time over the sum of the "
        "members' (target <= 1.5); the last row: whole rounds' medians.",
        "",
        "| task | pairs | members' sum s | " + " | ".join(COST_METHODS) + " |",
        "|---|---:|---:|" + "---:|" * len(COST_METHODS),
    ]
    print("\n".join(lines), flush=True)
    totals = dict.fromkeys(["members", *COST_METHODS], 0.0)
    medians = dict.fromkeys(["members", *COST_METHODS], 0.0)
    for task in tasks:
        pairs = task.pairs()
        batches = [pairs[i : i + BATCH] for i in range(0, len(pairs), BATCH)]
        names = ["members", *COST_METHODS]
        runs: dict[str, list[list[float]]] = {name: [[] for _ in batches] for name in names}
        for _ in range(args.rounds):  # batch by batch, every method in turn: a slow spell hits them all
            for j, batch in enumerate(batches):
                runs["members"][j].append(sum(timed(solo, batch, {})[0] for _, solo in solos))
                for name, settings in COST_METHODS.items():
                    runs[name][j].append(timed(pack, batch, settings)[0])
        rounds = {name: [sum(r[i] for r in runs[name]) for i in range(args.rounds)] for name in names}
        least = {name: sum(min(t) for t in runs[name]) for name in names}
        for name, t in rounds.items():
            totals[name] += least[name]
            medians[name] += statistics.median(t)
        cells = " | ".join(f"{least[n]:.1f} s, {least[n] / least['members']:.2f}x" for n in COST_METHODS)
        lines.append(f"| {task.name} | {len(pairs)} | {least['members']:.1f} | {cells} |")
        print(lines[-1], flush=True)
    cells = " | ".join(f"**{totals[n] / totals['members']:.2f}x**" for n in COST_METHODS)
    lines.append(f"| all | | {totals['members']:.1f} | {cells} |")
    cells = " | ".join(f"{medians[n] / medians['members']:.2f}x" for n in COST_METHODS)
    lines.append(f"| all, medians | | {medians['members']:.1f} | {cells} |")
    print("\n".join(lines[-2:]), flush=True)
    out = args.out or HERE / "results" / "scoring_cost.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def _largest(a: list[ScoreResult], b: list[ScoreResult]) -> float:
    """The largest difference between two runs' log-likelihoods of the same options."""
    return max(abs(x.logprob - y.logprob) for x, y in zip(a, b, strict=True))


if __name__ == "__main__":
    main()
