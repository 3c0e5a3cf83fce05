"""What a decoding step costs inside the pack against the members' own speed, measured in one run.

Usage:
    python benchmarks/bench_step.py [--tokens N] [--rounds R] [--out FILE] [--profile]

For each member of the default pack on llama.cpp (its GGUF file as it is, the same threads):

- **own loop**: llama-cpp-python's own greedy generation on the same file (``Llama.generate``
  with ``temp=0``), the speed a llama.cpp user gets;
- **backend step**: the member's ``step`` alone, greedy by ``argmax`` (what the pack asks of
  llama.cpp, without the session);
- **one-member pack**: ``PackEngine([member])``, a greedy session step (``choose`` + ``feed``).

Then the default pack's fused greedy step against the sum of the members' own steps: as the
session steps it (llama.cpp members in lanes, one per core, each on its share of the cores:
``decoding/stepping.py``), the same with the paper's ``fusion="logits"`` in place of the
default mixture, and one member after another on every core (``serial``). Every
measure is taken in rounds interleaved with the others (the machine is shared and noisy);
the report gives the median of the rounds' per-step times, and the ratios of medians.
The members' own loops are also stepped in turn, one token each (``own in turn``: no pack
code), which is what the members cost when they share the machine's caches as a pack's do.
Targets (the fast-by-default issue): a one-member pack >= 0.9x llama-cpp-python's own
generation; a fused step <= 1.05x the sum of the members' own steps.

``--prefill`` adds the prefill and weights of a prompt (49 and 512 tokens of prose) against
the sum of the members' own prefills (every position's logits), natural alignment's prompt
perplexities computed from each member's own distribution (as shipped) and from the
projection's full scores (as before ``alignment/projected_nll.py``), in the same run.

``--profile`` adds where a one-member pack's step and the serial fused step go (cProfile,
by own time; session creation and prefill included).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from packllm_integrations import DEFAULT_PACK, PackEngine, load_member  # noqa: E402
from packllm_integrations.backends.llama_cpp import default_threads  # noqa: E402
from packllm_integrations.decoding import session as session_module  # noqa: E402

PROSE = (
    "The history of the printing press begins in the fifteenth century, when movable type made books "
    "cheaper to produce. Within a few decades, printers in many European cities were publishing"
)


def own_loop(llm, n: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per token of llama-cpp-python's own greedy loop, after its first token."""
    tokens = llm.tokenize(PROSE.encode())
    times = []
    last = None
    for i, _ in enumerate(llm.generate(tokens, temp=0.0, top_k=1, reset=True)):
        now = time.perf_counter()
        if i >= 1:
            times.append(now - last)  # type: ignore[operator]
        last = now
        if i == n:
            break
    return statistics.median(times)


def own_loops_in_turn(llms: list, n: int) -> float:  # type: ignore[type-arg]
    """Seconds per round of llama-cpp-python's own greedy loops stepped in turn, one token each.

    The members' own speed when they share the machine as a pack's members do: each one's
    weights pass through the caches between two of its steps. No pack code runs.
    """
    loops = [iter(llm.generate(llm.tokenize(PROSE.encode()), temp=0.0, top_k=1, reset=True)) for llm in llms]
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        for loop in loops:
            next(loop)
        if i >= 1:  # the first round holds the prefills
            times.append(time.perf_counter() - start)
    for loop in loops:
        loop.close()
    return statistics.median(times)


def backend_step(member, n: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per ``member.step`` of one row, greedy by argmax, after a warm-up step."""
    ids = member.encode(PROSE)
    with torch.inference_mode():
        done = member.prefill([ids])
        t = int(done.last[0].argmax())
        logits = member.step(done.cache, [t])
        times = []
        for _ in range(n):
            start = time.perf_counter()
            logits = member.step(done.cache, [int(logits[0].argmax())])
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def pack_step(engine: PackEngine, n: int) -> float:
    """Seconds per greedy session step (choose + feed), prefill excluded, after a warm-up step."""
    session = engine.session([PROSE], max_new_tokens=n + 2, temperature=0.0)
    for _ in session.prefill():
        pass
    session.feed(session.choose())
    times = []
    for _ in range(n):
        start = time.perf_counter()
        session.feed(session.choose())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def serial_step(engine: PackEngine, n: int) -> float:
    """:func:`pack_step` with every member stepped one after another on every core (no lanes)."""
    cores = session_module.default_threads
    session_module.default_threads = lambda: 1  # type: ignore[assignment]  # one core: no lanes
    try:
        return pack_step(engine, n)
    finally:
        session_module.default_threads = cores  # type: ignore[assignment]


def prefill_part(members: list, pack: PackEngine, rounds: int) -> list[str]:  # type: ignore[type-arg]
    """Prefill + weights of the pack against the members' own prefills, both NLL paths."""
    from packllm_integrations.decoding import fusion

    def full_path(proj, member, states, targets):  # type: ignore[no-untyped-def]
        scores = proj.scores(member, states)
        return (torch.logsumexp(scores, -1) - scores.gather(-1, targets[:, None]).squeeze(-1)).double()

    shipped = fusion.projected_nll
    long_ids = members[0].encode((PROSE + " ") * 16)[:512]
    texts = {"49 tokens": members[0].tokenizer.decode(members[0].encode(PROSE)[:49]), "512 tokens": None}
    texts["512 tokens"] = members[0].tokenizer.decode(long_ids)
    out = [
        "",
        "## Prefill and weights against the members' own prefills",
        "",
        "| prompt | members' own prefills, ms | pack prefill + sim weights, ms | ratio (target <= 1.3) | "
        "with the full projected scores, ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for label, text in texts.items():
        assert text is not None
        own, new, old = [], [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for m in members:
                m.prefill([m.encode(text)])
            own.append(time.perf_counter() - t0)
            for path, into in ((shipped, new), (full_path, old)):
                fusion.projected_nll = path
                session = pack.session([text], max_new_tokens=1)
                t0 = time.perf_counter()
                for _ in session.prefill():
                    pass
                into.append(time.perf_counter() - t0)
            fusion.projected_nll = shipped
        o, n, f = (statistics.median(x) for x in (own, new, old))
        out.append(f"| {label} | {o * 1000:.0f} | {n * 1000:.0f} | {n / o:.2f} | {f * 1000:.0f} | {f / o:.2f} |")
        print(out[-1], flush=True)
    return out


def profile(call: Callable[[], object], top: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    call()
    prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48, help="steps timed per measure and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step.md"))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--prefill", action="store_true", help="add prefill + weights against the members' prefills")
    args = parser.parse_args()
    from llama_cpp import Llama

    threads = default_threads()
    members = []
    for name in DEFAULT_PACK:
        m = load_member(f"{name},backend=llama.cpp", progress=False)
        m.eos_token_ids = frozenset()  # fixed-length runs
        members.append(m)
    own = {
        m.name: Llama(model_path=str(m.path), n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
        for m in members
    }
    singles = {m.name: PackEngine([m], progress=False) for m in members}
    pack = PackEngine(members, progress=False)
    pack.generate(PROSE, max_new_tokens=2)  # vocabulary maps and projections built outside the timing
    summed = PackEngine(members, progress=False, fusion="logits")
    times: dict[str, list[float]] = {}
    started = time.perf_counter()
    for r in range(args.rounds):
        for m in members:
            times.setdefault(f"own {m.name}", []).append(own_loop(own[m.name], args.tokens))
            times.setdefault(f"backend {m.name}", []).append(backend_step(m, args.tokens))
            times.setdefault(f"pack {m.name}", []).append(pack_step(singles[m.name], args.tokens))
        times.setdefault("own in turn", []).append(own_loops_in_turn(list(own.values()), args.tokens))
        times.setdefault("fused", []).append(pack_step(pack, args.tokens))
        times.setdefault("fused logits", []).append(pack_step(summed, args.tokens))
        times.setdefault("fused serial", []).append(serial_step(pack, args.tokens))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1000:.1f}" for k, v in times.items()), flush=True)
    elapsed = time.perf_counter() - started
    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()
    out = [
        "# A decoding step inside the pack against the members' own",
        "",
        f"`python benchmarks/bench_step.py --tokens {args.tokens} --rounds {args.rounds}"
        f"{' --prefill' if args.prefill else ''}{' --profile' if args.profile else ''}` in one run "
        f"({elapsed / 60:.1f} min): the default pack on llama.cpp (each GGUF file as it is), {threads} threads "
        f"everywhere, one prompt ({len(PROSE)} characters), greedy; medians of {args.rounds} interleaved rounds "
        f"of {args.tokens} steps each (each round's own median). {platform.machine()}, "
        f"{os.cpu_count()} cores, load average at the end {load[0]:.1f}.",
        "",
        "| member | llama-cpp-python's own loop, ms | backend step, ms | one-member pack, ms | "
        "own / one-member pack (speed, target >= 0.9) | own / backend step |",
        "|---|---|---|---|---|---|",
    ]
    for m in members:
        o, b, p = med[f"own {m.name}"], med[f"backend {m.name}"], med[f"pack {m.name}"]
        out.append(f"| {m.name} | {o * 1000:.1f} | {b * 1000:.1f} | {p * 1000:.1f} | {o / p:.2f} | {o / b:.2f} |")
    own_sum = sum(med[f"own {m.name}"] for m in members)
    pack_sum = sum(med[f"pack {m.name}"] for m in members)
    out += [
        "",
        "| fused step of the default pack | ms | / sum of own loops (target <= 1.05) | / sum of one-member packs "
        "| / own loops in turn |",
        "|---|---|---|---|---|",
        *(
            f"| {label} | {med[key] * 1000:.1f} | {med[key] / own_sum:.2f} | "
            f"{med[key] / pack_sum:.2f} | {med[key] / med['own in turn']:.2f} |"
            for key, label in (
                ("own in turn", "llama-cpp-python's own loops stepped in turn (no pack)"),
                ("fused", "the pack, in lanes (the default: mixture)"),
                ("fused logits", "the pack, in lanes, fusion='logits'"),
                ("fused serial", "the pack, one member after another"),
            )
        ),
        "",
        "Every round (ms per step):",
        "",
        "```",
        *(f"{k}: {', '.join(f'{x * 1000:.1f}' for x in v)}" for k, v in times.items()),
        "```",
    ]
    if args.prefill:
        out += prefill_part(members, pack, args.rounds)
    if args.profile:
        m = members[-1]
        out += ["", f"## Where a one-member pack's step goes ({m.name}, cProfile, by own time)", "", "```"]
        out += [profile(lambda: pack_step(singles[m.name], args.tokens)).strip(), "```"]
        out += ["", "## Where the fused step goes, one member after another (cProfile, by own time)", ""]
        out += ["(cProfile sees the calling thread only: the serial step keeps every member's work there.)", ""]
        out += ["```", profile(lambda: serial_step(pack, args.tokens)).strip(), "```"]
    text = "\n".join(out) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
