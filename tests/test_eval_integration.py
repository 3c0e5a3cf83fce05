"""The harness on the real bundled pack (slow: run with ``pytest -m integration``)."""

from __future__ import annotations

import math

import pytest

from packllm_integrations import DEFAULT_PACK, PackEngine
from packllm_integrations.eval import MCItem, MultipleChoiceTask, TextTask, evaluate, standard_methods
from packllm_integrations.loading.catalog import is_installed

pytestmark = pytest.mark.integration

PROSE = (
    "The council said the new bridge would open in the spring, two years later than planned. "
    "Engineers found that the river bed was softer than the first survey had shown, and the "
    "foundations had to be driven deeper. Local shops, which had lost trade while the old bridge "
    "was closed, welcomed the news."
)
CODE = (
    "def read_config(path):\n    with open(path) as handle:\n        lines = handle.read().splitlines()\n"
    "    pairs = [line.split('=', 1) for line in lines if '=' in line]\n"
    "    return {key.strip(): value.strip() for key, value in pairs}\n"
)


@pytest.fixture(scope="module")
def engine():
    missing = [name for name in DEFAULT_PACK if not is_installed(name)]
    if missing:
        pytest.skip(f"bundled models not installed: {', '.join(missing)}")
    return PackEngine.from_models(progress=False)


def test_real_pack_side_by_side(engine):
    quiz = MultipleChoiceTask(
        "quiz",
        [
            MCItem("What is the capital city of France?", ("Berlin", "Paris", "Madrid"), 1),
            MCItem("Which Python keyword starts a loop over items?", ("for", "def", "class"), 0),
        ],
    )
    text = [TextTask("prose", [PROSE], window_chars=200, context_chars=90)]
    text.append(TextTask("code", [CODE], window_chars=200, context_chars=90))
    report = evaluate(engine, [quiz, *text], standard_methods(engine), batch_size=3, progress=False)
    names = engine.names
    for result in report.tasks:
        assert set(result.scores) == {*names, "uniform", "top1", "sim", "opt"}
        for name in ("sim", "opt"):
            assert all(math.isclose(sum(w.values()), 1.0, abs_tol=1e-9) for w in result.weights[name])
    assert all(0.0 <= v <= 1.0 for v in report.task("quiz").scores.values())
    for task in ("prose", "code"):
        # Real models on clean English and Python: well under 8 bits (a byte's worth) per byte.
        assert all(0.1 < v < 4.0 for v in report.task(task).scores.values())
    # The code member is the better model of Python code than the smallest general member.
    code = report.task("code").scores
    assert code["qwen2.5-coder-0.5b"] < code["smollm2-135m"]
