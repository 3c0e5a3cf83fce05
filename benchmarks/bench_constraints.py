"""Constrained decoding on the bundled models, measured in one run.

Usage:
    python benchmarks/bench_constraints.py [--parts mask,extraction] [--backend llama.cpp] [--out FILE]
        [--json-string-repeats N] [--pack default|coder]

Writes ``benchmarks/results/constraints.md`` (default) with:

0. **libraries**: llguidance against xgrammar (when installed: ``pip install --no-deps
   xgrammar apache-tvm-ffi``), compile time and mask time per step at each vocabulary;
1. **mask**: the grammar mask's cost per decoding step (llguidance's token mask for a JSON
   Schema, unpacked and applied to the fused scores) at each bundled reference vocabulary
   (49k, 152k, 262k), against a fused step of the default pack with that reference
   (target <= 5%);
2. **extraction**: 50 schema/prompt pairs (10 schemas, 5 texts each: names, numbers,
   enums, booleans, arrays, nested and optional fields): the share of outputs that parse
   and validate, constrained (target 100%) against the same prompts unconstrained, and the
   share of correct field values, for each member alone and for the fused pack (greedy);
   `--pack coder` runs it on Qwen2.5-Coder 1.5B + 0.5B instead of the default pack.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jsonschema
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from packllm_integrations import DEFAULT_PACK, Constraint, PackEngine, load_member  # noqa: E402
from packllm_integrations.structured.constraints import Grammars  # noqa: E402

STR, INT, NUM, BOOL = {"type": "string", "maxLength": 24}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}


def obj(**props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props)}


TASKS = [  # (schema, instruction, [(text, expected)])
    (
        obj(name=STR, age=INT),
        "the person's name and age",
        [
            ("Alice is 31 years old.", {"name": "Alice", "age": 31}),
            ("Bob, aged 45, works as a baker.", {"name": "Bob", "age": 45}),
            ("At 12, Carla won the chess prize.", {"name": "Carla", "age": 12}),
            ("David turned 60 last week.", {"name": "David", "age": 60}),
            ("Emma is a 27-year-old nurse.", {"name": "Emma", "age": 27}),
        ],
    ),
    (
        obj(city=STR, country=STR),
        "the city and its country",
        [
            ("Paris is the capital of France.", {"city": "Paris", "country": "France"}),
            ("We flew to Tokyo, Japan, in May.", {"city": "Tokyo", "country": "Japan"}),
            ("Madrid, Spain hosted the final.", {"city": "Madrid", "country": "Spain"}),
            ("She grew up in Toronto, Canada.", {"city": "Toronto", "country": "Canada"}),
            ("The museum is in Cairo, Egypt.", {"city": "Cairo", "country": "Egypt"}),
        ],
    ),
    (
        obj(product=STR, price=NUM),
        "the product and its price in dollars",
        [
            ("The lamp costs $25.", {"product": "lamp", "price": 25}),
            ("A new bike is $300.", {"product": "bike", "price": 300}),
            ("Coffee: $4.5 a cup.", {"product": "coffee", "price": 4.5}),
            ("The book sells for $12.", {"product": "book", "price": 12}),
            ("This chair is priced at $80.", {"product": "chair", "price": 80}),
        ],
    ),
    (
        obj(event=STR, year=INT),
        "the event and its year",
        [
            ("The Berlin Wall fell in 1989.", {"event": "Berlin Wall fell", "year": 1989}),
            ("In 1969 humans landed on the Moon.", {"event": "Moon landing", "year": 1969}),
            ("The Titanic sank in 1912.", {"event": "Titanic sank", "year": 1912}),
            ("World War II ended in 1945.", {"event": "World War II ended", "year": 1945}),
            ("The euro was introduced in 1999.", {"event": "euro introduced", "year": 1999}),
        ],
    ),
    (
        obj(sentiment={"enum": ["positive", "negative"]}),
        "the sentiment",
        [
            ("I loved this film, it was wonderful.", {"sentiment": "positive"}),
            ("The food was cold and awful.", {"sentiment": "negative"}),
            ("What a great day at the beach!", {"sentiment": "positive"}),
            ("I hate waiting in long lines.", {"sentiment": "negative"}),
            ("This phone is fantastic.", {"sentiment": "positive"}),
        ],
    ),
    (
        obj(is_question=BOOL),
        "whether the text is a question",
        [
            ("Where is the station?", {"is_question": True}),
            ("The station is closed.", {"is_question": False}),
            ("Can you help me?", {"is_question": True}),
            ("I will help you.", {"is_question": False}),
            ("Is it raining?", {"is_question": True}),
        ],
    ),
    (
        obj(count=INT, item=STR),
        "how many of which item",
        [
            ("There are 3 apples on the table.", {"count": 3, "item": "apples"}),
            ("She bought 12 eggs.", {"count": 12, "item": "eggs"}),
            ("We saw 7 birds.", {"count": 7, "item": "birds"}),
            ("He has 2 cats.", {"count": 2, "item": "cats"}),
            ("The box holds 50 pencils.", {"count": 50, "item": "pencils"}),
        ],
    ),
    (
        obj(colors={"type": "array", "items": {"enum": ["red", "green", "blue", "yellow"]}, "maxItems": 4}),
        "the colours mentioned",
        [
            ("The flag is red and blue.", {"colors": ["red", "blue"]}),
            ("She painted the door green.", {"colors": ["green"]}),
            ("Yellow and green leaves fell.", {"colors": ["yellow", "green"]}),
            ("A blue sky.", {"colors": ["blue"]}),
            ("Red, yellow and blue balloons.", {"colors": ["red", "yellow", "blue"]}),
        ],
    ),
    (
        obj(person=obj(first=STR, last=STR)),
        "the person's first and last name",
        [
            ("Marie Curie won two Nobel prizes.", {"person": {"first": "Marie", "last": "Curie"}}),
            ("Alan Turing broke codes.", {"person": {"first": "Alan", "last": "Turing"}}),
            ("Ada Lovelace wrote programs.", {"person": {"first": "Ada", "last": "Lovelace"}}),
            ("Isaac Newton studied light.", {"person": {"first": "Isaac", "last": "Newton"}}),
            ("Frida Kahlo painted portraits.", {"person": {"first": "Frida", "last": "Kahlo"}}),
        ],
    ),
    (
        {
            "type": "object",
            "properties": {"title": STR, "author": {"anyOf": [STR, {"type": "null"}]}},
            "required": ["title"],
        },
        "the book title and its author (null if not given)",
        [
            ("Dune was written by Frank Herbert.", {"title": "Dune", "author": "Frank Herbert"}),
            ("I am reading Emma by Jane Austen.", {"title": "Emma", "author": "Jane Austen"}),
            ("Have you read Ulysses?", {"title": "Ulysses", "author": None}),
            ("Hamlet is by William Shakespeare.", {"title": "Hamlet", "author": "William Shakespeare"}),
            ("The book Beloved moved me.", {"title": "Beloved", "author": None}),
        ],
    ),
]


def text_ids(member, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    """The tokens of ``text`` without the BOS a tokenizer adds (Gemma's)."""
    ids = member.encode(text)
    return ids[1:] if ids and ids[0] == member.tokenizer.bos_token_id else ids


def prompt(instruction: str, schema: dict, text: str) -> str:
    return f"Extract {instruction} as JSON with the keys {list(schema['properties'])}.\nText: {text}\nJSON: "


def parses(text: str, schema: dict) -> dict | None:
    """The JSON value at the start of ``text`` if it validates (unconstrained outputs may run on after it)."""
    try:
        value, _ = json.JSONDecoder().raw_decode(text.strip())
        jsonschema.validate(value, schema)
    except (ValueError, jsonschema.ValidationError):
        return None
    return value


def correct_fields(value: dict | None, expected: dict) -> tuple[int, int]:
    def same(a: object, b: object) -> bool:
        if isinstance(a, str) and isinstance(b, str):
            return a.strip().lower() == b.strip().lower()
        if isinstance(a, dict) and isinstance(b, dict):
            return all(same(a.get(k), v) for k, v in b.items())
        if isinstance(a, list) and isinstance(b, list):
            return sorted(map(str, a)) == sorted(map(str, b))
        return a == b

    return sum(value is not None and same(value.get(k), v) for k, v in expected.items()), len(expected)


def part_mask(backend: str, out: list[str], n: int) -> None:
    members = [load_member(f"{name},backend={backend}", progress=False) for name in DEFAULT_PACK]
    schema = TASKS[9][0]
    document = json.dumps({"title": "Left Hand of Darkness", "author": "Ursula K. Le Guin"})  # within maxLength
    grammars = Grammars()
    matchers = {m.name: grammars.matcher(m, Constraint.json_schema(schema)) for m in members}
    for m in members:
        m.eos_token_ids = frozenset()  # fixed-length fused steps
    pack = PackEngine(members, progress=False, weighting="uniform")
    out += [
        "## The mask's cost per step",
        "",
        "JSON Schema of the book task; the steps of a valid document; fused step: the default pack "
        f"({backend}), greedy, that member as reference, mean of {n} steps.",
        "",
        "| reference | vocabulary | mask ms / step | fused step ms | share |",
        "|---|---|---|---|---|",
    ]
    for m in members:
        matcher = matchers[m.name]
        ids = text_ids(m, document)
        scores = torch.randn(1, m.vocab_size)
        start = time.perf_counter()
        for t in ids:
            fused = scores.clone()
            fused[0].masked_fill_(~matcher.allowed(), float("-inf"))
            matcher.advance(t)
        mask_ms = (time.perf_counter() - start) / len(ids) * 1000
        session = pack.session(["The value of the"], max_new_tokens=n + 2, reference=m.name)
        session.prefill()
        session.feed(session.choose())
        start = time.perf_counter()
        for _ in range(n):
            session.feed(session.choose())
        step_ms = (time.perf_counter() - start) / n * 1000
        out.append(f"| {m.name} | {m.vocab_size:,} | {mask_ms:.2f} | {step_ms:.0f} | {mask_ms / step_ms:.1%} |")
        print(out[-1], flush=True)
    out.append("")


def part_libraries(out: list[str]) -> None:
    """llguidance against xgrammar: compile time and mask time per step, same schema, same steps."""
    try:
        import xgrammar as xgr
    except ImportError:
        out += [
            "## Grammar libraries",
            "",
            "xgrammar is not installed: `pip install --no-deps xgrammar apache-tvm-ffi`.",
            "",
        ]
        return
    schema = TASKS[9][0]
    document = json.dumps({"title": "Left Hand of Darkness", "author": "Ursula K. Le Guin"})
    out += [
        "## Grammar libraries",
        "",
        "The book task's JSON Schema, compact JSON; the median over the steps of a valid document of computing "
        "the next-token mask and applying it to a logits row (CPU, one thread for xgrammar's compiler); compile = "
        "the tokenizer's index plus the grammar (llguidance as the engine builds it, once per vocabulary).",
        "",
        "| vocabulary | llguidance compile s | llguidance mask ms / step | xgrammar compile s | "
        "xgrammar mask ms / step |",
        "|---|---|---|---|---|",
    ]
    for name in DEFAULT_PACK:
        m = load_member(f"{name},backend=llama.cpp", progress=False)
        ids, width = text_ids(m, document), m.vocab_size
        logits = torch.randn(1, width)
        start = time.perf_counter()
        ll = Grammars().matcher(m, Constraint.json_schema(schema))  # what the engine does
        ll_compile = time.perf_counter() - start
        times = []
        for t in ids:
            start = time.perf_counter()
            row = logits.clone()
            row[0].masked_fill_(~ll.allowed(), float("-inf"))
            times.append(time.perf_counter() - start)
            ll.advance(t)
        ll_step = statistics.median(times) * 1000
        start = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(m.tokenizer, vocab_size=width)
        compiler = xgr.GrammarCompiler(info, max_threads=1)
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        xg = xgr.GrammarMatcher(compiled)
        xg_compile = time.perf_counter() - start
        bitmask = xgr.allocate_token_bitmask(1, width)
        times = []
        for t in ids:
            start = time.perf_counter()
            row = logits.clone()
            xg.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(row, bitmask)
            times.append(time.perf_counter() - start)
            assert xg.accept_token(t)
        xg_step = statistics.median(times) * 1000
        out.append(f"| {width:,} ({name}) | {ll_compile:.2f} | {ll_step:.2f} | {xg_compile:.2f} | {xg_step:.2f} |")
        print(out[-1], flush=True)
    out.append("")


PACKS = {"default": list(DEFAULT_PACK), "coder": ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"]}


def part_extraction(backend: str, out: list[str], max_new_tokens: int, string_repeats: int, pack: str) -> None:
    members = [load_member(f"{name},backend={backend}", progress=False) for name in PACKS[pack]]
    engines = {m.name: PackEngine([m], progress=False) for m in members}
    engines["fused pack (sim)"] = PackEngine(members, progress=False)
    pairs = [
        (schema, prompt(instr, schema, text), expected) for schema, instr, items in TASKS for text, expected in items
    ]
    out += [
        "## Extraction: validity and correct fields",
        "",
        f"{len(pairs)} schema/prompt pairs ({len(TASKS)} schemas x 5 texts), pack {' + '.join(PACKS[pack])}, "
        f"greedy, at most {max_new_tokens} new "
        f"tokens, {backend} members, json_string_repeats={string_repeats}. Unconstrained outputs count as valid "
        "when the JSON value they start with validates (text after it is forgiven). Cut: constrained outputs that "
        "max_new_tokens ended before they were whole.",
        "",
        "| model | valid, unconstrained | valid, constrained | correct fields, unconstrained | "
        "correct fields, constrained | cut, constrained |",
        "|---|---|---|---|---|---|",
    ]
    for name, engine in engines.items():
        row = [name]
        valid, fields, cut = {}, {}, 0
        for constrained in (False, True):
            ok = right = total = 0
            for schema, text, expected in pairs:
                constraint = Constraint.json_schema(schema) if constrained else None
                result = engine.generate(
                    text, max_new_tokens=max_new_tokens, constraint=constraint, json_string_repeats=string_repeats
                )
                cut += constrained and result.finish_reason == "length"
                value = parses(result.text, schema)
                if constrained and result.finish_reason == "stop" and value is None:
                    raise AssertionError(f"a complete constrained output did not validate: {result.text!r}")
                ok += value is not None
                r, t = correct_fields(value, expected)
                right, total = right + r, total + t
            valid[constrained], fields[constrained] = ok / len(pairs), right / total
        row += [f"{valid[False]:.0%}", f"{valid[True]:.0%}", f"{fields[False]:.0%}", f"{fields[True]:.0%}", str(cut)]
        out.append("| " + " | ".join(row) + " |")
        print(out[-1], flush=True)
    out.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="libraries,mask,extraction")
    parser.add_argument("--backend", default="llama.cpp", help="members' backend (the mask is the same for any)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument(
        "--json-string-repeats", type=int, default=2, help="the engine's guard against looping strings (0: off)"
    )
    parser.add_argument("--pack", choices=PACKS, default="default", help="the members of the extraction part")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/constraints.md"))
    args = parser.parse_args()
    out = [
        "# Constrained decoding",
        "",
        f"`python benchmarks/bench_constraints.py --parts {args.parts} --backend {args.backend} "
        f"--json-string-repeats {args.json_string_repeats} --pack {args.pack}`; "
        f"{platform.machine()}, torch {torch.__version__}, Python {platform.python_version()}.",
        "",
    ]
    if "libraries" in args.parts:
        part_libraries(out)
    if "mask" in args.parts:
        part_mask(args.backend, out, args.steps)
    if "extraction" in args.parts:
        part_extraction(args.backend, out, args.max_new_tokens, args.json_string_repeats, args.pack)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
