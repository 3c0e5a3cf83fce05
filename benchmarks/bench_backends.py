"""Member backends on this machine, measured in one run (the machine is shared and noisy).

Usage:
    python benchmarks/bench_backends.py [--quick] [--parts local,agreement,remote] [--out FILE]

Writes a Markdown report (default ``benchmarks/results/backends.md``) with:

1. **local**: per backend (float32 transformers, llama.cpp on the GGUF as it is), each
   member's decode tokens/s alone and the default pack's fused tokens/s, the bytes of
   weights stored per token and the bandwidth that implies against this machine's memory
   copy bandwidth, the prefill time of a 33- or 34-token prompt, and the load time; the ratio
   llama.cpp / transformers of the pack's decode speed (target >= 2x: llama.cpp became the
   default backend for GGUF members on that measurement);
2. **agreement**: the same GGUF through both backends (quantized against dequantized
   weights): prompt perplexities on 20 prompts, and how often the first 32 greedy tokens
   of a single member match;
3. **remote**: two members served by llama.cpp's server (llama-cpp-python's, started here
   on 127.0.0.1, one thread each): the fused step time against the slowest member's own
   round trip (target <= 1.2x), and the bits per byte of top-k fusion (k = 5, 20, 100)
   against the same members' full logits in process.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from packllm_integrations import CATALOG, DEFAULT_PACK, PackEngine, load_member  # noqa: E402
from packllm_integrations.backends.llama_cpp import default_threads  # noqa: E402

PROSE = (
    "The history of the printing press begins in the fifteenth century, when movable type made books "
    "cheaper to produce. Within a few decades, printers in many European cities were publishing"
)
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "The three most important ideas in computer science are",
    "Once upon a time, in a small village,",
    "import numpy as np\n\ndef normalize(x):\n",
    "The main causes of the French Revolution were",
    "SELECT name, email FROM users WHERE",
    "Water boils at a temperature of",
    "class Stack:\n    def __init__(self):\n",
    "The best way to learn a new language is",
    "for i in range(10):\n",
    "Photosynthesis is the process by which",
    "The quick brown fox",
    "def is_prime(n):\n    if n < 2:\n",
    "In 1969, the first humans",
    "A healthy breakfast usually includes",
    "#include <stdio.h>\n\nint main(void) {\n",
    "The largest planet in the solar system is",
    "To make a cup of tea, first",
    "git commit -m",
]
TEXTS = [  # bits per byte: the continuation after the first sentence
    (
        "The history of the printing press begins in the fifteenth century.",
        " Movable type made books cheaper to produce, and within a few decades printers in many European "
        "cities were publishing grammars, calendars and scientific works.",
    ),
    (
        "import json\n\ndef read_config(path):\n",
        '    """Read a JSON configuration file."""\n    with open(path) as f:\n        return json.load(f)\n',
    ),
    (
        "Water is made of two elements.",
        " Each molecule has two hydrogen atoms bound to one oxygen atom, which is why its formula is H2O.",
    ),
]


PROSE_TOKENS = "33 or 34 tokens, by tokenizer"


def never_stop(member):  # type: ignore[no-untyped-def]
    member.eos_token_ids = frozenset()  # fixed-length runs
    return member


def decode_seconds(engine: PackEngine, prompts: list[str], n: int, **kw: object) -> float:
    """Seconds per decoding step (every prompt advances one token), prefill excluded."""
    session = engine.session(prompts, max_new_tokens=n + 1, **kw)
    for _ in session.prefill():
        pass
    session.feed(session.choose())  # the first step warms the caches
    start = time.perf_counter()
    for _ in range(n):
        session.feed(session.choose())
    return (time.perf_counter() - start) / n


def prefill_seconds(engine: PackEngine, text: str) -> float:
    session = engine.session([text], max_new_tokens=1)
    start = time.perf_counter()
    for _ in session.prefill():
        pass
    return time.perf_counter() - start


def copy_bandwidth() -> float:
    src = torch.empty(256 * 1024 * 1024 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def load(name: str, backend: str):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    member = load_member(f"{name},backend={backend}", progress=False)
    return never_stop(member), time.perf_counter() - start


def part_local(n: int, out: list[str]) -> None:
    bandwidth = copy_bandwidth()
    out += [
        "## Local backends: decode, prefill, bandwidth",
        "",
        f"Default pack, one prompt ({PROSE_TOKENS}), greedy, {n} tokens after a warm-up step; threads: torch "
        f"{torch.get_num_threads()}, llama.cpp {default_threads()}. Memory copy bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s.",
        "",
        "| backend | member | load s | weights stored MB | decode tok/s | bandwidth GB/s (share of copy) | "
        "prefill + weights, ms |",
        "|---|---|---|---|---|---|---|",
    ]
    speed = {}
    for backend in ("transformers", "llama.cpp"):
        members = [load(name, backend) for name in DEFAULT_PACK]
        for m, seconds in members:
            engine = PackEngine([m], progress=False)
            step = min(decode_seconds(engine, [PROSE], n) for _ in range(2))
            pre = min(prefill_seconds(engine, PROSE) for _ in range(2))
            size = m.parameter_bytes
            out.append(
                f"| {backend} | {m.name} | {seconds:.1f} | {size / 1e6:.0f} | {1 / step:.1f} | "
                f"{size / step / 1e9:.1f} ({size / step / bandwidth:.0%}) | {pre * 1000:.0f} |"
            )
            print(out[-1], flush=True)
        pack = PackEngine([m for m, _ in members], progress=False)
        pack.generate(PROSE, max_new_tokens=2)  # vocabulary maps built outside the timing
        step = min(decode_seconds(pack, [PROSE], n) for _ in range(2))
        pre = min(prefill_seconds(pack, PROSE) for _ in range(2))
        size = sum(m.parameter_bytes for m, _ in members)
        speed[backend] = 1 / step
        out.append(
            f"| {backend} | **fused pack** | {sum(s for _, s in members):.1f} | {size / 1e6:.0f} | "
            f"**{1 / step:.1f}** | {size / step / 1e9:.1f} ({size / step / bandwidth:.0%}) | {pre * 1000:.0f} |"
        )
        print(out[-1], flush=True)
        del members, pack
    ratio = speed["llama.cpp"] / speed["transformers"]
    out += ["", f"**Fused pack decode, llama.cpp / transformers: {ratio:.2f}x** (target >= 2x).", ""]
    print(out[-2], flush=True)


def part_agreement(out: list[str], n_tokens: int = 32) -> None:
    out += [
        "## The same GGUF through both backends",
        "",
        f"Each member alone; {len(PROMPTS)} prompts; prompt perplexity (own tokens) and the first {n_tokens} "
        "greedy tokens. transformers reads the dequantized float32 copy, llama.cpp the quantized file.",
        "",
        "| member | prompt ppl transformers (mean) | llama.cpp (mean) | largest relative gap | "
        f"prompts with all {n_tokens} greedy tokens equal | mean equal prefix (tokens) |",
        "|---|---|---|---|---|---|",
    ]
    for name in DEFAULT_PACK:
        results = {}
        for backend in ("transformers", "llama.cpp"):
            m, _ = load(name, backend)
            engine = PackEngine([m], progress=False, max_new_tokens=n_tokens)
            results[backend] = engine.generate_batch(PROMPTS)
            encode = m.encode
            del engine, m
        ppl_t = [r.prompt_perplexity[name] for r in results["transformers"]]
        ppl_c = [r.prompt_perplexity[name] for r in results["llama.cpp"]]
        gap = max(abs(c - t) / t for t, c in zip(ppl_t, ppl_c, strict=True) if t and c)
        prefixes, equal = [], 0
        for a, b in zip(results["transformers"], results["llama.cpp"], strict=True):
            ta, tb = encode(a.text), encode(b.text)  # the generated texts' tokens
            same = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
            prefixes.append(min(same, n_tokens) if a.text != b.text else n_tokens)
            equal += a.text == b.text
        out.append(
            f"| {name} | {sum(ppl_t) / len(ppl_t):.2f} | {sum(ppl_c) / len(ppl_c):.2f} | {gap:.1%} | "
            f"{equal} / {len(PROMPTS)} | {sum(prefixes) / len(prefixes):.1f} |"
        )
        print(out[-1], flush=True)
    out.append("")


def bits_per_byte(engine: PackEngine) -> float:
    scored = engine.score(TEXTS)
    return -sum(s.logprob for s in scored) / math.log(2) / sum(s.num_bytes for s in scored)


def part_remote(n: int, out: list[str]) -> None:
    from packllm_integrations.loading import cache_dir
    from packllm_integrations.loading.gguf_files import catalog_gguf
    from tests.servers import LlamaServer

    names = ["smollm2-135m", "qwen2.5-coder-0.5b"]
    servers = [LlamaServer(catalog_gguf(CATALOG[name], cache_dir() / "gguf", False), alias=name) for name in names]
    for server in servers:
        server.start()
    try:
        remotes = [
            never_stop(load_member(f"openai:{s.url},tokenizer={name},name=remote-{name}", progress=False))
            for s, name in zip(servers, names, strict=True)
        ]
        pack = PackEngine(remotes, progress=False, weighting="uniform")
        pack.generate(PROSE, max_new_tokens=2)
        step = min(decode_seconds(pack, [PROSE], n) for _ in range(2))
        ids = [m.encode(PROSE) for m in remotes]
        trips = []
        for m, row in zip(remotes, ids, strict=True):
            m._next_set(row)  # the server's prompt cache holds the prompt
            times = []
            for i in range(n):
                start = time.perf_counter()
                m._next_set(row + row[: i + 1])
                times.append(time.perf_counter() - start)
            trips.append(sorted(times)[len(times) // 2])
        slowest = max(trips)
        out += [
            "## Remote members (llama.cpp's server, one thread each, on this machine)",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| fused step of two remote members, ms | {step * 1000:.0f} | |",
            "| each member's own round trip (median next-token request), ms | "
            + ", ".join(f"{name} {t * 1000:.0f}" for name, t in zip(names, trips, strict=True))
            + " | |",
            f"| fused step / slowest round trip | **{step / slowest:.2f}** | <= 1.2 |",
            "",
        ]
        print("\n".join(out[-6:]), flush=True)
        local = [load(name, "llama.cpp")[0] for name in names]
        full = bits_per_byte(PackEngine(local, progress=False))
        out += [
            "Bits per byte of the fused pack (sim weights) on three short texts, continuations only:",
            "",
            "| members' scores | bits per byte | cost against full logits |",
            "|---|---|---|",
            f"| full logits (llama.cpp in process) | {full:.3f} | |",
        ]
        for k in (5, 20, 100):
            for m in remotes:
                m.k = k
            value = bits_per_byte(PackEngine(remotes, progress=False))
            out.append(f"| top-{k} from the servers | {value:.3f} | {value / full - 1:+.1%} |")
            print(out[-1], flush=True)
        out.append("")
        for m in remotes:
            m.close()
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens (a smoke run, not the reported numbers)")
    parser.add_argument("--parts", default="local,agreement,remote")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/backends.md"))
    args = parser.parse_args()
    n = 8 if args.quick else 32
    parts = args.parts.split(",")
    out = [
        "# Member backends",
        "",
        f"`python benchmarks/bench_backends.py --parts {args.parts}`{' --quick' if args.quick else ''}; "
        f"{platform.machine()}, {default_threads()} cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}.",
        "",
    ]
    if "local" in parts:
        part_local(n, out)
    if "agreement" in parts:
        part_agreement(out)
    if "remote" in parts:
        part_remote(n, out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
