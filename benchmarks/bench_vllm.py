"""A member served by vLLM against the same model in process, measured in one run.

Usage:
    python benchmarks/bench_vllm.py [--url URL] [--label TEXT] [--out FILE]

Without ``--url`` it starts vLLM (CPU build) on SmolLM2-135M's cached float32 folder on
127.0.0.1, from the venv ``tests/vllm_server.py`` manages (``PACKLLM_VLLM=install`` creates
it), with ``--max-logprobs 50``; with ``--url`` it uses a server already running there that
serves that folder as ``smollm2``. It writes (or appends to) a Markdown report, default
``benchmarks/results/vllm.md``:

1. prompt perplexity of the served member (``top_k`` 20 and 50) against the in-process
   float32 member, on the prompts of ``bench_backends.py``;
2. ``score()`` of a few continuations, a pack of the served member alone against the
   in-process member alone;
3. bits per byte (``score()`` on ``bench_backends.py``'s texts) of a two-member pack
   (SmolLM2, served or in process, with Qwen2.5-Coder-0.5B in process);
4. greedy text of that pack, served against in process, over 20 prompts and 16 tokens,
   with the other member's candidates named to the served one and with each member's own
   top-k only, and the time a generated token takes in each case.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.bench_backends import PROMPTS, TEXTS  # noqa: E402
from packllm_integrations import PackEngine, load_member  # noqa: E402
from packllm_integrations.decoding.fusion import nll_per_token  # noqa: E402

CONTINUATIONS = [
    ("I like to eat", " a banana"),
    ("The capital of France is", " Paris, a city on the Seine."),
    ("def add(a, b):\n", "    return a + b\n"),
]


def perplexity(member, text: str) -> float:  # type: ignore[no-untyped-def]
    """The member's prompt perplexity of ``text``, as the engine computes it for the weights."""
    ids = member.encode(text)
    with torch.inference_mode():
        states = member.prefill([ids]).row(0)[:-1]  # position t predicts token t + 1
        nll = nll_per_token(member, states, torch.tensor(ids[1:]), None, member.vocab_size)
    return math.exp(float(nll.mean()))


def bits_per_byte(engine: PackEngine) -> float:
    scored = engine.score(TEXTS)
    return -sum(s.logprob for s in scored) / math.log(2) / sum(s.num_bytes for s in scored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running vLLM server of SmolLM2-135M's float32 folder, served as 'smollm2'")
    parser.add_argument("--label", default="", help="a label for this run's section")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vllm.md"))
    parser.add_argument("--prompts", type=int, default=20)
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        from tests.vllm_server import VllmServer, model_folder, venv_python

        python = venv_python()
        if python is None:
            sys.exit("no vLLM venv: run with PACKLLM_VLLM=install once, or pass --url")
        server = VllmServer(python, model_folder("smollm2-135m"), max_logprobs=50).start()
        url = server.url
    out: list[str] = [f"## {args.label or 'run'}", ""]
    try:
        local = load_member("smollm2-135m,backend=transformers,name=smollm2", progress=False)
        served = {
            k: load_member(f"openai:{url},model=smollm2,tokenizer=smollm2-135m,name=smollm2,top_k={k}", progress=False)
            for k in (20, 50)
        }
        out += ["| prompt | in process | served top_k=20 | served top_k=50 |", "|---|---|---|---|"]
        worst = 0.0
        for text in PROMPTS[:8]:
            here = perplexity(local, text)
            there = [perplexity(served[k], text) for k in (20, 50)]
            worst = max(worst, *(abs(v / here - 1) for v in there))
            out.append(f"| {text[:40]!r} | {here:.3f} | {there[0]:.3f} | {there[1]:.3f} |")
        out += ["", f"Largest relative gap of prompt perplexity: **{worst:.2e}**", ""]
        print("\n".join(out), flush=True)
        out += ["| context | continuation | score() in process | served top_k=20 | gap |", "|---|---|---|---|---|"]
        for context, cont in CONTINUATIONS:
            here = PackEngine([local], progress=False).score([(context, cont)])[0].logprob
            there = PackEngine([served[20]], progress=False).score([(context, cont)])[0].logprob
            out.append(f"| {context!r} | {cont!r} | {here:.4f} | {there:.4f} | {abs(there / here - 1):.2e} |")
        qwen = load_member("qwen2.5-coder-0.5b,backend=transformers", progress=False)
        full = bits_per_byte(PackEngine([local, qwen], progress=False))
        out += ["", "| pack (SmolLM2 + Qwen2.5-Coder-0.5B in process) | bits per byte | against full logits |"]
        out += ["|---|---|---|", f"| SmolLM2 in process (full logits) | {full:.4f} | |"]
        for k in (20, 50):
            value = bits_per_byte(PackEngine([served[k], qwen], progress=False))
            out.append(f"| SmolLM2 served, top_k={k} | {value:.4f} | {value / full - 1:+.2%} |")
        out.append("")
        n = args.prompts
        prompts = (PROMPTS * 2)[:n]
        here_pack = PackEngine([local, qwen], progress=False, max_new_tokens=16)
        want = [here_pack.generate(p).text for p in prompts]
        member = served[20]
        names = bool(getattr(member, "names_tokens", False))
        out += ["| SmolLM2 served (top_k=20) + Qwen in process | greedy text equal to in process | ms a token |"]
        out.append("|---|---|---|")
        for naming in dict.fromkeys((names, False)):
            member.names_tokens = naming
            there_pack = PackEngine([member, qwen], progress=False, max_new_tokens=16)
            start = time.perf_counter()
            got = [there_pack.generate(p) for p in prompts]
            took = (time.perf_counter() - start) / sum(g.usage.completion_tokens for g in got)
            same = sum(g.text == w for g, w in zip(got, want, strict=True))
            how = "each member's candidates named to the served one" if naming else "each member's own top-k"
            out.append(f"| {how} | {same} / {n} | {took * 1000:.0f} |")
            print(out[-1], flush=True)
        member.names_tokens = names
        out.append("")
        for m in served.values():
            m.close()
    finally:
        if server is not None:
            server.stop()
    print("\n".join(out), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.exists() else "# Members served by vLLM\n\n"
    args.out.write_text(old.rstrip("\n") + "\n\n" + "\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
