"""The harness on tiny real models: metrics recomputed by hand, forward passes shared by methods."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from packllm_integrations import PackEngine
from packllm_integrations.errors import ConfigError
from packllm_integrations.eval import (
    EvalReport,
    Method,
    MultipleChoiceTask,
    TaskResult,
    evaluate,
    load_task_file,
    standard_methods,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def engine(bl, sp, bl_b):
    """Three tiny members, two tokenizer families (so MinED alignment is exercised)."""
    return PackEngine([bl, sp, bl_b], progress=False)


@pytest.fixture(scope="module")
def mc():
    return load_task_file(DATA / "eval_mc.jsonl")


@pytest.fixture(scope="module")
def text():
    return load_task_file(DATA / "eval_text.jsonl", window_chars=150, context_chars=80)


@pytest.fixture(scope="module")
def report(engine, mc, text):
    return evaluate(engine, [mc, text], standard_methods(engine, fixed=(1, 2, 3)), batch_size=4, progress=False)


def _by_hand_accuracy(task: MultipleChoiceTask, results) -> tuple[float, list[int]]:
    """Accuracy from per-option results, written out independently of the task's code."""
    preds, start = [], 0
    for item in task.items:
        options = results[start : start + len(item.choices)]
        per_token = [-r.logprob / r.tokens for r in options]
        preds.append(per_token.index(min(per_token)))
        start += len(item.choices)
    return sum(p == i.answer for p, i in zip(preds, task.items, strict=True)) / len(task.items), preds


def test_methods_in_column_order(engine):
    names = [m.name for m in standard_methods(engine, fixed=(1, 1, 2))]
    assert names == [*engine.names, "uniform", "top1", "sim", "opt", "fixed"]
    both = standard_methods(engine, ["members"], members="both")
    assert [m.kind for m in both] == ["member", "member-in-pack"] * 3
    assert both[1].name == f"{engine.names[0]}[pack]" and both[1].config.weights == (1.0, 0.0, 0.0)
    assert [m.name for m in standard_methods(engine, ["sim"], members="none", tau=0.5)] == ["sim"]
    assert standard_methods(engine, ["sim"], tau=0.5)[0].config.tau == 0.5


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"methods": ["members", "median"]}, "methods"),
        ({"methods": ["fixed"]}, "fixed"),
        ({"members": "alone"}, "members"),
        ({"weighting": "opt"}, "weighting"),
        ({"fixed": (1, 1)}, "weights"),
        ({"reference": "nobody"}, "reference"),
    ],
)
def test_bad_methods_raise(engine, kwargs, parameter):
    with pytest.raises(ConfigError) as info:
        standard_methods(engine, **kwargs)
    assert info.value.parameter == parameter


def test_multiple_choice_accuracy_matches_scores_computed_by_hand(engine, mc, report):
    result = report.task("eval_mc")
    pairs = mc.pairs()
    for name in ("uniform", "top1", "sim", "opt"):
        by_hand = _by_hand_accuracy(mc, engine.score(pairs, weighting=name))
        assert (result.scores[name], result.per_item[name]) == by_hand
    fixed = _by_hand_accuracy(mc, engine.score(pairs, weights=(1, 2, 3)))
    assert (result.scores["fixed"], result.per_item["fixed"]) == fixed
    for member in engine.members:  # a member alone reads its own tokenization
        alone = _by_hand_accuracy(mc, PackEngine([member], progress=False).score(pairs))
        assert (result.scores[member.name], result.per_item[member.name]) == alone
    assert result.items == 6 and result.pairs == len(pairs) and result.answers == [1, 2, 0, 1, 1, 1]


def test_bits_per_byte_matches_a_direct_forward_pass(bl, text):
    """One member's bits per byte, recomputed with the raw transformers model."""
    report = evaluate(PackEngine([bl], progress=False), [text], progress=False)
    tok, model = bl.tokenizer, bl.model
    total_nll, total_bytes = 0.0, 0
    for context, continuation in text.pairs():
        ids = tok(context + continuation)["input_ids"]
        n_ctx = len(tok(context)["input_ids"])
        assert ids[:n_ctx] == tok(context)["input_ids"]  # the windows cut at token boundaries
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :, : len(tok)].double()
        logp = torch.log_softmax(logits, dim=-1)
        total_nll -= sum(float(logp[t - 1, ids[t]]) for t in range(n_ctx, len(ids)))
        total_bytes += len(continuation.encode("utf-8"))
    assert report.tasks[0].scores[bl.name] == pytest.approx(total_nll / math.log(2) / total_bytes, rel=1e-4)
    assert report.tasks[0].scored_bytes == total_bytes


def test_text_metric_matches_engine_scores(engine, text, report):
    result = report.task("eval_text")
    pairs = text.pairs()
    size = sum(len(c.encode("utf-8")) for _, c in pairs)
    for name in ("uniform", "sim", "opt"):
        scores = engine.score(pairs, weighting=name)
        assert result.scores[name] == pytest.approx(-sum(r.logprob for r in scores) / math.log(2) / size, rel=1e-6)
    assert result.items == len(pairs) and result.metric == "bits_per_byte" and not result.higher_is_better


def test_weights_recorded_per_item(engine, report):
    for result in report.tasks:
        assert len(result.references) == result.items and set(result.references) <= set(engine.names)
        for name in ("uniform", "top1", "sim", "opt", "fixed"):
            rows = result.weights[name]
            assert len(rows) == result.items
            assert all(math.isclose(sum(r.values()), 1.0, abs_tol=1e-9) for r in rows)
        assert all(sorted(r.values()) == [0.0, 0.0, 1.0] for r in result.weights["top1"])
        assert result.weights["fixed"][0] == pytest.approx(dict(zip(engine.names, (1 / 6, 2 / 6, 3 / 6), strict=True)))
        assert all(set(p) == set(engine.names) for p in result.perplexity)
        assert set(result.weights) == {"uniform", "top1", "sim", "opt", "fixed"}  # no weights for members alone


class _ForwardCounter:
    """Counts forward calls of each member's decoder (a forward hook on the real module)."""

    def __init__(self, engine: PackEngine) -> None:
        self.counts = dict.fromkeys(engine.names, 0)
        self.handles = [
            m.model.base_model.register_forward_hook(lambda *_, name=m.name: self._add(name)) for m in engine.members
        ]

    def _add(self, name: str) -> None:
        self.counts[name] += 1

    def __enter__(self) -> _ForwardCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def test_more_methods_cost_no_more_forward_passes(engine, mc):
    one = standard_methods(engine, ["uniform"], members="none")
    methods = ["members", "uniform", "top1", "sim", "opt", "fixed"]
    many = standard_methods(engine, methods, fixed=(1, 1, 1), members="pack")
    with _ForwardCounter(engine) as few_calls:
        evaluate(engine, [mc], one, batch_size=4, progress=False)
    with _ForwardCounter(engine) as many_calls:
        evaluate(engine, [mc], many, batch_size=4, progress=False)
    assert len(many) == 8
    assert many_calls.counts == few_calls.counts and sum(few_calls.counts.values()) > 0


def test_members_alone_reuse_the_pack_pass_where_they_were_the_reference(engine, mc, text):
    methods = standard_methods(engine)
    shared = evaluate(engine, [mc, text], methods, batch_size=4, progress=False)
    fresh = evaluate(engine, [mc, text], methods, batch_size=4, progress=False, reuse=False)
    for a, b in zip(shared.tasks, fresh.tasks, strict=True):
        assert a.settings["solo_pairs"] < b.settings["solo_pairs"] == a.pairs * len(engine.names)
        for name in engine.names:
            assert a.scores[name] == pytest.approx(b.scores[name], rel=1e-6)


def test_forced_reference_and_weights_on_pass_through(engine, mc):
    reference = engine.names[1]
    methods = standard_methods(engine, ["sim"], members="none", reference=reference)
    result = evaluate(engine, [mc], methods, weights_on="full", progress=False).tasks[0]
    assert set(result.references) == {reference}
    by_hand = engine.score(mc.pairs(), weighting="sim", reference=reference, weights_on="full")
    assert result.per_item["sim"] == _by_hand_accuracy(mc, by_hand)[1]


def test_report_round_trip_and_merge(tmp_path, report, engine):
    path = report.save(tmp_path / "r.json")
    loaded = EvalReport.load(path)
    assert loaded.to_dict() == report.to_dict()
    assert loaded.task("eval_mc").best() in loaded.method_names
    first = EvalReport(report.members, report.methods, [report.tasks[0]])
    second = EvalReport(report.members, report.methods, [report.tasks[1]])
    merged = EvalReport.merge([first, second])
    assert [t.task for t in merged.tasks] == ["eval_mc", "eval_text"] and merged.method_names == report.method_names
    with pytest.raises(ConfigError, match="distinct task names"):
        EvalReport.merge([first, first])
    # One task run twice, each run with some of the methods: the merge holds all of them, as one run would.
    whole = report.tasks[0]
    halves = []
    for names in (report.method_names[:1], report.method_names[1:]):
        part = TaskResult.from_dict(asdict(whole))
        for table in ("scores", "per_item", "weights", "method_seconds"):
            setattr(part, table, {k: v for k, v in getattr(whole, table).items() if k in names})
        halves.append(EvalReport(report.members, [m for m in report.methods if m["name"] in names], [part]))
    joined = EvalReport.merge(halves).task(whole.task)
    assert joined.scores == whole.scores and joined.per_item == whole.per_item and joined.weights == whole.weights
    assert EvalReport.merge(halves).method_names == report.method_names
    other = TaskResult.from_dict(asdict(halves[1].tasks[0]))
    other.items += 1
    with pytest.raises(ConfigError, match="same items"):
        EvalReport.merge([halves[0], EvalReport(report.members, halves[1].methods, [other])])
    with pytest.raises(ConfigError, match="same members"):
        EvalReport.merge([first, EvalReport(["other"], report.methods, [report.tasks[1]])])


def test_rename_moves_a_method_everywhere_and_records_its_settings(report):
    old = report.method_names[-1]
    before = EvalReport.from_dict(report.to_dict())
    before.settings["configs"] = {old: {}}
    renamed = EvalReport.from_dict(before.to_dict()).rename(old, "paper", {"tau": 1.0, "reference_by": "token"})
    assert renamed.method_names == [*before.method_names[:-1], "paper"]
    assert renamed.methods[-1]["tau"] == 1.0 and renamed.methods[-1]["reference_by"] == "token"
    assert renamed.settings["configs"] == {"paper": {"tau": 1.0, "reference_by": "token"}}
    for was, now in zip(before.tasks, renamed.tasks, strict=True):
        assert now.scores["paper"] == was.scores[old] and old not in now.scores
        assert now.per_item["paper"] == was.per_item[old] and now.weights.get("paper") == was.weights.get(old)
    with pytest.raises(ConfigError, match="^method='nope'"):
        renamed.rename("nope", "x")
    with pytest.raises(ConfigError, match="no other method"):
        renamed.rename("paper", renamed.method_names[0])


def test_rename_reaches_the_parts_of_a_merged_report(report):
    """A merged report keeps its parts' settings; renaming one of its methods renames it there
    too, so the report joined into the next merge records what the method ran with."""
    old = report.method_names[-1]
    merged = EvalReport.from_dict(report.to_dict())
    part = {"configs": {old: {"fusion": "logits"}, "other": {"tau": 0.5}}}
    merged.settings.update(configs=dict(part["configs"]), parts=[part, {"configs": {"other": {}}}])
    merged.rename(old, "logits", {"fusion": "logits", "tau": 0.2})
    assert merged.settings["parts"][0]["configs"] == {"other": {"tau": 0.5}, "logits": {"fusion": "logits", "tau": 0.2}}
    assert merged.settings["parts"][1]["configs"] == {"other": {}}  # a part without the method is left alone
    assert merged.settings["configs"]["logits"] == {"fusion": "logits", "tau": 0.2}


def test_bad_runs_raise(engine, mc):
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate(engine, [mc], batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="distinct names"):
        evaluate(engine, [mc, mc], progress=False)
    with pytest.raises(ConfigError, match="weights_on"):
        evaluate(engine, [mc], weights_on="prompt", progress=False)
    stranger = Method("x", "member", member="not-in-pack")
    with pytest.raises(ConfigError, match="this pack's members"):
        evaluate(engine, [mc], [stranger], progress=False)
    with pytest.raises(ConfigError, match="config"):
        Method("x", "fused")


def test_scoring_modes_side_by_side_from_the_same_passes(engine, mc):
    plain = standard_methods(engine, ["uniform", "sim", "opt"], members="none")
    both = standard_methods(engine, ["uniform", "sim", "opt"], members="none", scorings=["reference", "own"])
    assert [m.name for m in both] == ["uniform", "sim", "sim[own]", "opt", "opt[own]"]
    assert [m.config.scoring for m in both] == ["reference", "reference", "own", "reference", "own"]
    with _ForwardCounter(engine) as few_calls:
        evaluate(engine, [mc], plain, batch_size=4, progress=False)
    with _ForwardCounter(engine) as many_calls:
        result = evaluate(engine, [mc], both, batch_size=4, progress=False).tasks[0]
    assert many_calls.counts == few_calls.counts
    pairs = mc.pairs()
    for name, scoring in (("sim", "reference"), ("sim[own]", "own"), ("opt[own]", "own")):
        by_hand = _by_hand_accuracy(mc, engine.score(pairs, weighting=name.split("[")[0], scoring=scoring))
        assert (result.scores[name], result.per_item[name]) == by_hand
    with pytest.raises(ConfigError, match="scorings"):
        standard_methods(engine, scorings=["own", "own"])
    assert {m.config.scoring for m in standard_methods(engine, ["sim", "opt"], scoring="own")} == {"own"}


def test_alignment_modes_side_by_side(engine, mc):
    methods = standard_methods(
        engine, ["uniform", "sim"], members="none", alignments=["mined", "natural"], scorings=["reference", "own"]
    )
    names = ["uniform", "uniform[natural]", "sim", "sim[mined,own]", "sim[natural,reference]", "sim[natural,own]"]
    assert [m.name for m in methods] == names
    assert [m.describe()["alignment"] for m in methods] == ["mined", "natural", "mined", "mined", "natural", "natural"]
    result = evaluate(engine, [mc], methods, batch_size=4, progress=False).tasks[0]
    pairs = mc.pairs()
    by_hand = _by_hand_accuracy(mc, engine.score(pairs, weighting="sim", alignment="natural", scoring="own"))
    assert (result.scores["sim[natural,own]"], result.per_item["sim[natural,own]"]) == by_hand
    with pytest.raises(ConfigError, match="alignments"):
        standard_methods(engine, alignments=["natural", "natural"])
    with pytest.raises(ConfigError, match="alignment"):
        standard_methods(engine, alignments=["mined"], alignment="natural")
