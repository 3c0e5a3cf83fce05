"""Evaluation data that installed packages ship, read offline.

- BIG-bench multiple-choice tasks (:func:`bigbench_task`), read from a copy of the
  ``bigbench-1.0.0`` source archive at hand, without installing it. The registry no longer
  serves that version, so it cannot be downloaded any more: the evaluation suite
  (:mod:`packllm_integrations.eval.suite`, ``packllm eval suite``) uses data that installs
  offline instead. Point ``$PACKLLM_BIGBENCH`` (or the ``archive`` argument) at the
  ``.tar.gz``, or at the folder it unpacks to. The task files carry a canary string: never
  train on them.
- English news prose (:func:`lee_task`): the 300 articles of gensim's
  ``test/test_data/lee_background.cor`` (``pip install --no-deps gensim==4.4.0``; gensim is
  found on disk, never imported).
- Python code (:func:`stdlib_code_task`): the standard library's own ``.py`` sources.
- Python documentation prose (:func:`pydoc_topics_task`): ``pydoc_data.topics``.

Example:
    >>> task = stdlib_code_task(["fnmatch"], max_chars=3000)
    >>> task.name, task.kind
    ('stdlib-code', 'bits_per_byte')
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .errors import DataNotFoundError
from .multiple_choice import MCItem, MultipleChoiceTask
from .tasks import TextTask

__all__ = [
    "BIGBENCH_ENV",
    "DEFAULT_CODE_MODULES",
    "bigbench_path",
    "bigbench_json",
    "bigbench_task",
    "lee_task",
    "stdlib_code_task",
    "pydoc_topics_task",
    "sample_items",
]

BIGBENCH_ENV = "PACKLLM_BIGBENCH"
"""Environment variable naming the BIG-bench source archive (or the folder it unpacks to)."""

_BIGBENCH_HOWTO = (
    f"set ${BIGBENCH_ENV} to a copy of the bigbench-1.0.0 source archive (.tar.gz) or the folder it unpacks to; "
    "the registry no longer serves that version, so for tasks that install offline use the evaluation suite: "
    "packllm eval suite --list"
)

DEFAULT_CODE_MODULES = ("textwrap", "shlex", "graphlib", "sched", "queue", "heapq")
"""Pure-Python standard-library modules used as code text by default."""


def sample_items(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """``limit`` items drawn with ``seed``, kept in their original order (all when ``limit`` is None).

    >>> sample_items(list(range(10)), 3, seed=0) == sorted(sample_items(list(range(10)), 3, seed=0))
    True
    """
    if limit is None or limit >= len(items):
        return list(items)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError("limit", limit, "an integer >= 1 or None")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


# ---- BIG-bench ---------------------------------------------------------------------------


def bigbench_path(archive: str | Path | None = None) -> Path:
    """The BIG-bench archive or folder: ``archive``, else ``$PACKLLM_BIGBENCH``."""
    value = archive or os.environ.get(BIGBENCH_ENV)
    if not value:
        raise DataNotFoundError(f"BIG-bench data is not configured: {_BIGBENCH_HOWTO}")
    path = Path(value).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"no BIG-bench archive or folder at {path}: {_BIGBENCH_HOWTO}")
    return path


def bigbench_json(name: str, archive: str | Path | None = None) -> dict[str, Any]:
    """The ``task.json`` of BIG-bench task ``name`` (``"task"`` or ``"task/subtask"``)."""
    if not isinstance(name, str) or not name or ".." in name or name.startswith("/"):
        raise ConfigError("task", name, "a BIG-bench task name such as 'general_knowledge'")
    path = bigbench_path(archive)
    inner = f"bigbench/benchmark_tasks/{name}/task.json"
    if path.is_dir():
        for candidate in (path / inner, path / "benchmark_tasks" / name / "task.json", path / name / "task.json"):
            if candidate.is_file():
                return json.loads(candidate.read_text(encoding="utf-8"))
        raise DataNotFoundError(f"BIG-bench task {name!r} not found under {path} (looked for {inner})")
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("/" + inner):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        return json.load(io.TextIOWrapper(handle, encoding="utf-8"))
    except (tarfile.TarError, OSError) as exc:
        raise DataNotFoundError(f"could not read the BIG-bench archive {path}: {exc}") from exc
    raise DataNotFoundError(f"BIG-bench task {name!r} not found in {path} (looked for */{inner})")


def bigbench_task(
    name: str,
    *,
    archive: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    fewshot: int = 0,
    normalize: str = "tokens",
) -> MultipleChoiceTask:
    """A BIG-bench JSON multiple-choice task in the authors' prompt format.

    Each example's ``target_scores`` give the choices; the one scoring highest is the answer
    (examples with a tie for the highest score are skipped). The task's ``task_prefix``, if
    any, is put before each question. Choices are shuffled per example with ``seed`` (the
    files often list the right answer first). With ``limit``, that many examples are drawn
    with ``seed`` as the evaluated questions; k-shot demonstrations come from the others.
    """
    data = bigbench_json(name, archive)
    prefix = str(data.get("task_prefix", "") or "").strip()
    items = []
    for index, example in enumerate(data.get("examples", [])):
        scores = example.get("target_scores")
        if not isinstance(scores, dict) or len(scores) < 2:
            continue
        best = max(scores.values())
        if sum(1 for v in scores.values() if v == best) != 1:
            continue
        choices = [str(c).strip() for c in scores]
        if len(set(choices)) != len(choices) or not all(choices) or len(choices) > 26:
            continue
        right = choices[list(scores.values()).index(best)]
        random.Random(f"{seed}:{name}:{index}").shuffle(choices)
        question = str(example.get("input", "")).strip()
        if not question:
            continue
        if prefix:
            question = f"{prefix}\n{question}"
        items.append(MCItem(question, tuple(choices), choices.index(right), str(index)))
    if not items:
        raise DataNotFoundError(f"BIG-bench task {name!r} has no multiple-choice example with a single best answer")
    chosen = sample_items(items, limit, seed)
    kept = {item.id for item in chosen}
    demos = [item for item in items if item.id not in kept] if fewshot and len(chosen) < len(items) else []
    return MultipleChoiceTask(name, chosen, fewshot=fewshot, demos=demos, seed=seed, normalize=normalize)


# ---- prose and code ----------------------------------------------------------------------


def _package_folder(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _joined(pieces: Sequence[str], max_chars: int | None, separator: str = "\n\n") -> str:
    text = ""
    for piece in pieces:
        if max_chars is not None and len(text) >= max_chars:
            break
        text = piece if not text else text + separator + piece
    return text if max_chars is None else text[:max_chars]


def lee_task(
    *, max_chars: int | None = 12000, window_chars: int = 1200, context_chars: int = 600, name: str = "lee-prose"
) -> TextTask:
    """English news prose: gensim's Lee corpus, articles joined in file order (one document)."""
    folder = _package_folder("gensim")
    path = folder / "test" / "test_data" / "lee_background.cor" if folder else None
    if path is None or not path.is_file():
        raise DataNotFoundError("gensim's lee_background.cor is not installed: pip install --no-deps gensim==4.4.0")
    articles = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return TextTask(name, [_joined(articles, max_chars)], window_chars=window_chars, context_chars=context_chars)


def _module_source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise DataNotFoundError(f"module {module!r} has no Python source file here")
    return Path(spec.origin).read_text(encoding="utf-8")


def stdlib_code_task(
    modules: Sequence[str] = DEFAULT_CODE_MODULES,
    *,
    max_chars: int | None = 9000,
    window_chars: int = 1200,
    context_chars: int = 600,
    name: str = "stdlib-code",
) -> TextTask:
    """Python code: standard-library sources, one document per module.

    Each module's text starts at its first ``import``, ``def`` or ``class`` line (skipping
    the licence header and module docstring) and the total is split evenly over the modules.
    """
    if isinstance(modules, str) or not modules:
        raise ConfigError("modules", modules, "a non-empty list of standard-library module names")
    budget = None if max_chars is None else max(1, max_chars // len(modules))
    docs = []
    for module in modules:
        lines = _module_source(module).splitlines(keepends=True)
        first = next((i for i, ln in enumerate(lines) if ln.startswith(("import ", "from ", "def ", "class "))), 0)
        code = "".join(lines[first:])
        docs.append(code if budget is None else code[:budget])
    return TextTask(name, docs, window_chars=window_chars, context_chars=context_chars)


def pydoc_topics_task(
    *, max_chars: int | None = 12000, window_chars: int = 1200, context_chars: int = 600, name: str = "pydoc-prose"
) -> TextTask:
    """Python's reference documentation text (``pydoc_data.topics``), topics joined in sorted order."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = _joined([topics[k].strip() for k in sorted(topics)], max_chars)
    return TextTask(name, [text], window_chars=window_chars, context_chars=context_chars)
