"""Run the whole evaluation suite for one pack; outputs under ``benchmarks/results/suite-<pack>/``.

Every task of the suite (``packllm eval suite --list``) plus the two hooked in here:
``extraction`` (the 50 schema/prompt pairs of ``bench_constraints.py``, constrained to
their JSON Schema, scored by the share of correct fields) and ``agents`` (the 10 tool-calling
tasks of ``bench_agents.py``: right calls and an answer that holds both facts). Each member
alone and each pack method run every task; the report compares each with the best member
alone (paired bootstrap interval, McNemar's exact test) and times each run.

    python benchmarks/run_suite.py --pack default                 # the whole suite (hours)
    python benchmarks/run_suite.py --pack coder --limit 3         # a smoke run: 3 items per task
    python benchmarks/run_suite.py --pack three-tokenizer --method sim --method opt --method 'mined:sim,alignment=mined'
    python benchmarks/run_suite.py --pack default --merge OUT/medmcqa OUT/analogies   # join runs
    python benchmarks/run_suite.py --merge OUT/old --rename 'pack=paper:tau=1,reference_by=token'  # relabel

A whole run takes hours; running a few tasks per process (``--out`` a folder each) and joining
their ``suite.json`` with ``--merge`` keeps a crash from losing more than one part, and lets one
task get a method the others did not.

Packs: ``default`` (the default pack), ``coder`` (Qwen2.5-Coder 1.5B + 0.5B: one tokenizer,
unequal members), ``three-tokenizer`` (Qwen2.5-Coder 1.5B + Gemma-3 270M + SmolLM2 135M).
Members run on llama.cpp by default (``--backend transformers`` to change).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from packllm_integrations import DEFAULT_PACK, Constraint, GenerationConfig, PackEngine  # noqa: E402
from packllm_integrations.eval.generation import GenerationTask, Outcome  # noqa: E402
from packllm_integrations.eval.method_specs import parse_settings  # noqa: E402
from packllm_integrations.eval.results import EvalReport  # noqa: E402
from packllm_integrations.eval.suite import DEFAULT_TASKS, build_tasks, parse_methods, register_task, run_suite  # noqa: E402
from packllm_integrations.eval.suite_report import render_suite, write_suite  # noqa: E402

PACKS = {
    "default": list(DEFAULT_PACK),
    "coder": ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"],
    "three-tokenizer": ["qwen2.5-coder-1.5b", "gemma3-270m", "smollm2-135m"],
}
EXTRAS = ("extraction", "agents")


@dataclass(frozen=True)
class ExtractionTask:
    """The 50 extraction pairs, each constrained to its JSON Schema; an item's value is its share of correct fields."""

    pairs: tuple = ()
    max_new_tokens: int = 48
    name: str = "extraction"
    kind: str = field(default="generation", init=False)
    metric: str = field(default="correct_fields", init=False)
    higher_is_better: bool = field(default=True, init=False)
    binary: bool = field(default=False, init=False)

    def __len__(self) -> int:
        return len(self.pairs)

    def run(self, engine: PackEngine, config: GenerationConfig, *, batch_size: int, progress: bool) -> Outcome:
        from bench_constraints import correct_fields, parses

        values, outputs, details, weights = [], [], [], []
        for schema, text, expected in self.pairs:
            result = engine.generate(
                text,
                config,
                max_new_tokens=self.max_new_tokens,
                temperature=0.0,
                constraint=Constraint.json_schema(schema),
            )
            right, total = correct_fields(parses(result.text, schema), expected)
            values.append(right / total)
            outputs.append(result.text)
            details.append(f"{right}/{total} fields")
            weights.append(dict(result.weights))
        return Outcome(values, outputs, details, weights)


def _extraction(limit: int | None, seed: int) -> ExtractionTask:
    from bench_constraints import TASKS, prompt

    from packllm_integrations.eval.data import sample_items

    pairs = [
        (schema, prompt(instr, schema, text), expected) for schema, instr, items in TASKS for text, expected in items
    ]
    return ExtractionTask(tuple(sample_items(pairs, limit, seed)))


@dataclass(frozen=True)
class AgentTask:
    """The tool-calling tasks of ``bench_agents.py`` through LangChain's chat model; 1 when the calls are right
    and the answer holds both facts."""

    tasks: tuple = ()
    name: str = "agents"
    kind: str = field(default="generation", init=False)
    metric: str = field(default="tasks_done", init=False)
    higher_is_better: bool = field(default=True, init=False)
    binary: bool = field(default=True, init=False)

    def __len__(self) -> int:
        return len(self.tasks)

    def run(self, engine: PackEngine, config: GenerationConfig, *, batch_size: int, progress: bool) -> Outcome:
        from bench_agents import run

        from packllm_integrations.langchain import ChatPackLLM

        pack = PackEngine(engine.members, config, progress=False)
        chat = ChatPackLLM(engine=pack, max_tokens=64, temperature=0)
        values, outputs, details = [], [], []
        for _name, tools, question, wanted, facts in self.tasks:
            calls, text, turns = run(chat, tools, question, False)
            done = calls == wanted and bool(text) and all(f in text.lower() for f in facts)
            values.append(1.0 if done else 0.0)
            outputs.append(text)
            details.append(f"calls {sorted(calls)}, {turns} turns")
        return Outcome(values, outputs, details)


def _agents(limit: int | None, seed: int) -> AgentTask:
    from bench_agents import TASKS

    from packllm_integrations.eval.data import sample_items

    return AgentTask(tuple(sample_items(TASKS, limit, seed)))


register_task("extraction", _extraction, "50 JSON extraction pairs under their schema: share of correct fields")
register_task("agents", _agents, "10 tool-calling agent tasks (LangChain loop): right calls and answer")


def merged(folders: list[Path], renames: Sequence[str] = ()) -> EvalReport:
    """One report from several runs' ``suite.json``: their tasks, a task's methods joined across runs.

    Each of ``renames`` is ``OLD=NEW[:SETTINGS]``: method OLD of every run that has it is
    called NEW, and SETTINGS (``key=value,...``), when given, record what it ran with.
    """
    reports = []
    for folder in folders:
        path = folder / "suite.json" if folder.is_dir() else folder
        if not path.is_file():
            raise SystemExit(f"--merge: {folder} holds no suite.json")
        reports.append(EvalReport.load(path))
    for rename in renames:
        old, eq, rest = rename.partition("=")
        new, colon, text = rest.partition(":")
        if not eq or not old.strip() or not new.strip():
            raise SystemExit(f"--rename {rename!r}: expected OLD=NEW or OLD=NEW:key=value,...")
        settings = parse_settings(text) if colon else None
        found = [r.rename(old.strip(), new.strip(), settings) for r in reports if old.strip() in r.method_names]
        if not found:
            raise SystemExit(f"--rename {rename!r}: no run has a method {old.strip()!r}")
    report = EvalReport.merge(reports)
    # a run that is itself a merge (a report joined again with a new part) brings its own parts
    parts = [part for r in reports for part in (r.settings.get("parts") or [r.settings])]
    report.settings = {
        "suite": True,
        "pack": parts[0].get("pack"),
        "backend": parts[0].get("backend"),
        "seconds": round(sum(p.get("seconds", 0.0) for p in parts), 1),
        "configs": {name: c for p in parts for name, c in p.get("configs", {}).items()},
        "commands": [p.get("command") for p in parts],
        "parts": parts,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", choices=PACKS, default="default")
    parser.add_argument("--backend", default="llama.cpp", help="members' backend (default llama.cpp)")
    parser.add_argument("--tasks", default=",".join((*DEFAULT_TASKS, *EXTRAS)), help="comma-separated task names")
    parser.add_argument("--method", action="append", metavar="SPEC", help="a pack method (default: pack, paper, opt)")
    parser.add_argument("--limit", type=int, help="at most N items per task (a smoke run)")
    parser.add_argument("--max-new-tokens", type=int, help="cap generation tasks' new tokens (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, help="output folder (default: benchmarks/results/suite-<pack>)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--no-members", action="store_true", help="pack methods only (to --merge into a run that has the members)"
    )
    parser.add_argument(
        "--merge", nargs="+", type=Path, metavar="FOLDER", help="join earlier runs' suite.json into --out; runs nothing"
    )
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW[:SETTINGS]",
        help="with --merge: call method OLD NEW; SETTINGS (key=value,...) record what it ran with",
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="METHOD",
        help="also compare every pack method with METHOD (e.g. paper), each task",
    )
    args = parser.parse_args()
    out = args.out or HERE / "results" / f"suite-{args.pack}"
    if args.rename and not args.merge:
        parser.error("--rename needs --merge")
    if args.merge:
        report = merged(args.merge, args.rename)
        for path in write_suite(report, out, "suite", resamples=args.resamples, seed=args.seed, against=args.against):
            print(f"wrote {path}", file=sys.stderr)
        return
    tasks = build_tasks([t.strip() for t in args.tasks.split(",") if t.strip()], limit=args.limit, seed=args.seed)
    if args.max_new_tokens:
        tasks = [
            replace(t, max_new_tokens=args.max_new_tokens) if isinstance(t, (GenerationTask, ExtractionTask)) else t
            for t in tasks
        ]
    specs = [f"{name},backend={args.backend}" for name in PACKS[args.pack]]
    start = time.perf_counter()
    engine = PackEngine.from_models(specs, progress=not args.quiet)
    loaded = time.perf_counter() - start
    methods = parse_methods(engine, args.method or ["pack", "paper", "opt"], members=not args.no_members)
    unknown = [name for name in args.against if name not in {m.name for m in methods}]
    if unknown:  # before the run, not after its hours
        parser.error(f"--against {unknown[0]!r}: not a method of this run ({', '.join(m.name for m in methods)})")
    report = run_suite(engine, tasks, methods, progress=not args.quiet)
    report.settings.update({"pack": args.pack, "backend": args.backend, "load_seconds": round(loaded, 1)})
    report.settings["command"] = " ".join(["python", "benchmarks/run_suite.py", *sys.argv[1:]])
    for path in write_suite(report, out, "suite", resamples=args.resamples, seed=args.seed, against=args.against):
        print(f"wrote {path}", file=sys.stderr)
    print(render_suite(report, resamples=args.resamples, seed=args.seed, against=args.against))


if __name__ == "__main__":
    main()
