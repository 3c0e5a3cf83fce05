"""MinED vocabulary maps between the bundled tokenizers: build time, cached load time, coverage.

Usage:
    python benchmarks/bench_alignment.py [--out benchmarks/results/alignment.md]

For each of the six directed pairs among the three bundled tokenizers (reference -> member):
- cold: ``vocab_map`` into an empty temporary cache folder (fingerprints, the exact MinED
  build, saving the map);
- cached: a second ``vocab_map`` call after clearing the in-memory maps, i.e. fingerprints
  plus reading the map back from disk;
- coverage: the share of reference tokens that the member has with exactly the same bytes.

When the default cache (``<cache_dir>/maps``) already holds a map for the same pair, the new
map is also compared with it token for token ("same as cache"); "-" means there was none.
Only the tokenizers are loaded (from the bundled model folders), not the models.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as hf_logging

from packllm_integrations.alignment import mined as alignment
from packllm_integrations.alignment.vocabulary import vocabulary_fingerprint
from packllm_integrations.loading import _cached_catalog_model, cache_dir, load_vocab_map
from packllm_integrations.loading.catalog import CATALOG, is_installed

MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]


def load(name: str) -> tuple[object, int]:
    """The tokenizer of a bundled model and the model's logit width (its config's vocab_size)."""
    folder = str(_cached_catalog_model(CATALOG[name], progress=False))
    config = AutoConfig.from_pretrained(folder)
    width = getattr(config, "vocab_size", None) or config.get_text_config().vocab_size
    return AutoTokenizer.from_pretrained(folder), int(width)


def same_as_default_cache(reference: object, member: object, width: int, built: alignment.VocabMap) -> str:
    """'yes' / 'NO' against a map for the same pair already in the default cache, '-' if there is none."""
    key = vocabulary_fingerprint(reference), vocabulary_fingerprint(member) + f"-{width}"
    path = cache_dir() / "maps" / f"v{alignment.MAP_VERSION}-{key[0][:16]}-{key[1][:16]}-{width}.pt"
    if not path.is_file():
        return "-"
    old = torch.load(path, weights_only=True)
    same = torch.equal(old["output"], built.output) and torch.equal(old["input"], built.input)
    return "yes" if same and int(old["exact"]) == built.exact else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "alignment.md")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    missing = [m for m in MODELS if not is_installed(m)]
    if missing:
        raise SystemExit(f"bundled model packages not installed: {missing} (see requirements-models.txt)")
    tokenizers = {name: load(name) for name in MODELS}

    rows = []
    for ref_name in MODELS:
        for mem_name in MODELS:
            if ref_name == mem_name:
                continue
            (reference, _), (member, width) = tokenizers[ref_name], tokenizers[mem_name]
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                built = load_vocab_map(reference, member, width, progress=False, cache=Path(tmp))
                cold = time.perf_counter() - start
                start = time.perf_counter()
                cached = load_vocab_map(reference, member, width, progress=False, cache=Path(tmp))
                warm = time.perf_counter() - start
            assert torch.equal(cached.output, built.output) and torch.equal(cached.input, built.input)
            check = same_as_default_cache(reference, member, width, built)
            row = (ref_name, mem_name, len(reference), width, cold, built.build_seconds, warm, built.coverage, check)
            rows.append(row)
            print(f"{ref_name} -> {mem_name}: cold {cold:.1f} s, cached {warm:.2f} s, coverage {built.coverage:.1%}")

    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# MinED vocabulary maps: build and load times",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at the end {load_avg} (a shared machine: times vary from run to run).",
        "Produced by `python benchmarks/bench_alignment.py`. Cold: `vocab_map` into an empty cache folder "
        "(fingerprints, build, save). Cached: the same call again after clearing the in-memory maps "
        "(fingerprints, read from disk). Coverage: share of reference tokens the member has exactly. "
        "Same as cache: the map equals the one already in the default cache for that pair.",
        "",
        "| reference | member | reference tokens | member width | cold (s) | of which build (s) | cached (s) "
        "| coverage | same as cache |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for ref_name, mem_name, size, width, cold, build, warm, coverage, check in rows:
        lines.append(
            f"| {ref_name} | {mem_name} | {size:,} | {width:,} | {cold:.1f} | {build:.1f} | {warm:.2f} "
            f"| {coverage:.1%} | {check} |"
        )
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
