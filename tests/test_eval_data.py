"""Offline data loaders: BIG-bench JSON (archive or folder), Python sources, prose."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile

import pytest

from packllm_integrations.eval import DataNotFoundError, bigbench_task, lee_task, pydoc_topics_task, stdlib_code_task
from packllm_integrations.eval.data import BIGBENCH_ENV, bigbench_json, sample_items

TASK = {
    "task_prefix": "Answer the question.\n",
    "examples": [
        {"input": "How many legs do horses have?", "target_scores": {"four": 1, "two": 0, "six": 0}},
        {"input": "A tie between two answers", "target_scores": {"a": 1, "b": 1}},  # skipped: no single best
        {"input": "Generative only", "target": "x"},  # skipped: not multiple choice
        {"input": "Capital of Japan?", "target_scores": {"Tokyo": 1, "Kyoto": 0}},
        {"input": "Largest planet?", "target_scores": {"Jupiter": 1.0, "Mars": 0.0, "Venus": 0.0, "Earth": 0.0}},
        {"input": "Boiling point of water in Celsius?", "target_scores": {"100": 1, "50": 0}},
    ],
}


@pytest.fixture
def archive(tmp_path):
    """A source archive laid out like bigbench-1.0.0.tar.gz, holding one small task."""
    path = tmp_path / "bigbench-1.0.0.tar.gz"
    data = json.dumps(TASK).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/tiny_quiz/task.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_bigbench_from_the_archive_and_from_a_folder(archive, tmp_path, monkeypatch):
    task = bigbench_task("tiny_quiz", archive=archive)
    assert task.name == "tiny_quiz" and len(task.items) == 4  # the tie and the generative example are skipped
    first = task.items[0]
    assert first.question == "Answer the question.\nHow many legs do horses have?"
    assert first.choices[first.answer] == "four" and sorted(first.choices) == ["four", "six", "two"]
    assert [i.id for i in task.items] == ["0", "3", "4", "5"]
    assert all(i.choices[i.answer] in ("four", "Tokyo", "Jupiter", "100") for i in task.items)
    # The same seed gives the same order of choices; the answers follow the shuffle.
    assert bigbench_task("tiny_quiz", archive=archive).items == task.items
    orders = {bigbench_task("tiny_quiz", archive=archive, seed=s).items[2].choices for s in range(6)}
    assert len(orders) > 1
    # The folder the archive unpacks to, found through the environment variable.
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    monkeypatch.setenv(BIGBENCH_ENV, str(tmp_path / "unpacked" / "bigbench-1.0.0"))
    assert bigbench_json("tiny_quiz") == TASK
    assert bigbench_task("tiny_quiz").items == task.items


def test_bigbench_limit_and_demonstrations(archive):
    task = bigbench_task("tiny_quiz", archive=archive, limit=2, fewshot=1, seed=3)
    assert len(task.items) == 2 and len(task.demos) == 2
    assert {i.id for i in task.items}.isdisjoint({d.id for d in task.demos})
    assert task.context(0).count("Question:") == 2


def test_bigbench_errors_say_how_to_get_the_data(archive, tmp_path, monkeypatch):
    monkeypatch.delenv(BIGBENCH_ENV, raising=False)
    with pytest.raises(DataNotFoundError, match="no longer serves that version.*packllm eval suite --list"):
        bigbench_task("tiny_quiz")
    with pytest.raises(DataNotFoundError, match="no BIG-bench archive or folder"):
        bigbench_task("tiny_quiz", archive=tmp_path / "absent.tar.gz")
    with pytest.raises(DataNotFoundError, match="'other_task' not found"):
        bigbench_task("other_task", archive=archive)


def test_sample_items_is_seeded_and_keeps_order():
    items = list(range(20))
    picked = sample_items(items, 5, seed=1)
    assert picked == sorted(picked) and len(set(picked)) == 5
    assert sample_items(items, 5, seed=1) == picked and sample_items(items, None, seed=1) == items


def test_stdlib_code_starts_at_the_code():
    task = stdlib_code_task(["textwrap", "shlex"], max_chars=4000, window_chars=500, context_chars=200)
    assert [len(d) for d in task.documents] == [2000, 2000]
    assert all(d.startswith(("import ", "from ", "def ", "class ")) for d in task.documents)
    with pytest.raises(DataNotFoundError, match="no Python source"):
        stdlib_code_task(["sys"])


def test_pydoc_prose():
    task = pydoc_topics_task(max_chars=3000, window_chars=500, context_chars=200)
    assert len(task.documents) == 1 and len(task.documents[0]) == 3000 and len(task.pairs()) >= 4


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim is not installed")
def test_lee_prose():
    task = lee_task(max_chars=4000, window_chars=800, context_chars=300)
    assert len(task.documents[0]) == 4000 and task.documents[0].startswith("Hundreds of people")
    assert task.scored_bytes > 3000
