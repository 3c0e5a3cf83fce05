"""``packllm eval`` and ``packllm eval-report``: the harness on the command line.

Examples::

    packllm eval bigbench:general_knowledge lee stdlib --limit 60
    packllm eval tests/data/eval_mc.jsonl --model smollm2-135m --model gemma3-270m --fixed 0.3,0.7
    packllm eval bigbench:code_line_description --reference qwen2.5-coder-0.5b --output runs/code
    packllm eval-report runs/mc/eval.json runs/text/eval.json --output docs --prefix results
    packllm eval suite --limit 5 --output runs/suite          # the suite (``packllm eval-suite`` too)
    packllm eval suite --tasks humaneval,medmcqa --method sim --method mined:sim,alignment=mined

Task specs: a ``.jsonl`` task file (format: :mod:`packllm_integrations.eval.task_files`),
``bigbench:NAME`` (BIG-bench multiple choice; needs ``$PACKLLM_BIGBENCH``), ``lee`` (news
prose), ``stdlib`` or ``stdlib:MOD+MOD`` (Python code), ``pydoc`` (Python's documentation).
``packllm`` adds the subcommands of :data:`SUBCOMMANDS` to its parser; ``packllm eval suite``
is read as ``packllm eval-suite`` (:func:`route`). Every engine setting's default shown in
the help is :class:`~packllm_integrations.GenerationConfig`'s.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import GenerationConfig
from ..errors import ConfigError
from .methods import FUSED_METHODS, MEMBER_MODES
from .multiple_choice import NORMALIZATIONS, MultipleChoiceTask

__all__ = [
    "SUBCOMMANDS",
    "add_eval_parser",
    "add_report_parser",
    "add_suite_parser",
    "parse_task",
    "route",
    "run_eval",
    "run_report",
    "run_suite_command",
]

_OUTPUTS = ("text", "markdown", "csv")
_DEFAULTS = GenerationConfig()
"""The engine's defaults: the one source of every default the help shows."""


def add_eval_parser(sub: Any) -> None:
    """Add ``packllm eval`` to the ``packllm`` subcommands."""
    p = sub.add_parser(
        "eval",
        help="evaluate a pack against its members (accuracy, bits per byte)",
        description="Score tasks with each member alone and with the pack's weightings, side by side, "
        "from one forward pass per member; print a table and optionally write JSON, Markdown, CSV and plots. "
        "'packllm eval suite --help': the evaluation suite (code, multiple choice, short answers, bits per byte) "
        "with paired significance.",
    )
    p.add_argument(
        "tasks",
        nargs="+",
        metavar="TASK",
        help="a .jsonl task file, bigbench:NAME, lee (news prose), stdlib[:MOD+MOD] (Python code) or pydoc",
    )
    p.add_argument("--model", action="append", metavar="SPEC", help="a member (repeat; default: the default pack)")
    p.add_argument(
        "--methods",
        default=",".join(("members", *FUSED_METHODS)),
        help="comma-separated columns: 'members' and weightings (default: %(default)s)",
    )
    p.add_argument("--fixed", metavar="W1,W2,...", help="also evaluate these fixed member weights")
    p.add_argument(
        "--members", choices=MEMBER_MODES, default="native", help="how members alone are scored (default: native)"
    )
    p.add_argument("--reference", help="force this member's vocabulary (default: per prompt, by the reference_by rule)")
    p.add_argument("--tau", type=float, help=f"temperature of sim weighting (default {_DEFAULTS.tau})")
    p.add_argument(
        "--scoring",
        metavar="MODE[,MODE]",
        help="how members are scored on the prompt for the weights: 'reference' or 'own' (default "
        f"{_DEFAULTS.scoring!r}); several modes, comma-separated, are compared side by side (e.g. reference,own)",
    )
    p.add_argument(
        "--alignment",
        metavar="MODE[,MODE]",
        help="how members with other tokenizers read the text: 'mined' or 'natural' (default "
        f"{_DEFAULTS.alignment!r}); several modes, comma-separated, are compared side by side",
    )
    p.add_argument(
        "--weights-on",
        choices=("context", "full"),
        default="context",
        help="compute weights on the prompt only (default) or on prompt and continuation",
    )
    p.add_argument("--limit", type=int, help="multiple-choice questions per task (a seeded sample)")
    p.add_argument("--fewshot", type=int, default=0, help="demonstrations before each question (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling, choice shuffling and demonstrations")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="tokens", help="option NLL normalisation")
    p.add_argument("--max-chars", type=int, default=12000, help="characters of text per built-in text task")
    p.add_argument("--window-chars", type=int, default=1200, help="characters scored per text window")
    p.add_argument("--context-chars", type=int, default=600, help="characters of context before each window")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per engine call (default 8)")
    p.add_argument("--bigbench", metavar="PATH", help="BIG-bench archive or folder (default: $PACKLLM_BIGBENCH)")
    p.add_argument("--output", metavar="DIR", help="write PREFIX.json, .md, .csv and plots there")
    p.add_argument("--prefix", default="eval", help="file name prefix in --output (default: eval)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--format", choices=_OUTPUTS, default="text", help="format of the printed tables")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)


def add_report_parser(sub: Any) -> None:
    """Add ``packllm eval-report`` (merge saved results into tables and plots)."""
    p = sub.add_parser("eval-report", help="merge saved eval results into one table and plots")
    p.add_argument("results", nargs="+", metavar="RESULTS.json", help="files written by packllm eval --output")
    p.add_argument("--output", metavar="DIR", help="write PREFIX.json, .md, .csv and plots there")
    p.add_argument("--prefix", default="eval", help="file name prefix in --output (default: eval)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--format", choices=_OUTPUTS, default="text", help="format of the printed tables")
    p.set_defaults(func=run_report)


def add_suite_parser(sub: Any) -> None:
    """Add ``packllm eval-suite`` (also reached as ``packllm eval suite``)."""
    from .suite import DEFAULT_TASKS

    p = sub.add_parser(
        "eval-suite",
        prog="packllm eval suite",
        help="the evaluation suite: every method and member side by side, with paired significance",
        description="Run the suite's tasks (HumanEval pass@1, multiple choice, short answers, bits per byte on "
        "prose, code and their mixture) with each member alone and each pack method, each run timed; compare "
        "every method with the best member alone (paired bootstrap interval, McNemar's exact test) and write "
        "a Markdown report, JSON and plots. Data: pip install 'packllm-integrations[suite]' and "
        "pip install --no-deps evals==3.0.1.post1 (see docs/EVALUATION.md).",
    )
    p.add_argument("--model", action="append", metavar="SPEC", help="a member (repeat; default: the default pack)")
    p.add_argument(
        "--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated task names (default: %(default)s); --list"
    )
    p.add_argument(
        "--method",
        action="append",
        metavar="SPEC",
        help="a pack method, repeatable: a weighting name (sim, opt...), or [LABEL:]key=value,... with any "
        "generation setting (e.g. mined:weighting=sim,alignment=mined); 'pack' is the engine's defaults "
        "(default: pack, paper, opt; paper: PackLLM-sim as published; a method equal to an earlier one is left out)",
    )
    p.add_argument("--no-members", action="store_true", help="leave out the members alone (no baseline then)")
    p.add_argument("--limit", type=int, help="at most N items per task (text tasks: N windows)")
    p.add_argument("--seed", type=int, default=0, help="seed of item sampling and of the bootstrap (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per scoring call (default 8)")
    p.add_argument("--generation-batch", type=int, default=4, help="prompts generated together (default 4)")
    p.add_argument("--max-new-tokens", type=int, help="cap the new tokens of generation tasks (a quick run)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    p.add_argument("--output", metavar="DIR", help="write PREFIX.json, PREFIX.md and plots there")
    p.add_argument("--prefix", default="suite", help="file name prefix in --output (default: suite)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_suite_command)


def parse_task(spec: str, args: argparse.Namespace) -> Any:
    """Build the task a command-line spec names (see the module docstring)."""
    from . import data
    from .task_files import load_task_file

    text_options = {"window_chars": args.window_chars, "context_chars": args.context_chars}
    name, _, rest = spec.partition(":")
    if spec.endswith(".jsonl") or Path(spec).is_file():
        task = load_task_file(spec, fewshot=args.fewshot, seed=args.seed, normalize=args.normalize, **text_options)
        if args.limit is not None and isinstance(task, MultipleChoiceTask):
            task = replace(task, items=data.sample_items(task.items, args.limit, args.seed))
        return task
    if name == "bigbench" and rest:
        return data.bigbench_task(
            rest,
            archive=args.bigbench,
            limit=args.limit,
            seed=args.seed,
            fewshot=args.fewshot,
            normalize=args.normalize,
        )
    if spec == "lee":
        return data.lee_task(max_chars=args.max_chars, **text_options)
    if spec == "pydoc":
        return data.pydoc_topics_task(max_chars=args.max_chars, **text_options)
    if name == "stdlib":
        modules = [m for m in rest.split("+") if m] if rest else list(data.DEFAULT_CODE_MODULES)
        return data.stdlib_code_task(modules, max_chars=args.max_chars, **text_options)
    raise ConfigError("task", spec, "a .jsonl file, bigbench:NAME, lee, stdlib[:MOD+MOD] or pydoc")


def run_eval(args: argparse.Namespace) -> int:
    """``packllm eval``: check every setting and build every task, then load the pack and run."""
    from ..host import check_settings, load_engine, parse_weights
    from .harness import evaluate
    from .methods import standard_methods

    overrides = {"reference": args.reference, "tau": args.tau}
    check_settings(overrides)
    fixed = None if args.fixed is None else parse_weights(args.fixed, parameter="fixed")
    if fixed is not None:
        check_settings({"weights": fixed})
    scorings = _modes(args.scoring, "scoring")
    alignments = _modes(args.alignment, "alignment")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tasks = [parse_task(spec, args) for spec in args.tasks]
    engine = load_engine(args.model, settings=overrides, progress=not args.quiet)
    shared = {k: v for k, v in overrides.items() if v is not None}
    columns = standard_methods(
        engine, methods, fixed=fixed, members=args.members, scorings=scorings, alignments=alignments, **shared
    )
    report = evaluate(
        engine, tasks, columns, batch_size=args.batch_size, weights_on=args.weights_on, progress=not args.quiet
    )
    report.settings["arguments"] = {k: v for k, v in vars(args).items() if k != "func"}
    _show(report, args)
    return 0


def _modes(text: str | None, setting: str) -> list[str] | None:
    """A comma-separated list of one setting's values, each checked (None: not given)."""
    if text is None:
        return None
    from ..host import check_settings

    modes = [m.strip() for m in text.split(",") if m.strip()]
    for mode in modes:
        check_settings({setting: mode})
    return modes


def run_report(args: argparse.Namespace) -> int:
    """``packllm eval-report``: merge saved results, print the tables, write outputs."""
    from .results import EvalReport

    reports = []
    for path in args.results:
        if not Path(path).is_file():
            raise ConfigError("results", path, "a results file written by packllm eval --output")
        reports.append(EvalReport.load(path))
    _show(EvalReport.merge(reports) if len(reports) > 1 else reports[0], args)
    return 0


def run_suite_command(args: argparse.Namespace) -> int:
    """``packllm eval suite``: build every task first (a bad name or missing data fails fast), then load and run."""
    from ..host import load_engine
    from .generation import GenerationTask
    from .stats import paired_bootstrap
    from .suite import SUITE_TASKS, build_tasks, parse_methods, run_suite
    from .suite_report import render_suite, write_suite

    if args.list:
        for spec in SUITE_TASKS.values():
            print(f"{spec.name:<12} {'(default) ' if spec.default else ''}{spec.description}")
        return 0
    paired_bootstrap([0.0], [0.0], resamples=args.resamples, confidence=args.confidence)  # checks both
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    tasks = build_tasks(names, limit=args.limit, seed=args.seed)
    if args.max_new_tokens is not None:
        tasks = [replace(t, max_new_tokens=args.max_new_tokens) if isinstance(t, GenerationTask) else t for t in tasks]
    engine = load_engine(args.model, progress=not args.quiet)
    methods = parse_methods(engine, args.method or ["pack", "paper", "opt"], members=not args.no_members)
    report = run_suite(
        engine,
        tasks,
        methods,
        batch_size=args.batch_size,
        generation_batch=args.generation_batch,
        progress=not args.quiet,
    )
    report.settings["arguments"] = {k: v for k, v in vars(args).items() if k != "func"}
    options = {"resamples": args.resamples, "confidence": args.confidence, "seed": args.seed}
    print(render_suite(report, **options))
    if args.output:
        for path in write_suite(report, args.output, args.prefix, plots=not args.no_plots, **options):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def route(argv: list[str]) -> list[str]:
    """``packllm eval suite ...`` as ``packllm eval-suite ...`` (other command lines unchanged).

    >>> route(["eval", "suite", "--limit", "2"])
    ['eval-suite', '--limit', '2']
    """
    return ["eval-suite", *argv[2:]] if argv[:2] == ["eval", "suite"] else argv


def _show(report: Any, args: argparse.Namespace) -> None:
    from .report import render_table, render_weights, write_outputs

    print(render_table(report, args.format))
    weights = render_weights(report, args.format)
    if report.tasks and any(t.weights for t in report.tasks):
        print(weights)
    if args.output:
        for path in write_outputs(report, args.output, args.prefix, plots=not args.no_plots):
            print(f"wrote {path}", file=sys.stderr)


SUBCOMMANDS = {"eval": add_eval_parser, "eval-report": add_report_parser, "eval-suite": add_suite_parser}
"""The subcommands this module adds to ``packllm``, by name."""
