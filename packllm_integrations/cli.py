"""The ``packllm`` command: fused generation, weights and the model catalog.

Examples::

    packllm generate "The capital of France is"
    packllm generate --model smollm2-135m --model gemma3-270m --weighting opt --json "def add(a, b):"
    packllm weights "import numpy as np"
    packllm models
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import STRATEGIES, TOKEN_FUSIONS, GenerationConfig
from .errors import ConfigError, PackLLMError, PromptError
from .eval.cli import SUBCOMMANDS as EVAL_SUBCOMMANDS
from .eval.cli import route
from .loading.catalog import CATALOG, DEFAULT_PACK, is_installed

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = dict(EVAL_SUBCOMMANDS)
"""Subcommands added beside generate, weights and models: name -> function adding its parser
(``packllm eval``, ``packllm eval-report`` and ``packllm eval-suite``, also reached as
``packllm eval suite``). The parser sets ``func``, called with the parsed arguments, which
returns an exit code."""

_DEFAULTS = GenerationConfig()
"""The engine's defaults: the one source of every default the help shows."""


def _pack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        metavar="SPEC",
        help="a member: catalog name, model folder or .gguf file, optionally ',name=N,device=D,dtype=T'; "
        f"repeat for each member (default pack: {', '.join(DEFAULT_PACK)})",
    )
    parser.add_argument("--weighting", choices=STRATEGIES, help=f"fusion weights (default: {_DEFAULTS.weighting})")
    parser.add_argument("--weights", help="comma-separated member weights (implies --weighting fixed)")
    parser.add_argument("--tau", type=float, help=f"temperature of sim weighting (default {_DEFAULTS.tau})")
    parser.add_argument("--reference", help="member whose vocabulary is used (default: per prompt, see --reference-by)")
    parser.add_argument(
        "--reference-by",
        choices=("token", "byte"),
        help=f"without --reference, choose it by the lowest perplexity per token or per byte (default: "
        f"{_DEFAULTS.reference_by})",
    )
    parser.add_argument(
        "--scoring",
        choices=("reference", "own"),
        help="members with other tokenizers score the prompt on the reference's translated tokens (reference) "
        f"or on their own tokenization, per byte (own); default: {_DEFAULTS.scoring}",
    )
    parser.add_argument(
        "--alignment",
        choices=("mined", "natural"),
        help="how members with other tokenizers read the text: the reference's tokens translated through the "
        f"vocabulary map (mined) or their own tokenization (natural); default: {_DEFAULTS.alignment}",
    )
    parser.add_argument(
        "--on-member-error",
        choices=("raise", "drop"),
        help="a member that fails (NaN or infinite scores, an error) stops the request (raise) "
        "or leaves it (drop: the others' weights are renormalised); default: "
        f"{_DEFAULTS.on_member_error}",
    )
    parser.add_argument(
        "--chat", action="store_true", help="render PROMPT as one user message with each member's template"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("prompt", metavar="PROMPT", help="prompt text ('-' reads standard input)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="packllm", description="PackLLM test-time fusion of language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text with a fused pack")
    _pack_options(gen)
    gen.add_argument(
        "--max-new-tokens", type=int, default=None, help=f"most tokens to generate (default {_DEFAULTS.max_new_tokens})"
    )
    gen.add_argument("--temperature", type=float, help=f"0 is greedy decoding (default {_DEFAULTS.temperature:g})")
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=None, metavar="STR", help="a stop string (repeatable)")
    gen.add_argument(
        "--fusion",
        choices=TOKEN_FUSIONS,
        help="how the weighted members' scores become one distribution: weighted sum of logits (logits), mixture "
        "of probabilities (mixture), mixture over the union of each member's best tokens (union), the leading "
        "member alone where it is confident (gated), or the pack against its weakest member (contrastive); "
        f"default: {_DEFAULTS.fusion}",
    )
    gen.add_argument(
        "--union-k", type=int, help=f"with --fusion union: each member's best tokens (default {_DEFAULTS.union_k})"
    )
    gen.add_argument(
        "--gate",
        type=float,
        help=f"with --fusion gated: the leader's confidence to follow it (default {_DEFAULTS.gate})",
    )
    gen.add_argument(
        "--contrast",
        type=float,
        help=f"with --fusion contrastive: the weakest member's negative weight (default {_DEFAULTS.contrast})",
    )
    gen.add_argument("--stream", action="store_true", help="print text as it is generated (with --json: JSON lines)")
    shape = gen.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", metavar="FILE", help="output JSON valid against the JSON Schema in FILE")
    shape.add_argument("--regex", metavar="PATTERN", help="output that matches the regular expression")
    shape.add_argument("--grammar", metavar="FILE", help="output in the language of the Lark grammar in FILE")
    gen.add_argument(
        "--json-string-repeats",
        type=int,
        metavar="N",
        help="under a JSON constraint, end a string whose text repeats one span N times in a row (default 2; 0: never)",
    )
    gen.set_defaults(func=_generate)

    weights = sub.add_parser("weights", help="show a prompt's fusion weights and prompt perplexities")
    _pack_options(weights)
    weights.set_defaults(func=_weights)

    models = sub.add_parser("models", help="list the catalog and which bundled models are installed")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_models)

    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def _prompt(args: argparse.Namespace) -> Any:
    from .host import merge_messages

    if args.prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PromptError("prompt", f"<standard input, byte {exc.start}>", "UTF-8 text") from None
    else:
        text = args.prompt
    return merge_messages([("user", text)]) if args.chat else text


def _engine(args: argparse.Namespace) -> Any:
    """Check the settings first (a bad value fails in milliseconds), then load the pack."""
    from .host import load_engine

    return load_engine(args.model, settings=_overrides(args), progress=not args.quiet)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command's generation settings, by their engine names (None: not given)."""
    from .host import SETTINGS, parse_weights

    out = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    if out["weights"] is not None:
        out["weights"] = parse_weights(out["weights"])
    return out


def _generate(args: argparse.Namespace) -> int:
    from .events import FinishEvent, TextEvent, WeightsEvent
    from .host import weights_metadata

    prompt, overrides = _prompt(args), {**_overrides(args), "constraint": _constraint(args)}
    engine = _engine(args)
    if not args.stream:
        result = engine.generate(prompt, **overrides)
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            print(result.text)
            _summary(result.weights, result.prompt_perplexity, result.reference)
        return 0
    for event in engine.stream(prompt, **overrides):
        if args.json:
            if isinstance(event, WeightsEvent):
                print(json.dumps({"event": "weights", **weights_metadata(event)}, ensure_ascii=False), flush=True)
            elif isinstance(event, TextEvent):
                print(json.dumps({"event": "text", "text": event.text}, ensure_ascii=False), flush=True)
            elif isinstance(event, FinishEvent):
                print(json.dumps({"event": "result", **event.result.to_dict()}, ensure_ascii=False), flush=True)
        elif isinstance(event, WeightsEvent):
            _summary(event.weights, event.prompt_perplexity, event.reference)
        elif isinstance(event, TextEvent):
            print(event.text, end="", flush=True)
        elif isinstance(event, FinishEvent):
            print(flush=True)
    return 0


def _constraint(args: argparse.Namespace) -> Any:
    """The constraint of ``--json-schema``, ``--regex`` or ``--grammar`` (None: free text), checked before
    any model loads: a bad one is a :class:`ConfigError` naming the option, in one line."""
    from .structured.constraints import Constraint

    if args.regex is not None:
        option, shown, what, make = "--regex", args.regex, "a regular expression", Constraint.regex
        text = args.regex
    else:
        choices = (
            ("--json-schema", args.json_schema, "a JSON Schema", Constraint.json_schema),
            ("--grammar", args.grammar, "a Lark grammar", Constraint.lark),
        )
        given = [choice for choice in choices if choice[1] is not None]
        if not given:
            return None
        option, shown, what, make = given[0]
        try:
            text = Path(shown).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(option, shown, f"a readable UTF-8 file ({exc})") from None
    try:
        constraint = make(text)
    except ConfigError as exc:
        raise ConfigError(option, shown, exc.expected) from None
    if problem := constraint.problem():
        first = problem.strip().splitlines()[0] if problem.strip() else problem
        first = first if len(first) <= 200 else first[:197] + "..."
        raise ConfigError(option, shown, f"{what} the grammar library takes ({first})")
    return constraint


def _weights(args: argparse.Namespace) -> int:
    from .host import weights_metadata

    engine = _engine(args)
    event = engine.weights(_prompt(args), **_overrides(args))
    if args.json:
        print(json.dumps(weights_metadata(event), ensure_ascii=False))
    else:
        width = max(len(n) for n in event.weights)
        print(f"{'member':<{width}}  {'weight':>8}  {'prompt perplexity':>17}")
        for name, weight in event.weights.items():
            ppl = event.prompt_perplexity[name]
            shown = "n/a" if ppl is None else f"{ppl:.3f}"
            mark = "  (reference)" if name == event.reference else ""
            print(f"{name:<{width}}  {weight:>8.4f}  {shown:>17}{mark}")
    return 0


def _models(args: argparse.Namespace) -> int:
    rows = [
        {
            "name": e.name,
            "installed": is_installed(e.name),
            "default": e.name in DEFAULT_PACK,
            "description": e.description,
            "tokenizer": e.tokenizer_family,
            "license": e.license,
            "install": e.install,
        }
        for e in CATALOG.values()
    ]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for row in rows:
        flags = ("installed" if row["installed"] else "not installed") + (", default pack" if row["default"] else "")
        print(f"{row['name']}  [{flags}]\n    {row['description']}; tokenizer {row['tokenizer']}; {row['license']}")
        if not row["installed"]:
            print(f"    install: {row['install']}")
    return 0


def _summary(weights: dict[str, float], perplexity: dict[str, float | None], reference: str) -> None:
    parts = []
    for name, w in weights.items():
        ppl = perplexity[name]
        parts.append(f"{name}={w:.3f} (ppl {'n/a' if ppl is None else f'{ppl:.2f}'})")
    print(f"[weights] {', '.join(parts)}; reference {reference}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad input)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(route(list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args.func(args))
    except PackLLMError as exc:
        print(f"packllm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
