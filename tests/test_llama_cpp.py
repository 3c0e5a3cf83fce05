"""The llama.cpp backend on a tiny float32 GGUF file (the same weights transformers reads).

Both backends read the same float32 tensors here, so they must agree to rounding; what
llama.cpp adds (its own KV cache, rollback by truncation, forks, a context that grows)
is checked against fresh prefills. The real quantized models are in
``tests/integration/test_backends_real.py``.
"""

from __future__ import annotations

import threading

import pytest
import torch

from packllm_integrations import (
    ConfigError,
    Member,
    MemberSpec,
    ModelLoadError,
    ModelNotFoundError,
    PackEngine,
    PackLLMError,
    TextEvent,
    load_member,
)

pytest.importorskip("llama_cpp")

from packllm_integrations.alignment.vocabulary import common_prefix  # noqa: E402
from packllm_integrations.backends.base import MemberBackend  # noqa: E402
from packllm_integrations.backends.llama_cpp import LlamaCppMember  # noqa: E402
from packllm_integrations.loading import specs  # noqa: E402

TOL = 2e-3  # float32 in both; llama.cpp sums in another order
ROWS = ["def add(a, b):\n    return a + b", "The value of the", "import os\nimport sys\n\ndef main(x, y, z):"]


@pytest.fixture(scope="module")
def cpp(tiny_gguf) -> LlamaCppMember:
    return load_member(f"{tiny_gguf},backend=llama.cpp", progress=False)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def hf(tiny_gguf) -> Member:
    return load_member(f"{tiny_gguf},backend=transformers,name=hf", progress=False)  # type: ignore[return-value]


def _logits(member, ids: list[int]) -> torch.Tensor:
    return member.scores(member.prefill([ids]).row(0)).float()


def test_auto_is_llama_cpp_for_gguf_files_on_the_cpu(cpp, tiny_gguf, tiny_folder, monkeypatch):
    assert isinstance(cpp, LlamaCppMember) and cpp.name == "tiny-llama"
    assert cpp.parameter_bytes > 0 and cpp.identity["dtype"] == "gguf"
    monkeypatch.delenv("PACKLLM_BACKEND", raising=False)
    assert MemberSpec(str(tiny_gguf), threads=1).resolved_backend() == "llama.cpp"
    assert isinstance(load_member(str(tiny_gguf), progress=False), LlamaCppMember)
    assert MemberSpec(str(tiny_gguf), dtype="bfloat16").resolved_backend() == "transformers"
    assert MemberSpec(str(tiny_folder)).resolved_backend() == "transformers"  # not a GGUF
    monkeypatch.setenv("PACKLLM_BACKEND", "transformers")
    assert MemberSpec(str(tiny_gguf)).resolved_backend() == "transformers"
    assert isinstance(load_member(str(tiny_gguf), progress=False), Member)
    monkeypatch.setenv("PACKLLM_BACKEND", "onnx")
    with pytest.raises(ConfigError, match="PACKLLM_BACKEND"):
        MemberSpec(str(tiny_gguf)).resolved_backend()


def test_auto_falls_back_to_transformers_without_llama_cpp(tiny_gguf, monkeypatch, caplog):
    """Without llama-cpp-python, a GGUF file still loads (dequantized) and a warning says why."""
    monkeypatch.delenv("PACKLLM_BACKEND", raising=False)
    monkeypatch.setattr(specs, "llama_cpp_installed", lambda: False)
    specs._warn_no_llama_cpp.cache_clear()
    with caplog.at_level("WARNING", logger=specs.__name__):
        assert MemberSpec(str(tiny_gguf)).resolved_backend() == "transformers"
        assert MemberSpec(str(tiny_gguf)).resolved_backend() == "transformers"
    said = [r.getMessage() for r in caplog.records if "llama-cpp-python" in r.getMessage()]
    assert len(said) == 1 and "packllm-integrations[llama-cpp]" in said[0]


def test_prefill_agrees_with_transformers_on_the_same_file(cpp, hf) -> None:
    for text in ROWS:
        ids = hf.encode(text)
        assert cpp.encode(text) == ids
        assert torch.allclose(_logits(cpp, ids), _logits(hf, ids), atol=TOL)


def test_a_batch_equals_each_row_alone(cpp) -> None:
    rows = [cpp.encode(t) for t in ROWS]
    batch = cpp.prefill(rows)
    for b, ids in enumerate(rows):
        assert torch.allclose(batch.row(b, len(ids)), _logits(cpp, ids), atol=1e-4)


def test_rows_that_share_a_prefix_read_it_once_and_equal_each_row_alone(cpp, monkeypatch) -> None:
    """The options of one question: the later rows copy the first row's cells for the shared context."""
    context = cpp.encode("Question: which of these is a prime number?\nChoices:\nA. 4\nB. 7\nC. 9\nAnswer:")
    rows = [context + cpp.encode(option) for option in (" 4", " 7 is prime", " 9")] + [context[:5], list(context)]
    read: list[int] = []
    decode = type(cpp.prefill([rows[3]]).cache.context).decode

    def counting(self, items, checkpoint=None, threads=None):
        read.append(len(items))
        return decode(self, items, checkpoint, threads)

    monkeypatch.setattr(type(cpp.prefill([rows[3]]).cache.context), "decode", counting)
    batch = cpp.prefill(rows, rollback=True)
    shared = [common_prefix(rows[0], r) for r in rows[1:3]]  # the context, and any leading id of the options
    assert min(shared) >= len(context)
    assert sum(read) == len(rows[0]) + len(rows[3]) + sum(len(r) - n for r, n in zip(rows[1:3], shared, strict=True))
    for b, ids in enumerate(rows):
        assert torch.allclose(batch.row(b, len(ids)), _logits(cpp, ids), atol=1e-4)
    stepped = cpp.step(batch.cache, [5, 6, 7, 8, 9])  # each row's cache holds its whole row
    for b, (ids, t) in enumerate(zip(rows, [5, 6, 7, 8, 9], strict=True)):
        assert torch.allclose(stepped[b], _logits(cpp, ids + [t])[-1], atol=1e-4)
    cpp.crop(batch.cache, 1, len(context) - 2)  # a shared row rolled back into the shared part
    again = cpp.extend(batch.cache, {1: [11, 12]})[1]
    assert torch.allclose(again, _logits(cpp, context[:-2] + [11, 12])[-2:], atol=1e-4)
    assert torch.allclose(cpp.step(batch.cache, [3, 3, 3, 3, 3])[0], _logits(cpp, rows[0] + [5, 3])[-1], atol=1e-4)


def test_steps_crops_and_forks_equal_fresh_prefills(cpp) -> None:
    rows = [cpp.encode(t) for t in ROWS[:2]]
    pre = cpp.prefill(rows, rollback=True)
    stepped = cpp.step(pre.cache, [5, 7])
    for b, (ids, t) in enumerate(zip(rows, [5, 7], strict=True)):
        assert torch.allclose(stepped[b], _logits(cpp, ids + [t])[-1], atol=1e-4)
    fork = cpp.fork(pre.cache, 0)
    cpp.crop(pre.cache, 0, len(rows[0]) - 3)  # natural alignment's rollback: three ids back, then others
    again = cpp.extend(pre.cache, {0: [9, 10, 11, 12]})[0]
    assert torch.allclose(again, _logits(cpp, rows[0][:-3] + [9, 10, 11, 12])[-4:], atol=1e-4)
    forked = cpp.step(fork, [8])  # the fork kept the row as it was before the crop
    assert torch.allclose(forked[0], _logits(cpp, rows[0] + [5, 8])[-1], atol=1e-4)


def test_branches_read_side_by_side_equal_fresh_prefills_and_the_default(cpp) -> None:
    rows = [cpp.encode(ROWS[2]), cpp.encode(ROWS[0])]
    pre = cpp.prefill(rows, rollback=True)
    ids = rows[0]
    n = len(ids)
    branches = [(n - 3, [9, 10]), (2, [11]), (n - 1, [12, 13, 14]), (n - 3, [15])] * 3  # more than free sequences
    free = len(pre.cache.context.free)
    assert 0 < free < len(branches)
    side_by_side = cpp.branch(pre.cache, 0, branches)
    one_by_one = MemberBackend.branch(cpp, cpp.fork(pre.cache, 0), 0, branches)  # the default: crop, extend
    for (p, tail), got, serial in zip(branches, side_by_side, one_by_one, strict=True):
        fresh = _logits(cpp, ids[:p] + tail)[-len(tail) :]
        assert got.shape == fresh.shape and torch.allclose(got, fresh, atol=1e-4)
        assert torch.allclose(serial, fresh, atol=1e-4)
    assert len(pre.cache.context.free) == free  # every branch's sequence given back
    stepped = cpp.step(pre.cache, [5, 7])  # the row itself is left whole
    assert torch.allclose(stepped[0], _logits(cpp, ids + [5])[-1], atol=1e-4)


def test_branches_without_a_free_sequence_go_one_at_a_time_on_the_row(cpp) -> None:
    ids = cpp.encode(ROWS[2])
    pre = cpp.prefill([ids], rollback=True)
    context = pre.cache.context
    held = [context.take() for _ in range(len(context.free))]  # every spare sequence in use
    branches = [(len(ids) - 2, [9, 10]), (3, [11])]
    out = cpp.branch(pre.cache, 0, branches)
    for (p, tail), got in zip(branches, out, strict=True):
        assert torch.allclose(got, _logits(cpp, ids[:p] + tail)[-len(tail) :], atol=1e-4)
    assert context.tokens[pre.cache.seqs[0]] == ids[:3] + [11]  # cropped, the shallowest last
    for seq in held:
        context.release(seq)


def test_a_context_grows_when_forked_rows_outgrow_its_cells(cpp) -> None:
    rows = [cpp.encode("The value of the"), cpp.encode("def f(x):")]
    pre = cpp.prefill(rows, rollback=True)  # room for two rows and a fork of each
    first = pre.cache.context.cells
    forks = [cpp.fork(pre.cache, b) for b in range(2)]
    fed = [3 + i % 50 for i in range(200)]  # four rows of 200 new ids: more than the first cells
    for t in fed:
        mine = cpp.step(pre.cache, [t, t + 2])
        theirs = [cpp.step(fork, [t + 1])[0] for fork in forks]
    assert pre.cache.context.cells > first and all(f.context is pre.cache.context for f in forks)
    for b, ids in enumerate(rows):
        assert torch.allclose(mine[b], _logits(cpp, ids + [t + 2 * b for t in fed])[-1], atol=1e-3)
        assert torch.allclose(theirs[b], _logits(cpp, ids + [t + 1 for t in fed])[-1], atol=1e-3)


def test_a_row_longer_than_the_window_is_a_typed_error(cpp) -> None:
    pre = cpp.prefill([cpp.encode("The value")])
    with pytest.raises(PackLLMError, match="context is full"):
        for _ in range(cpp.context_window):
            cpp.step(pre.cache, [5])


def test_a_pack_generates_the_same_text_with_either_backend(cpp, hf, sp) -> None:
    prompts = ["The value of the", "def main(x):"]
    with_cpp = PackEngine([cpp, sp], progress=False, max_new_tokens=24, alignment="natural")
    with_hf = PackEngine([hf, sp], progress=False, max_new_tokens=24, alignment="natural")
    a, b = with_cpp.generate_batch(prompts), with_hf.generate_batch(prompts)
    assert [r.text for r in a] == [r.text for r in b] and all(r.text for r in a)
    for x, y in zip(a, b, strict=True):
        assert x.weights["tiny-llama"] == pytest.approx(y.weights["hf"], abs=1e-3)
    streamed = "".join(e.text for e in with_cpp.stream(prompts[0]) if isinstance(e, TextEvent))
    assert streamed == a[0].text
    scored = with_cpp.score([("The value of the", " end"), ("The value of the", " start")])
    assert all(s.logprob < 0 for s in scored)


def test_bad_specs_are_typed_errors(tmp_path, tiny_folder) -> None:
    with pytest.raises(ModelNotFoundError, match="missing.gguf"):
        load_member(f"{tmp_path / 'missing.gguf'},backend=llama.cpp", progress=False)
    with pytest.raises(ConfigError, match="backend"):
        load_member(f"{tiny_folder},backend=llama.cpp", progress=False)
    with pytest.raises(ConfigError, match="threads"):
        load_member("smollm2-135m,threads=0", progress=False)
    with pytest.raises(ConfigError, match="backend"):
        load_member("smollm2-135m,backend=onnx", progress=False)
    with pytest.raises(ConfigError, match="threads"):  # transformers would ignore it
        load_member("smollm2-135m,backend=transformers,threads=2", progress=False)
    with pytest.raises(ConfigError, match="dtype"):  # llama.cpp reads the GGUF's own types
        load_member("smollm2-135m,backend=llama.cpp,dtype=bfloat16", progress=False)


def test_a_file_llama_cpp_cannot_read_is_a_load_error(tmp_path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        load_member(f"{bad},backend=llama.cpp", progress=False)


def test_llama_cpp_members_step_in_lanes_on_a_share_of_the_cores(tiny_gguf, monkeypatch) -> None:
    """Two llama.cpp members on two cores step one prompt at once, each in its own lane on one
    core; the text is the same as one after another on both cores. A batch of prompts, one
    core, or a member whose ``threads=`` is given keeps them in the calling thread."""
    from packllm_integrations.decoding import session as session_module

    a = load_member(f"{tiny_gguf},backend=llama.cpp,name=a", progress=False)
    b = load_member(f"{tiny_gguf},backend=llama.cpp,name=b", progress=False)
    seen: dict[str, set[tuple[str, int]]] = {"a": set(), "b": set()}
    for m in (a, b):
        step = m.step

        def recording(cache, ids, m=m, step=step):  # type: ignore[no-untyped-def]
            out = step(cache, ids)
            seen[m.name].add((threading.current_thread().name, cache.context.threads))
            return out

        monkeypatch.setattr(m, "step", recording)
    prompts = ["The value of the", "def main(x):"]
    texts = {}
    for cores in (2, 1):
        monkeypatch.setattr(session_module, "default_threads", lambda cores=cores: cores)
        for s in seen.values():
            s.clear()
        engine = PackEngine([a, b], progress=False, max_new_tokens=12, weighting="uniform")
        texts[cores] = [engine.generate(p).text for p in prompts]
        if cores == 2:
            threads = {name for s in seen.values() for name, _ in s}
            assert len(threads) == 2 and threading.current_thread().name in threads
            assert {n for s in seen.values() for _, n in s} == {1}  # each on one core
        else:
            assert {name for s in seen.values() for name, _ in s} == {threading.current_thread().name}
            assert {n for s in seen.values() for _, n in s} == {a.threads}
    assert texts[2] == texts[1] and all(texts[1])
    monkeypatch.setattr(session_module, "default_threads", lambda: 2)
    for s in seen.values():
        s.clear()
    assert all(r.text for r in engine.generate_batch(prompts))  # two rows: one after another, every core
    assert {name for s in seen.values() for name, _ in s} == {threading.current_thread().name}
    assert {n for s in seen.values() for _, n in s} == {a.threads}
    pinned = load_member(f"{tiny_gguf},backend=llama.cpp,name=c,threads=1", progress=False)
    assert a.splits_cores and not pinned.splits_cores
