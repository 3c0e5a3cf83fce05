"""Engine speed on this machine: ratios measured in one run (the machine is shared and noisy).

Usage:
    python benchmarks/bench_engine.py [--quick] [--out benchmarks/results/engine.md]

Prints a Markdown table of the measurements and their targets:
1. fused decode time per token / sum of the members' own decode times per token
   (each member alone in the same loop, with its KV cache);
2. prefill + weights / sum of the members' plain forward passes over the prompt
   (logits at every position, which is what a prompt perplexity needs); 'sim' and, on a
   512-token prompt, 'opt';
3. speed-up of the KV-cached loop over fusion without caches (every member recomputed on
   the whole sequence at every step, as the research code would) at 128 new tokens;
4. tokens/s of a batch of 8 prompts against the same 8 one at a time;
5. a single-member pack against transformers' own greedy ``generate``;
6. the memory bandwidth the fused decode achieves (bytes of member parameters read per
   token x tokens/s) against this machine's own memory copy bandwidth.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from packllm_integrations import Member, PackEngine, load_member
from packllm_integrations.decoding.planning import PackView, plan_prompts

PACK = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]
PROSE = (
    "The history of the printing press begins in the fifteenth century, when movable type made books "
    "cheaper to produce. Within a few decades, printers in many European cities were publishing "
    "grammars, calendars, sermons and scientific works, and literacy began to spread beyond"
)
BATCH = [
    "The best way to learn a new language is",
    "def quicksort(items):\n",
    "In the morning the fishermen went down to the harbour and",
    "SELECT name, COUNT(*) FROM orders",
    "The main causes of the First World War were",
    "import json\n\ndef read_config(path):\n",
    "A healthy breakfast usually includes",
    "class Stack:\n    def __init__(self):\n",
]


def never_stop(m: Member) -> Member:
    """The same model and tokenizer, without an end-of-sequence token (fixed-length runs)."""
    return Member(m.name, m.model, m.tokenizer, eos_token_ids=frozenset({-1}))


def decode_seconds_per_token(engine: PackEngine, prompts: list[str], n: int, **kw: object) -> float:
    """Seconds per decoding step (all prompts of the batch advance one token), prefill excluded."""
    session = engine.session(prompts, max_new_tokens=n, **kw)
    session.prefill()
    start = time.perf_counter()
    for _ in range(n):
        session.feed(session.choose())
    return (time.perf_counter() - start) / n


def best_of(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    return min(fn() for _ in range(repeat))


def copy_bandwidth() -> float:
    """Bytes/s of a large float32 tensor copy (read + write counted)."""
    src = torch.empty(256 * 1024 * 1024 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / min(times)


@torch.inference_mode()
def plain_forward(member: Member, text: str) -> float:
    ids = torch.tensor([member.encode(text)])
    start = time.perf_counter()
    member.model(ids)
    return time.perf_counter() - start


def prefill_seconds(engine: PackEngine, text: str, **kw: object) -> float:
    session = engine.session([text], **kw)
    start = time.perf_counter()
    session.prefill()
    return time.perf_counter() - start


@torch.inference_mode()
def no_cache_step(members: list[Member], plan_inputs: list[list[int]], engine: PackEngine, ref: int, w) -> int:  # type: ignore[no-untyped-def]
    """One fused step without caches: every member reads the whole sequence again."""
    fused = None
    vocab = members[ref].vocab_size
    for k, m in enumerate(members):
        logits = m.model(torch.tensor([plan_inputs[k]])).logits[0, -1].float()  # all positions computed
        vmap = engine.vocab_map(ref, k)
        mapped = logits[:vocab] if vmap is None else vmap.member_logits(logits[None])[0]
        fused = mapped * w[k] if fused is None else fused + mapped * w[k]
    return int(fused.argmax())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens (a smoke run, not the reported numbers)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine.md"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 16 if args.quick else 48
    torch.manual_seed(0)
    members = [never_stop(load_member(f"{name},backend=transformers", progress=False)) for name in PACK]
    pack = PackEngine(members, progress=False)
    rows: list[tuple[str, str, str, str]] = []

    def add(name: str, value: float, target: str, detail: str) -> None:
        rows.append((name, f"{value:.2f}", target, detail))
        print(f"{name}: {value:.3f} (target {target}) {detail}", flush=True)

    # warm up every member and build the vocabulary maps outside the timings
    pack.generate(PROSE, max_new_tokens=2)
    for r in range(len(members)):
        pack.generate(PROSE, max_new_tokens=2, reference=members[r].name)

    # 1. fused decode vs the members alone
    alone = {m.name: best_of(lambda m=m: decode_seconds_per_token(PackEngine([m]), [PROSE], n), 2) for m in members}
    fused = best_of(lambda: decode_seconds_per_token(pack, [PROSE], n, weighting="uniform"), 2)
    add(
        "fused decode / sum of members' decode (per token)",
        fused / sum(alone.values()),
        "<= 1.10",
        f"fused {fused * 1000:.0f} ms; alone " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in alone.items()),
    )

    # 2. prefill + weights vs the members' plain forward passes
    plain = sum(best_of(lambda m=m: plain_forward(m, PROSE)) for m in members)
    fixed_ref = best_of(lambda: prefill_seconds(pack, PROSE, reference=PACK[0]))
    auto_ref = best_of(lambda: prefill_seconds(pack, PROSE))
    tokens = len(members[0].encode(PROSE))
    add("prefill + sim weights / members' forward (reference fixed)", fixed_ref / plain, "<= 1.10", f"{tokens} tokens")
    add(
        "prefill + sim weights / members' forward (reference per prompt)",
        auto_ref / plain,
        "(reported)",
        "each member also scores its own tokenization",
    )
    long_text = (PROSE + " ") * 12
    ids = members[0].encode(long_text)
    long_text = members[0].tokenizer.decode(ids[:512])
    same = [never_stop(load_member(f"{PACK[0]},backend=transformers", progress=False))]
    same.append(Member("smollm2-copy", type(same[0].model)(same[0].model.config).eval(), same[0].tokenizer))
    same[1].model.load_state_dict(same[0].model.state_dict())
    with torch.no_grad():
        for p in same[1].model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    same_pack = PackEngine(same, progress=False)
    plain_long = sum(best_of(lambda m=m: plain_forward(m, long_text), 2) for m in same)
    sim_long = best_of(lambda: prefill_seconds(same_pack, long_text, weighting="sim"), 2)
    opt_long = best_of(lambda: prefill_seconds(same_pack, long_text, weighting="opt"), 2)
    add("prefill + sim / members' forward, 512 tokens", sim_long / plain_long, "<= 1.10", "two SmolLM2-sized members")
    add("prefill + opt / members' forward, 512 tokens", opt_long / plain_long, "<= 1.50", "two SmolLM2-sized members")

    # 3. KV caches vs recomputing every member on the whole sequence
    steps = 128
    plans = plan_prompts(PackView(members, pack.vocab_map, pack.projection), [[PROSE] * len(members)], 0).plans
    plan = plans[0]
    w = [1 / len(members)] * len(members)
    sampled = [0, 32, 64, 96, 127] if not args.quick else [0, 127]
    naive_times = []
    for t in sampled:
        inputs = [ids + [ids[-1]] * t for ids in plan.inputs]  # the sequence length at step t
        start = time.perf_counter()
        no_cache_step(members, inputs, pack, 0, w)
        naive_times.append(time.perf_counter() - start)
    naive = statistics.mean(naive_times)
    cached = decode_seconds_per_token(
        pack, [PROSE], steps if not args.quick else 16, weighting="uniform", reference=PACK[0]
    )
    add(
        "speed-up of KV caches over no-cache fusion, 128 new tokens",
        naive / cached,
        ">= 10",
        f"no-cache step {naive * 1000:.0f} ms (mean of steps {sampled}), cached step {cached * 1000:.0f} ms",
    )

    # 4. batch of 8 against 8 one at a time
    bn = 12 if args.quick else 24
    one = sum(decode_seconds_per_token(pack, [p], bn) for p in BATCH)
    eight = decode_seconds_per_token(pack, BATCH, bn)
    add(
        "tokens/s, batch of 8 / one at a time",
        one / eight,
        ">= 4",
        f"{bn} tokens each; one-by-one {8 / one:.1f} tok/s, batched {8 / eight:.1f} tok/s",
    )

    # 5. single-member pack vs transformers' generate
    single = members[0]
    gen_n = 32 if args.quick else 64
    ids_t = torch.tensor([single.encode(PROSE)])

    def hf() -> float:
        start = time.perf_counter()
        single.model.generate(
            ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=gen_n, do_sample=False, min_new_tokens=gen_n
        )
        return time.perf_counter() - start

    def ours() -> float:
        start = time.perf_counter()
        PackEngine([single]).generate(PROSE, max_new_tokens=gen_n)
        return time.perf_counter() - start

    hf_s, ours_s = best_of(hf), best_of(ours)
    add(
        "single-member pack speed / transformers generate",
        hf_s / ours_s,
        ">= 1.0",
        f"{single.name}, {gen_n} tokens: {gen_n / ours_s:.1f} vs {gen_n / hf_s:.1f} tok/s",
    )

    # 6. bandwidth
    bw = copy_bandwidth()
    bytes_per_token = sum(m.parameter_bytes for m in members)
    achieved = bytes_per_token / fused
    add(
        "fused decode bandwidth / memory copy bandwidth",
        achieved / bw,
        "(reported)",
        f"{achieved / 1e9:.1f} GB/s of parameters vs copy {bw / 1e9:.1f} GB/s",
    )

    table = ["| measurement | ratio | target | detail |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    machine = f"{platform.machine()} with {torch.get_num_threads()} threads, torch {torch.__version__}"
    header = f"Measured on {machine}, pack {', '.join(PACK)}.\n\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n".join(table) + "\n")
    print("\n" + header + "\n".join(table))


if __name__ == "__main__":
    main()
