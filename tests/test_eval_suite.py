"""The evaluation suite: code execution in a separate process, task loading from the installed data,
generation tasks, methods from specs, the runner and its comparisons, and ``packllm eval suite`` end to end."""

from __future__ import annotations

import doctest
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from packllm_integrations import GenerationConfig, PackEngine
from packllm_integrations.cli import main
from packllm_integrations.errors import ConfigError
from packllm_integrations.eval import execution, generation, harness, suite, suite_tasks
from packllm_integrations.eval.errors import DataNotFoundError
from packllm_integrations.eval.execution import run_program
from packllm_integrations.eval.generation import CodeTask, ShortAnswerTask
from packllm_integrations.eval.harness import evaluate
from packllm_integrations.eval.methods import Method
from packllm_integrations.eval.results import EvalReport
from packllm_integrations.eval.stats import mcnemar_exact
from packllm_integrations.eval.suite import (
    DEFAULT_TASKS,
    build_tasks,
    compare,
    compare_means,
    item_values,
    parse_method,
    parse_methods,
    run_suite,
)
from packllm_integrations.eval.suite_data import (
    EVALS_MC_SETS,
    analogy_task,
    evals_mc_task,
    evals_records,
    humaneval_problems,
    humaneval_task,
)
from packllm_integrations.eval.suite_report import render_suite
from packllm_integrations.eval.task_files import load_task_file
from packllm_integrations.eval.tasks import TextTask
from tests import tiny

DATA = Path(__file__).parent / "data"


def _problems() -> list[dict[str, str]]:
    try:
        return humaneval_problems()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))


def _needs_evals() -> None:
    try:
        evals_records("medmcqa/samples.jsonl")
    except DataNotFoundError as exc:
        pytest.skip(str(exc))


# ---- running generated code -----------------------------------------------------------------


def test_humaneval_problem_passes_with_its_solution_and_fails_with_a_wrong_one():
    problem = _problems()[0]
    task = CodeTask(
        "he", (problem["prompt"],), tests=(problem["test"],), entry_points=(problem["entry_point"],), timeout=20
    )
    right = task.grade([problem["canonical_solution"]])
    wrong = task.grade(["    return False\n"])
    assert right.values == [1.0] and right.details == ["passed"]
    assert wrong.values == [0.0] and wrong.details[0].startswith("failed: AssertionError")


def test_a_completion_that_never_ends_is_killed_at_the_time_limit():
    problem = _problems()[0]
    task = CodeTask(
        "he", (problem["prompt"],), tests=(problem["test"],), entry_points=(problem["entry_point"],), timeout=1.5
    )
    outcome = task.grade(["    while True:\n        pass\n"])
    assert outcome.values == [0.0] and outcome.details[0].startswith("timeout")


def test_programs_run_in_another_process_without_network():
    own = os.getpid()
    assert run_program(f"import os\nassert os.getpid() != {own}").passed
    refused = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))")
    assert refused.status == "failed" and "turned off" in refused.detail
    launched = run_program("import subprocess\nsubprocess.run(['true'])")
    assert launched.status == "failed" and "turned off" in launched.detail
    with pytest.raises(ConfigError, match="^timeout="):
        run_program("pass", timeout=0)


# ---- task loading ---------------------------------------------------------------------------


def test_humaneval_task_holds_the_164_problems_and_limit_draws_a_seeded_subset():
    problems = _problems()
    assert len(problems) == 164
    full = humaneval_task()
    assert len(full) == 164 and full.prompts[0] == problems[0]["prompt"]
    few = humaneval_task(limit=5, seed=3)
    assert len(few) == 5 and set(few.prompts) <= set(full.prompts)
    assert humaneval_task(limit=5, seed=3) == few


@pytest.mark.parametrize("name", list(EVALS_MC_SETS))
def test_evals_sets_parse_into_questions_whose_answer_matches_the_record(name):
    _needs_evals()
    relative = EVALS_MC_SETS[name][0]
    records = evals_records(relative)
    task = evals_mc_task(name, limit=30, seed=1)
    assert len(task.items) == 30
    for item in task.items:
        record = records[int(item.id)]
        ideal = str(record["ideal"]).strip()
        text = json.dumps(record["input"])
        assert item.answer == "ABCDEFGHIJKLMNO".index(ideal[0].upper())
        right = item.choices[item.answer]
        assert json.dumps(right)[1:-1] in text  # the right option's text comes from the record
        if name == "medmcqa":
            assert ideal.split(") ", 1)[1].strip() == right


def test_default_tasks_have_at_least_200_items():
    _needs_evals()
    for name in ("medmcqa", "logiqa", "socialiqa"):
        assert len(evals_mc_task(name).items) >= 200
    try:
        analogies = analogy_task()
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    assert len(analogies) == 300


def test_analogies_ask_for_the_fourth_word_and_never_evaluate_a_demonstration():
    try:
        task = analogy_task(limit=40, seed=2, shots=3)
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    head = task.prompts[0].rsplit("\n", 1)[0]
    demos = head.splitlines()[1:]
    assert len(demos) == 3 and all(p.startswith(head) for p in task.prompts)
    for prompt, (answer,) in zip(task.prompts, task.answers, strict=True):
        a, _, b, _, _, c, _, _ = prompt.rsplit("\n", 1)[1].split(" ")
        assert f"{a} is to {b} as {c} is to {answer}." not in demos


def test_build_tasks_rejects_unknown_names_and_bad_limits_before_reading_data():
    with pytest.raises(ConfigError, match="^tasks='nope'"):
        build_tasks(["medmcqa", "nope"])
    with pytest.raises(ConfigError, match="^limit=0"):
        build_tasks(["medmcqa"], limit=0)
    with pytest.raises(ConfigError, match="^task='nope'"):
        evals_mc_task("nope")
    assert set(DEFAULT_TASKS) >= {"humaneval", "medmcqa", "logiqa", "socialiqa", "analogies", "prose", "code"}


# ---- generation tasks, methods ----------------------------------------------------------------


def test_short_answers_are_graded_by_their_first_word():
    task = ShortAnswerTask("t", ("a", "b", "c"), answers=(("Italy",), ("saw",), ("New",)))
    outcome = task.grade([" italy.\nmore", "seen", "“New” York"])
    assert outcome.values == [1.0, 0.0, 1.0] and outcome.details == ["italy", "seen", "new"]
    with pytest.raises(ConfigError, match="^outputs="):
        task.grade(["one"])


@pytest.fixture(scope="module")
def pack() -> PackEngine:
    """Two tiny members with one tokenizer (fast: no alignment) and room for longer prompts."""
    return PackEngine(
        [tiny.bytelevel_member("tiny-a", seed=0, window=1024), tiny.bytelevel_member("tiny-c", seed=5, window=1024)],
        progress=False,
    )


def test_methods_from_specs(pack):
    sim = parse_method(pack, "sim")
    assert (sim.name, sim.config) == ("sim", pack.resolve(weighting="sim"))
    mined = parse_method(pack, "mined:sim,alignment=mined,tau=0.5")
    assert mined.name == "mined" and mined.config == pack.resolve(weighting="sim", alignment="mined", tau=0.5)
    fixed = parse_method(pack, "weights=1:3")
    assert fixed.name == "weights=1:3" and fixed.config.weights == (1.0, 3.0) and fixed.config.weighting == "fixed"
    with pytest.raises(ConfigError) as err:
        parse_method(pack, "sim,no_such_setting=1")
    assert err.value.parameter == "no_such_setting"
    with pytest.raises(ConfigError, match="^tau='abc'"):
        parse_method(pack, "tau=abc")
    with pytest.raises(ConfigError, match="^weighting='nope'"):
        parse_method(pack, "nope")
    names = [m.name for m in parse_methods(pack, ["pack", "sim", "opt"])]
    expected = ["tiny-a", "tiny-c", "pack"]
    expected += [w for w in ("sim", "opt") if pack.resolve(weighting=w) != pack.config]
    assert names == expected
    # 'paper' is PackLLM-sim as published, whatever the defaults are; a label still applies.
    paper = parse_method(pack, "paper")
    published = pack.resolve(weighting="sim", tau=1.0, reference_by="token", fusion="logits")
    assert paper.name == "paper" and paper.config == published
    assert paper.config != pack.config and parse_method(pack, "authors:paper").name == "authors"
    assert paper.describe()["reference_by"] == "token" and paper.describe()["tau"] == 1.0


def test_run_suite_side_by_side_with_pooled_text_and_comparisons(pack):
    mc = load_task_file(DATA / "eval_mc.jsonl")
    mc = replace(mc, items=mc.items[:4])
    text = [
        TextTask(name, [doc], window_chars=160, context_chars=80)
        for name, doc in (
            ("words", "The river runs past the old mill and the bridge, where the children play in summer " * 3),
            (
                "python",
                "def area(r):\n    return 3.14159 * r * r\n\n\ndef perimeter(r):\n    return 2 * 3.14 * r\n" * 3,
            ),
        )
    ]
    short = ShortAnswerTask(
        "capitals", ("Paris is in", "Rome is in"), answers=(("France",), ("Italy",)), max_new_tokens=3
    )
    code = CodeTask(
        "add",
        ("def add(a, b):\n",),
        tests=("def check(f):\n    assert f(2, 3) == 5\n",),
        entry_points=("add",),
        max_new_tokens=6,
    )
    methods = parse_methods(pack, ["sim", "uniform"])
    report = run_suite(
        pack, [mc, *text, short, code], methods, progress=False, mixtures=[("words+python", ("words", "python"))]
    )
    names = [m.name for m in methods]
    assert [t.task for t in report.tasks] == ["eval_mc", "words", "python", "capitals", "add", "words+python"]
    for t in report.tasks:
        assert list(t.scores) == names and all(t.method_seconds[m] > 0 for m in names)
    # A member alone equals that member evaluated on its own.
    solo = PackEngine([pack.members[1]], progress=False)
    alone = evaluate(solo, [mc], [Method("tiny-c", "member", member="tiny-c")], progress=False).tasks[0]
    assert report.task("eval_mc").per_item["tiny-c"] == alone.per_item["tiny-c"]
    # The pooled row is the two tasks' bits over their bytes.
    words, python, pooled = report.task("words"), report.task("python"), report.task("words+python")
    for m in names:
        bits = sum(v * w for t in (words, python) for v, w in zip(t.per_item[m], t.item_weights, strict=True))
        assert pooled.scores[m] == pytest.approx(bits / (sum(words.item_weights) + sum(python.item_weights)))
    assert report.task("capitals").outputs["sim"] and len(report.task("add").details["tiny-a"]) == 1
    # Generation tasks keep the weights each prompt was decoded with (pack methods only).
    capitals = report.task("capitals")
    assert set(capitals.weights) == set(names) - {"tiny-a", "tiny-c"}
    for prompt, row in zip(short.prompts, capitals.weights["sim"], strict=True):
        assert row == pytest.approx(pack.weights(prompt, methods[names.index("sim")].config).weights)
    comparisons = compare(report, resamples=200)
    assert len(comparisons) == len(report.tasks) * (len(names) - 1)
    for c in comparisons:
        result = report.task(c.task)
        assert c.difference.difference == pytest.approx(c.score - c.baseline_score)
        assert (c.mcnemar is None) == (result.kind == "bits_per_byte")
        if c.task == "eval_mc":
            a, b = item_values(result, c.method)[0], item_values(result, c.baseline)[0]
            assert c.mcnemar == mcnemar_exact([int(x) for x in a], [int(y) for y in b])
        assert c.cost == pytest.approx(result.method_seconds[c.method] / result.method_seconds[c.baseline])
    # Against a named method: each other pack method's difference to it, per task.
    text = render_suite(report, comparisons, resamples=200, against=["sim"])
    section = text.split("## Against `sim`")[1].split("## Mean weights")[0]
    mc_row = next(line for line in section.splitlines() if line.startswith("| eval_mc | uniform |"))
    versus = compare(report, baseline="sim", resamples=200)
    expected = next(c for c in versus if (c.task, c.method) == ("eval_mc", "uniform")).difference.difference
    assert f"{expected:+.3f}" in mc_row and "| tiny-a |" not in section
    weights = text.split("## Mean weights")[1]
    mean = capitals.mean_weights("sim")
    row = next(line for line in weights.splitlines() if line.startswith("| capitals | sim |"))
    assert all(f"{mean[n]:.3f}" in row for n in ("tiny-a", "tiny-c"))
    with pytest.raises(ConfigError, match="^against='nope'"):
        render_suite(report, comparisons, against=["nope"])


def test_a_scoring_only_method_runs_the_scored_tasks_and_skips_generation(pack):
    mc = load_task_file(DATA / "eval_mc.jsonl")
    mc = replace(mc, items=mc.items[:4])
    short = ShortAnswerTask("capitals", ("Paris is in",), answers=(("France",),), max_new_tokens=2)
    methods = parse_methods(pack, ["seq:fusion=sequence,scoring=own"])
    report = run_suite(pack, [mc, short], methods, progress=False)
    assert "seq" in report.task("eval_mc").scores and "seq" not in report.task("capitals").scores
    # Its choices are those of the members' own option scores, weighted: each option's summed
    # score over the members' one-member runs, normalised by the reference's tokens.
    engine = PackEngine(pack.members, methods[-1].config, progress=False)
    fused = engine.score(mc.pairs())
    solos = [PackEngine([m], progress=False).score(mc.pairs()) for m in pack.members]
    for i, r in enumerate(fused):
        expected = sum(r.weights[m.name] * solo[i].logprob for m, solo in zip(pack.members, solos, strict=True))
        assert r.logprob == pytest.approx(expected, rel=1e-4)
    assert report.task("eval_mc").per_item["seq"] == mc.score(fused)[1]
    assert [c.method for c in compare(report, resamples=100) if c.task == "capitals" and c.method == "seq"] == []


def test_means_cover_each_set_of_tasks_the_methods_ran(pack):
    """A method that skipped a task (here a scoring-only one, on the generation task) still
    gets a mean over the tasks it ran, against the best member and against a named method."""
    mc = load_task_file(DATA / "eval_mc.jsonl")
    first, second = replace(mc, items=mc.items[:3]), replace(mc, name="eval_mc_b", items=mc.items[3:6])
    short = ShortAnswerTask("capitals", ("Paris is in",), answers=(("France",),), max_new_tokens=2)
    methods = parse_methods(pack, ["sim", "seq:fusion=sequence,scoring=own"])
    report = run_suite(pack, [first, second, short], methods, progress=False)
    text = render_suite(report, compare(report, resamples=100), resamples=100, against=["seq", "sim"])
    assert "## Mean over 3 tasks where higher is better (eval_mc, eval_mc_b, capitals)" in text
    assert "## Mean over 2 tasks where higher is better (eval_mc, eval_mc_b)" in text
    three, two = text.split("## Mean over 3 tasks")[1].split("## Mean over 2 tasks")
    assert "| seq |" not in three and "| sim |" in three
    base, tasks, means = compare_means(report, tasks=["eval_mc", "eval_mc_b"], resamples=100)
    assert tasks == ["eval_mc", "eval_mc_b"] and set(means) == {*[m.name for m in pack.members], "sim", "seq"}
    seq_mean = (report.task("eval_mc").scores["seq"] + report.task("eval_mc_b").scores["seq"]) / 2
    assert means["seq"][0] == pytest.approx(seq_mean) and f"| seq | {seq_mean:.3f} |" in two
    # against seq: sim's mean over the two tasks seq ran
    versus_seq = text.split("## Against `seq`")[1].split("## Against `sim`")[0]
    assert "| mean (eval_mc, eval_mc_b) | sim |" in versus_seq
    assert "| mean (eval_mc, eval_mc_b) | seq |" in text.split("## Against `sim`")[1]


# ---- the command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, pack) -> list[str]:
    out = []
    for member in pack.members:
        folder = tmp_path_factory.mktemp("suite-models") / member.name
        member.model.save_pretrained(folder)
        member.tokenizer.save_pretrained(folder)
        out.append(str(folder))
    return out


def test_cli_suite_end_to_end_with_limit(folders, tmp_path, capsys):
    _needs_evals()
    models = [arg for f in folders for arg in ("--model", f)]
    out = tmp_path / "suite"
    argv = ["eval", "suite", "--tasks", "medmcqa,socialiqa,analogies", "--limit", "2", *models]
    argv += ["--method", "uniform", "--max-new-tokens", "3", "--resamples", "200", "--quiet", "--output", str(out)]
    try:
        analogy_task(limit=1)
    except DataNotFoundError:
        argv[3] = "medmcqa,socialiqa"
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Evaluation suite: tiny-a + tiny-c")
    data = json.loads((out / "suite.json").read_text())
    report = EvalReport.from_dict(data)
    assert [t.task for t in report.tasks] == argv[3].split(",")
    assert all(t.items == 2 for t in report.tasks)
    assert report.method_names == ["tiny-a", "tiny-c", "uniform"]
    assert len(data["comparisons"]) == len(report.tasks) * (len(report.method_names) - 1)
    assert {p.name for p in out.iterdir()} == {"suite.json", "suite.md", "suite_scores.png", "suite_differences.png"}
    assert (out / "suite.md").read_text() == printed.rstrip("\n") + "\n"


def test_cli_suite_lists_tasks_and_rejects_bad_input_fast(capsys, folders):
    assert main(["eval", "suite", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in DEFAULT_TASKS)
    assert main(["eval", "suite", "--tasks", "medmcqa,nope"]) == 2
    assert "tasks='nope' is invalid" in capsys.readouterr().err
    assert main(["eval-suite", "--resamples", "5", "--list"]) == 0  # --list needs nothing else
    capsys.readouterr()
    assert main(["eval", "suite", "--tasks", "medmcqa", "--resamples", "5", "--limit", "1"]) == 2
    assert "resamples=5 is invalid" in capsys.readouterr().err


def test_every_front_end_shows_the_engine_defaults(capsys):
    defaults = GenerationConfig()
    for command in (["eval", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        text = " ".join(capsys.readouterr().out.split())
        assert f"default {defaults.alignment!r}" in text or f"default: {defaults.alignment}" in text
        assert f"default {defaults.tau}" in text
        other = "mined" if defaults.alignment == "natural" else "natural"
        assert f"'{other}' (default)" not in text and f"{other} (default)" not in text


@pytest.mark.parametrize("module", [execution, generation, harness, suite, suite_tasks], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    outcome = doctest.testmod(module)
    assert outcome.attempted > 0 and outcome.failed == 0
