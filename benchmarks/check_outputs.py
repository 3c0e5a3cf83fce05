"""Dump the engine's outputs on the tiny in-memory models, for a before/after comparison.

A refactor that must not change behaviour is checked by running this script on the code
before and after and comparing the two files byte for byte: generation (greedy, sampled,
batched, streamed, chat, under a grammar), weights and scoring, over packs of one, two and
three tokenizers, both alignments, every weighting, both scorings, and a fixed or a
per-prompt reference. Floats are written with ``repr``, so equal files mean bit-identical
outputs.

    python benchmarks/check_outputs.py /tmp/before.json   # on the old code
    python benchmarks/check_outputs.py /tmp/after.json    # on the new code
    cmp /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packllm_integrations import Constraint, PackEngine, TextEvent  # noqa: E402
from tests import tiny  # noqa: E402

PROMPTS = ["The cat sat on the", "def f(x):\n    return", "In the beginning, there"]
PAIRS = [("The cat sat on the", " mat"), ("def f(x):", "\n    return x + 1"), ("", "Hello there")]
CHAT = [{"role": "user", "content": "Say something about cats."}]


def packs() -> dict[str, list]:
    bl, bl_b, sp = tiny.bytelevel_member(), tiny.bytelevel_member_b(), tiny.sentencepiece_member()
    nobos = tiny.sentencepiece_member_without_bos()
    return {
        "one-tokenizer": [bl, bl_b],
        "two-tokenizers": [bl, sp],
        "three-members": [sp, bl, bl_b],
        "bos-and-none": [nobos, sp, bl],
    }


def result_dict(r) -> dict:
    return {
        "text": r.text,
        "finish": r.finish_reason,
        "weights": {k: repr(v) for k, v in r.weights.items()},
        "ppl": {k: repr(v) for k, v in r.prompt_perplexity.items()},
        "reference": r.reference,
        "usage": [r.usage.prompt_tokens, r.usage.completion_tokens],
        "dropped": r.dropped,
    }


def run_config(engine: PackEngine, settings: dict) -> dict:
    out: dict = {}
    greedy = engine.generate_batch(PROMPTS, max_new_tokens=12, **settings)
    out["greedy"] = [result_dict(r) for r in greedy]
    streamed = "".join(
        e.text for e in engine.stream(PROMPTS[0], max_new_tokens=12, **settings) if isinstance(e, TextEvent)
    )
    out["stream_equals_batch"] = streamed == greedy[0].text
    sampled = engine.generate_batch(PROMPTS[:2], max_new_tokens=10, temperature=0.9, top_p=0.95, seed=7, **settings)
    out["sampled"] = [result_dict(r) for r in sampled]
    out["chat"] = result_dict(engine.generate(CHAT, max_new_tokens=8, **settings))
    scored = engine.score(PAIRS, **settings)
    out["score"] = [[repr(s.logprob), s.tokens, s.is_greedy, [repr(x) for x in s.token_logprobs]] for s in scored]
    return out


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs.json")
    torch.manual_seed(0)
    dump: dict = {}
    started = time.perf_counter()
    for pack_name, members in packs().items():
        engine = PackEngine(members, progress=False)
        references = [None, members[-1].name]
        for alignment, weighting, scoring, reference in itertools.product(
            ["natural", "mined"], ["sim", "opt", "uniform", "top1"], ["reference", "own"], references
        ):
            if scoring == "own" and weighting in ("uniform", "top1"):
                continue
            settings = dict(alignment=alignment, weighting=weighting, scoring=scoring, reference=reference)
            key = f"{pack_name}/{alignment}/{weighting}/{scoring}/{reference}"
            dump[key] = run_config(engine, settings)
        constraint = Constraint.regex(r"[a-z ]{1,12}\.")
        for alignment in ["natural", "mined"]:
            r = engine.generate_batch(PROMPTS, max_new_tokens=16, alignment=alignment, constraint=constraint)
            dump[f"{pack_name}/{alignment}/constrained"] = [result_dict(x) for x in r]
    path.write_text(json.dumps(dump, indent=1, sort_keys=True))
    print(f"{len(dump)} configurations in {time.perf_counter() - started:.0f} s -> {path}")


if __name__ == "__main__":
    main()
