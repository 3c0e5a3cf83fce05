"""Task formats, metrics computed by hand, and task-file errors that name file, line and field."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from packllm_integrations.errors import ConfigError
from packllm_integrations.eval import TaskFileError
from packllm_integrations.eval.multiple_choice import MCItem, MultipleChoiceTask, format_question
from packllm_integrations.eval.task_files import load_task_file
from packllm_integrations.eval.tasks import TextTask, rolling_windows, text_windows

DATA = Path(__file__).parent / "data"


@dataclass
class Fake:
    """A scored pair as a task reads it (the three fields of a ScoreResult it uses)."""

    logprob: float
    tokens: int
    num_bytes: int


# ---- multiple choice ---------------------------------------------------------------------


def test_prompt_is_the_authors_format():
    item = MCItem("Which is a fruit?", ("stone", "apple", "chair"), 1)
    expected = "Question: Which is a fruit?\nChoices:\nA. stone\nB. apple\nC. chair\nAnswer:"
    assert format_question(item) == expected
    task = MultipleChoiceTask("t", [item])
    assert task.pairs() == [(expected, " stone"), (expected, " apple"), (expected, " chair")]
    assert task.groups() == [0]


def _items(n: int) -> list[MCItem]:
    return [MCItem(f"question {i}?", (f"x{i}", f"y{i}", f"z{i}"), i % 3, str(i)) for i in range(n)]


def test_fewshot_demonstrations_come_from_the_other_items_and_show_the_right_answer():
    items = _items(8)
    task = MultipleChoiceTask("t", items, fewshot=3, seed=5)
    for index in range(len(items)):
        demos = task.demonstrations(index)
        assert len(demos) == 3 and items[index] not in demos
        context = task.context(index)
        for d in demos:
            assert f"{format_question(d)} {d.choices[d.answer]}\n\n" in context
        assert context.endswith(format_question(items[index]))
        assert context.count("Question:") == 4
    # Reproducible for a seed; the seed matters.
    assert MultipleChoiceTask("t", items, fewshot=3, seed=5).context(2) == task.context(2)
    draws = {tuple(d.id for d in MultipleChoiceTask("t", items, fewshot=3, seed=s).demonstrations(0)) for s in range(8)}
    assert len(draws) > 1


def test_fewshot_prefers_the_dev_pool():
    dev = [MCItem("dev question?", ("a", "b"), 0, "dev")]
    task = MultipleChoiceTask("t", _items(3), fewshot=1, demos=dev)
    assert all(task.demonstrations(i) == dev for i in range(3))
    with pytest.raises(ConfigError, match="fewshot"):
        MultipleChoiceTask("t", _items(3), fewshot=2, demos=dev)
    with pytest.raises(ConfigError, match="fewshot"):
        MultipleChoiceTask("t", _items(3), fewshot=3)


def test_accuracy_by_hand():
    items = [MCItem("q1", ("a", "b"), 0), MCItem("q2", ("c", "d", "e"), 2), MCItem("q3", ("f", "g"), 0)]
    # NLL per token: q1 a 6/3=2.0, b 3/1=3.0 -> a (right); q2 c 1.0, d 0.5, e 0.9 -> d (wrong);
    # q3 f 2/2=1.0, g 1/2=0.5 -> g (wrong). Accuracy 1/3.
    scores = [Fake(-6, 3, 5), Fake(-3, 1, 5), Fake(-2, 2, 5), Fake(-1, 2, 5), Fake(-1.8, 2, 5)]
    scores += [Fake(-2, 2, 5), Fake(-1, 2, 5)]
    task = MultipleChoiceTask("t", items)
    assert task.groups() == [0, 2, 5]
    acc, preds = task.score(scores)
    assert preds == [0, 1, 1]
    assert acc == pytest.approx(1 / 3)


def test_option_choice_follows_the_normalisation():
    items = [MCItem("q", ("a", "b"), 0)]
    # a: NLL 4 over 8 tokens and 2 bytes; b: NLL 5 over 2 tokens and 20 bytes.
    scores = [Fake(-4.0, 8, 2), Fake(-5.0, 2, 20)]
    per_token = MultipleChoiceTask("t", items, normalize="tokens").score(scores)
    per_byte = MultipleChoiceTask("t", items, normalize="bytes").score(scores)
    raw = MultipleChoiceTask("t", items, normalize="none").score(scores)
    assert per_token == (1.0, [0])  # 0.5 < 2.5 per token
    assert per_byte == (0.0, [1])  # 2.0 > 0.25 per byte
    assert raw == (1.0, [0])  # 4 < 5
    tie = MultipleChoiceTask("t", items).score([Fake(-2.0, 2, 2), Fake(-2.0, 2, 2)])
    assert tie == (1.0, [0])  # ties go to the earliest choice


def test_bad_items_raise_config_errors():
    with pytest.raises(ConfigError, match="answer"):
        MCItem("q", ("a", "b"), 2)
    with pytest.raises(ConfigError, match="choices"):
        MCItem("q", ("a", "a"), 0)
    with pytest.raises(ConfigError, match="question"):
        MCItem("  ", ("a", "b"), 0)
    with pytest.raises(ConfigError, match="normalize"):
        MultipleChoiceTask("t", _items(2), normalize="chars")


# ---- text windows and bits per byte ------------------------------------------------------

TEXT = (
    "The old bridge crosses the river where the valley narrows. Carts and walkers use it every day, "
    "and in winter the ice gathers under its arches. def area(r):\n    return 3.14159 * r * r\n"
) * 6


@pytest.mark.parametrize(("window", "context"), [(60, 30), (120, 200), (400, 50)])
def test_text_windows_cover_the_text_after_the_first_context(window, context):
    windows = text_windows(TEXT, window, context)
    scored = "".join(c for _, c in windows)
    first = len(TEXT) - len(scored)
    assert TEXT[first:] == scored and 0 < first <= 2 * context
    position = first
    for ctx, cont in windows:
        assert TEXT[:position].endswith(ctx) and len(ctx) <= context and ctx
        assert cont and len(cont) <= window * 3 // 2 + window // 4 + 1
        if position < len(TEXT) and TEXT[position] == " ":  # a clean cut: a lone space before a word
            assert not TEXT[position - 1].isspace() and not TEXT[position + 1].isspace()
        position += len(cont)


def test_rolling_windows_score_every_character():
    windows = rolling_windows(TEXT, 100, 40)
    assert windows[0][0] == ""
    assert "".join(c for _, c in windows) == TEXT
    assert rolling_windows("", 100, 40) == []
    with pytest.raises(ConfigError, match="window_chars"):
        rolling_windows(TEXT, 4, 40)


def test_bits_per_byte_by_hand():
    task = TextTask("t", [TEXT], window_chars=200, context_chars=100)
    pairs = task.pairs()
    rng = random.Random(0)
    fakes = [Fake(-rng.uniform(10, 300), 50, len(c.encode())) for _, c in pairs]
    bpb, per_window = task.score(fakes)
    total_bits = sum(-f.logprob for f in fakes) / math.log(2)
    assert bpb == pytest.approx(total_bits / len("".join(c for _, c in pairs).encode("utf-8")))
    assert task.scored_bytes == len("".join(c for _, c in pairs).encode("utf-8"))
    assert per_window[0] == pytest.approx(-fakes[0].logprob / math.log(2) / len(pairs[0][1].encode()))


def test_text_task_needs_text_beyond_its_context():
    with pytest.raises(ConfigError, match="documents"):
        TextTask("t", ["short"], window_chars=100, context_chars=50)


# ---- task files --------------------------------------------------------------------------


def test_fixture_files_load():
    mc = load_task_file(DATA / "eval_mc.jsonl", fewshot=2)
    assert isinstance(mc, MultipleChoiceTask) and mc.name == "eval_mc"
    assert len(mc.items) == 6 and len(mc.demos) == 2
    assert [i.answer for i in mc.items] == [1, 2, 0, 1, 1, 1]  # letters "C" and "B" read as indices
    assert all(d.id in ("sky", "week") for d in mc.demonstrations(0))
    text = load_task_file(DATA / "eval_text.jsonl", window_chars=100, context_chars=50)
    assert isinstance(text, TextTask) and len(text.documents) == 2
    assert text.documents[1].startswith("def mean(values):\n")


GOOD = {"question": "Which?", "choices": ["a", "b", "c"], "answer": 1}

BAD_LINES = [
    # (line text, field named in the error or None for the whole line)
    ("{not json", None),
    ("[1, 2]", None),
    (json.dumps({"prompt": "x"}), None),
    (json.dumps({k: v for k, v in GOOD.items() if k != "answer"}), "answer"),
    (json.dumps({**GOOD, "answer": 3}), "answer"),
    (json.dumps({**GOOD, "answer": "D"}), "answer"),
    (json.dumps({**GOOD, "answer": True}), "answer"),
    (json.dumps({**GOOD, "choices": "a,b"}), "choices"),
    (json.dumps({**GOOD, "choices": ["a"]}), "choices"),
    (json.dumps({**GOOD, "choices": ["a", " ", "c"]}), "choices[1]"),
    (json.dumps({**GOOD, "choices": ["a", "a", "c"]}), "choices"),
    (json.dumps({**GOOD, "question": ""}), "question"),
    (json.dumps({**GOOD, "choice": ["a"]}), "choice"),
    (json.dumps({**GOOD, "split": "train"}), "split"),
    (json.dumps({**GOOD, "id": [1]}), "id"),
    (json.dumps({"text": "some text"}), "text"),  # a text record after a multiple-choice line
]


@pytest.mark.parametrize(("line", "field"), BAD_LINES)
def test_bad_lines_name_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    with pytest.raises(TaskFileError) as info:
        load_task_file(path)
    err = info.value
    assert isinstance(err, ConfigError)
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    message = str(err)
    assert message.startswith(f"{path}, line 3")
    if field is not None:
        assert f"field {field!r}" in message
    assert "expected" in message


@pytest.mark.parametrize(
    ("content", "field", "needle"),
    [
        ("", None, "at least one record"),
        (json.dumps({**GOOD, "split": "dev"}) + "\n", "split", "'test' question"),
        (json.dumps({"text": ""}) + "\n", "text", "non-empty"),
        (json.dumps({"text": "x", "title": "y"}) + "\n", "title", "no such field"),
    ],
)
def test_whole_file_errors(tmp_path, content, field, needle):
    path = tmp_path / "task.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TaskFileError, match=needle) as info:
        load_task_file(path)
    assert info.value.field == field and str(path) in str(info.value)


def test_missing_file_and_too_many_shots(tmp_path):
    with pytest.raises(TaskFileError, match="existing JSONL task file"):
        load_task_file(tmp_path / "absent.jsonl")
    with pytest.raises(TaskFileError, match="at most 2") as info:
        load_task_file(DATA / "eval_mc.jsonl", fewshot=3)
    assert info.value.field == "split"
