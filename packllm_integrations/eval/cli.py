"""``packllm eval`` and ``packllm eval-report``: the harness on the command line.

Examples::

    packllm eval bigbench:general_knowledge lee stdlib --limit 60
    packllm eval tests/data/eval_mc.jsonl --model smollm2-135m --model gemma3-270m --fixed 0.3,0.7
    packllm eval bigbench:code_line_description --reference qwen2.5-coder-0.5b --output runs/code
    packllm eval-report runs/mc/eval.json runs/text/eval.json --output docs --prefix results

Task specs: a ``.jsonl`` task file (format: :mod:`packllm_integrations.eval.task_files`),
``bigbench:NAME`` (BIG-bench multiple choice; needs ``$PACKLLM_BIGBENCH``), ``lee`` (news
prose), ``stdlib`` or ``stdlib:MOD+MOD`` (Python code), ``pydoc`` (Python's documentation).
``packllm`` adds the subcommands of :data:`SUBCOMMANDS` to its parser.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .methods import FUSED_METHODS, MEMBER_MODES
from .multiple_choice import NORMALIZATIONS, MultipleChoiceTask

__all__ = ["SUBCOMMANDS", "add_eval_parser", "add_report_parser", "parse_task", "run_eval", "run_report"]

_OUTPUTS = ("text", "markdown", "csv")


def add_eval_parser(sub: Any) -> None:
    """Add ``packllm eval`` to the ``packllm`` subcommands."""
    p = sub.add_parser(
        "eval",
        help="evaluate a pack against its members (accuracy, bits per byte)",
        description="Score tasks with each member alone and with the pack's weightings, side by side, "
        "from one forward pass per member; print a table and optionally write JSON, Markdown, CSV and plots.",
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
    p.add_argument("--reference", help="force this member's vocabulary (default: lowest prompt perplexity)")
    p.add_argument("--tau", type=float, help="temperature of sim weighting (default 1.0)")
    p.add_argument(
        "--scoring",
        metavar="MODE[,MODE]",
        help="how members are scored on the prompt for the weights: the engine's 'reference' (default) or "
        "'own'; several modes, comma-separated, are compared side by side (e.g. reference,own)",
    )
    p.add_argument(
        "--alignment",
        metavar="MODE[,MODE]",
        help="how members with other tokenizers read the text: 'mined' (default) or 'natural'; several modes, "
        "comma-separated, are compared side by side",
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


def _show(report: Any, args: argparse.Namespace) -> None:
    from .report import render_table, render_weights, write_outputs

    print(render_table(report, args.format))
    weights = render_weights(report, args.format)
    if report.tasks and any(t.weights for t in report.tasks):
        print(weights)
    if args.output:
        for path in write_outputs(report, args.output, args.prefix, plots=not args.no_plots):
            print(f"wrote {path}", file=sys.stderr)


SUBCOMMANDS = {"eval": add_eval_parser, "eval-report": add_report_parser}
"""The subcommands this module adds to ``packllm``, by name."""
