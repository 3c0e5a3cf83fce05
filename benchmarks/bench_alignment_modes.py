"""Cross-tokenizer fusion: bits per byte and decode time of each alignment mode.

Usage:
    python benchmarks/bench_alignment_modes.py [--threads 2] [--quick] [--parts bpb,decode,batch,maps]
        [--packs pairs,three] [--out FILE]

On real text of two kinds from installed packages (English news prose: gensim's
``lee_background.cor``; Python code: standard-library sources), each at least 2,000 tokens
for every bundled tokenizer, for each cross-tokenizer pair of the default pack and for the
three-family pack:

- bits per byte of the text after its first line (total negative log-likelihood in bits
  over the UTF-8 bytes scored), for each member alone (its own tokenization) and for the
  pack under each alignment ("mined": the reference's tokens translated one-for-one;
  "natural": each member reads its own tokenization) and prompt scoring ("reference": on
  the reference's tokens; "own": per byte of each member's own tokenization), with the
  weights that scoring gives on the first line (sim and opt), plus uniform weights;
- the decode time per generated token of each alignment against the sum of the members'
  own decode times (greedy, the same prompt, batch 1), measured in the same run;
- a batch of 8 prompts against the same 8 one at a time, for each member alone (the
  ceiling: what its backend gains from a batch) and for the three-family pack in each mode;
- the vocabulary maps' load time from the disk cache (the cold build times are measured
  by ``benchmarks/bench_alignment.py``).

The reference member is chosen per text by the authors' rule (lowest perplexity of each
member on the first line in its own tokenization).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from itertools import combinations
from pathlib import Path

import torch
from bench_engine import BATCH  # the engine benchmark's 8 prompts (this folder is on sys.path when run)
from transformers.utils import logging as hf_logging

from packllm_integrations import FinishEvent, GenerationConfig, Member, PackEngine, WeightsEvent
from packllm_integrations.alignment.projection import Projection
from packllm_integrations.decoding.aligners import Natural
from packllm_integrations.eval.data import lee_task, stdlib_code_task
from packllm_integrations.loading import load_member, load_vocab_map
from packllm_integrations.loading.catalog import DEFAULT_PACK

SHORT = {"smollm2-135m": "SmolLM2", "gemma3-270m": "Gemma3", "qwen2.5-coder-0.5b": "Qwen-coder"}
MODES = [("mined", "reference"), ("mined", "own"), ("natural", "reference"), ("natural", "own")]


def texts(quick: bool) -> dict[str, str]:
    """The two texts (prose, code), sized so that every bundled tokenizer gives >= 2,000 tokens."""
    prose_chars, code_chars = (2500, 2000) if quick else (11000, 9200)
    prose = lee_task(max_chars=prose_chars, window_chars=100, context_chars=100).documents[0]
    code = "\n\n".join(stdlib_code_task(max_chars=code_chars, window_chars=100, context_chars=100).documents)
    return {"prose": prose, "code": code}


def split(text: str) -> tuple[str, str]:
    """(first line, rest): the first line is the prompt the weights are computed on."""
    cut = text.index("\n") + 1 if "\n" in text[:400] else text.rfind(" ", 0, 300) + 1
    return text[:cut], text[cut:]


def configs() -> tuple[list[str], list[GenerationConfig]]:
    names, out = [], []
    for align, scoring in MODES:
        for weighting in ("sim", "opt"):
            names.append(f"{weighting} {align}/{scoring}")
            out.append(GenerationConfig(weighting=weighting, alignment=align, scoring=scoring))
    for align in ("mined", "natural"):
        names.append(f"uniform {align}")
        out.append(GenerationConfig(weighting="uniform", alignment=align))
    return names, out


def bits_per_byte(logprob: float, num_bytes: int) -> float:
    return -logprob / torch.log(torch.tensor(2.0)).item() / num_bytes


def decode_seconds_per_token(engine: PackEngine, prompt: str, n: int, **overrides: object) -> tuple[float, int]:
    """Seconds per generated token after the weights event (prefill excluded), and the count."""
    start = done = None
    tokens = 0
    for event in engine.stream(prompt, max_new_tokens=n, **overrides):
        if isinstance(event, WeightsEvent):
            start = time.perf_counter()
        elif isinstance(event, FinishEvent):
            done = time.perf_counter()
            tokens = event.result.usage.completion_tokens
    assert start is not None and done is not None
    return (done - start) / max(tokens, 1), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="short texts, fewer decode tokens (a smoke run)")
    parser.add_argument("--decode-tokens", type=int, default=48, help="tokens generated per decode timing")
    parser.add_argument(
        "--parts", default="bpb,decode,batch,maps", help="parts to run: bpb, decode, batch, maps (default: all)"
    )
    parser.add_argument(
        "--packs", default="pairs,three", help="which packs: pairs (each cross-tokenizer pair), three (all three)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "alignment_modes.md")
    parser.add_argument(
        "--backend", default="transformers", help="members' backend: transformers (float32, the default) or llama.cpp"
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"bpb", "decode", "batch", "maps"}:
        raise SystemExit(f"--parts {args.parts!r}: expected a comma-separated subset of bpb, decode, batch, maps")
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    members = {name: load_member(f"{name},backend={args.backend}", progress=False) for name in DEFAULT_PACK}
    data = texts(args.quick)
    names, cfgs = configs()
    chosen = {p.strip() for p in args.packs.split(",") if p.strip()}
    if not chosen or chosen - {"pairs", "three"}:
        raise SystemExit(f"--packs {args.packs!r}: expected a comma-separated subset of pairs, three")
    packs = [list(p) for p in combinations(DEFAULT_PACK, 2)] if "pairs" in chosen else []
    packs += [list(DEFAULT_PACK)] if "three" in chosen else []

    lines = [
        "# Alignment modes: bits per byte and decode time",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{args.threads}; produced by `python benchmarks/bench_alignment_modes.py{' --quick' if args.quick else ''}"
        f" --parts {','.join(sorted(parts))} --packs {','.join(sorted(chosen))} --backend {args.backend}`"
        f" ({args.backend} members). "
        "Bits per byte: total negative log-likelihood in bits of the text after its first line, over its UTF-8 "
        "bytes (lower is better); weights computed on the first line; reference member chosen per text by the "
        "lowest own-tokenization perplexity on the first line.",
        "",
    ]

    if "bpb" in parts:
        lines += bpb_part(members, data, names, cfgs, packs)
    if "decode" in parts:
        lines += decode_part(members, data, packs, 12 if args.quick else args.decode_tokens)
    if "batch" in parts:
        lines += batch_part(members, 12 if args.quick else args.decode_tokens)
    if "maps" in parts:
        lines += maps_part(members)
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += ["", f"Load average at the end: {load_avg} (a shared machine: times vary from run to run).", ""]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


def bpb_part(members, data, names, cfgs, packs) -> list[str]:  # type: ignore[no-untyped-def]
    lines = ["## Texts and members alone (own tokenization)", ""]
    header = "| text | bytes scored | " + " | ".join(f"{SHORT[n]} tokens | {SHORT[n]} bpb" for n in DEFAULT_PACK) + " |"
    lines += [header, "|---|---:|" + "---:|---:|" * len(DEFAULT_PACK)]
    alone: dict[tuple[str, str], float] = {}
    for kind, text in data.items():
        context, rest = split(text)
        cells = []
        num_bytes = 0
        for name in DEFAULT_PACK:
            result = PackEngine([members[name]]).score([(context, rest)])[0]
            alone[kind, name] = bits_per_byte(result.logprob, result.num_bytes)
            num_bytes = result.num_bytes
            cells.append(f"{len(members[name].encode(text)):,} | {alone[kind, name]:.4f}")
            print(f"{kind}: {name} alone {alone[kind, name]:.4f} bpb ({result.tokens} tokens)", flush=True)
        lines.append(f"| {kind} | {num_bytes:,} | " + " | ".join(cells) + " |")
    lines.append("")

    # ---- fused bits per byte per mode -------------------------------------------------------
    lines += [
        "## Fused bits per byte",
        "",
        "Each cell: bits per byte (weights in pack order). Best member: the lowest of the members alone.",
        "",
        "| text | pack | reference | best member | "
        + " | ".join(names)
        + " | natural scoring (s) | mined scoring (s) |",
        "|---|---|---|---:|" + "---:|" * len(names) + "---:|---:|",
    ]
    summary: dict[str, list[float]] = {n: [] for n in names}
    for kind, text in data.items():
        context, rest = split(text)
        for pack in packs:
            engine = PackEngine([members[n] for n in pack], progress=False)
            start = time.perf_counter()
            mined = engine.score_many([(context, rest)], [c for c in cfgs if c.alignment == "mined"])
            t_mined = time.perf_counter() - start
            start = time.perf_counter()
            natural = engine.score_many([(context, rest)], [c for c in cfgs if c.alignment == "natural"])
            t_natural = time.perf_counter() - start
            results = iter([r[0] for r in mined] + [r[0] for r in natural])
            ordered = {}
            for c in [c for c in cfgs if c.alignment == "mined"] + [c for c in cfgs if c.alignment == "natural"]:
                ordered[id(c)] = next(results)
            best = min(alone[kind, n] for n in pack)
            cells = []
            for name, cfg in zip(names, cfgs, strict=True):
                r = ordered[id(cfg)]
                bpb = bits_per_byte(r.logprob, r.num_bytes)
                summary[name].append(bpb - best)
                w = "/".join(f"{r.weights[n]:.2f}" for n in pack)
                cells.append(f"{bpb:.4f} ({w})")
            reference = SHORT[ordered[id(cfgs[0])].reference]
            pack_name = " + ".join(SHORT[n] for n in pack)
            lines.append(
                f"| {kind} | {pack_name} | {reference} | {best:.4f} | "
                + " | ".join(cells)
                + f" | {t_natural:.0f} | {t_mined:.0f} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "Mean over the rows of (fused bits per byte minus the best member's): negative means the pack beats "
        "its best member.",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---:|" * len(names),
        "| " + " | ".join(f"{sum(v) / len(v):+.4f}" for v in summary.values()) + " |",
        "",
    ]

    return lines


def decode_part(members, data, packs, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    lines = [
        "## Decode time per token (greedy, batch 1, prefill excluded)",
        "",
        "Sum of members: each member decoding alone, same prompt and length. Ratio: the mode's time per token "
        "over that sum. Sim weights with own-tokenization scoring (every member takes part).",
        "",
        "| prompt | pack | sum of members (ms/token) | mined (ms/token) | mined ratio | natural (ms/token) "
        "| natural ratio | natural tokens re-fed per step |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    prompts = {"prose": split(data["prose"])[0], "code": split(data["code"])[0]}
    for kind, prompt in prompts.items():
        for pack in packs:
            engine = PackEngine([members[m] for m in pack], progress=False)
            sums, mined_t, natural_t = [], [], []
            for _ in range(2):  # interleaved rounds; the best of each (a shared machine)
                sums.append(sum(decode_seconds_per_token(PackEngine([members[m]]), prompt, n)[0] for m in pack))
                mined_t.append(decode_seconds_per_token(engine, prompt, n, alignment="mined", scoring="own")[0])
                session = engine.session([prompt], max_new_tokens=n, alignment="natural", scoring="own")
                start = None
                for event in session.events():
                    if isinstance(event, WeightsEvent):
                        start = time.perf_counter()
                    elif isinstance(event, FinishEvent):
                        natural_t.append((time.perf_counter() - start) / max(event.result.usage.completion_tokens, 1))
                        steps = max(event.result.usage.completion_tokens - 1, 1)
                readers = [a.reader for a in session.aligners if isinstance(a, Natural)]
                refed = sum(r.fed for r in readers) / len(readers) / steps if readers else 1.0
            s, m_, nat = min(sums), min(mined_t), min(natural_t)
            lines.append(
                f"| {kind} | {' + '.join(SHORT[x] for x in pack)} | {s * 1000:.1f} | {m_ * 1000:.1f} | {m_ / s:.2f} "
                f"| {nat * 1000:.1f} | {nat / s:.2f} | {refed:.2f} |"
            )
            print(lines[-1], flush=True)
    lines.append("")
    return lines


def batch_part(members, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    nb = 6 if n < 20 else 16
    lines = [
        "## Batch of 8 against one at a time",
        "",
        f"Batch of 8 prompts (four prose, four code) against the same 8 one at a time, {nb} tokens each (end of "
        "sequence ignored), sim weights, prefill included; each member alone (a one-member pack) first: what its "
        "backend gains from a batch on this machine, the ceiling for a pack of them. Every prompt run once "
        "before timing (the vocabulary maps of every reference it picks); two interleaved rounds, the least of "
        "each. Last column: the time of the batch over the members' batches together.",
        "",
        "| who | one at a time (tokens/s) | batch of 8 (tokens/s) | ratio | batch / members' batches |",
        "|---|---:|---:|---:|---:|",
    ]
    never = [never_ending(x) for x in members.values()]
    pack = PackEngine(never, progress=False)
    runs = [(SHORT[m.name] + " alone", PackEngine([m], progress=False), {}) for m in never]
    runs += [(f"pack, {a}", pack, {"alignment": a}) for a in ("mined", "natural")]
    for _, engine, settings in runs:
        for prompt in BATCH:
            engine.generate(prompt, max_new_tokens=2, **settings)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in runs}
    for _ in range(2):
        for name, engine, settings in runs:
            start = time.perf_counter()
            for prompt in BATCH:
                engine.generate(prompt, max_new_tokens=nb, **settings)
            one = time.perf_counter() - start
            start = time.perf_counter()
            engine.generate_batch(BATCH, max_new_tokens=nb, **settings)
            times[name].append((one, time.perf_counter() - start))
    least = {name: (min(t[0] for t in v), min(t[1] for t in v)) for name, v in times.items()}
    alone = [least[name] for name, engine, _ in runs if engine is not pack]
    least["members together"] = (sum(t[0] for t in alone), sum(t[1] for t in alone))
    for name, (one, eight) in least.items():
        share = "" if name.endswith("alone") else f"{eight / least['members together'][1]:.2f}x"
        lines.append(f"| {name} | {8 * nb / one:.2f} | {8 * nb / eight:.2f} | {one / eight:.2f} | {share} |")
        print(lines[-1], flush=True)
    lines.append("")
    return lines


def never_ending(member):  # type: ignore[no-untyped-def]
    """The member with no end-of-sequence token, so every row generates its whole budget."""
    if isinstance(member, Member):
        return Member(member.name, member.model, member.tokenizer, eos_token_ids=frozenset({-1}))
    twin = copy.copy(member)  # a llama.cpp member: the same model and context, no EOS
    twin.eos_token_ids = frozenset({-1})
    return twin


def maps_part(members) -> list[str]:  # type: ignore[no-untyped-def]
    lines = ["## Vocabulary maps (both modes use them)", ""]
    lines += [
        "| reference | member | map from disk cache (s) | byte-prefix projection build (s) |",
        "|---|---|---:|---:|",
    ]
    for ref in DEFAULT_PACK:
        for mem in DEFAULT_PACK:
            if ref == mem:
                continue
            start = time.perf_counter()
            r, m = members[ref], members[mem]
            vmap = load_vocab_map(r.tokenizer, m.tokenizer, m.logits_width, progress=False)
            loaded = time.perf_counter() - start
            start = time.perf_counter()
            Projection(r, m, vmap)
            built = time.perf_counter() - start
            lines.append(f"| {SHORT[ref]} | {SHORT[mem]} | {loaded:.2f} | {built:.1f} |")
    lines += [
        "",
        "Cold build times of the same maps: `benchmarks/results/alignment.md` (`benchmarks/bench_alignment.py`). "
        "Natural alignment also builds a byte-prefix projection per pair in memory, once per process.",
    ]
    return lines


if __name__ == "__main__":
    main()
