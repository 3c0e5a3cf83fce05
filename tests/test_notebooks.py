"""Every notebook runs top to bottom (integration), and is committed with its outputs cleared."""

from __future__ import annotations

from pathlib import Path

import pytest

from packllm_integrations.loading.catalog import is_installed
from tests.test_adapters_common import REAL_PACK

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == [
        "agent_tool_backend.ipynb",
        "langchain_quickstart.ipynb",
        "llama_index_rag.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    missing = [name for name in REAL_PACK if not is_installed(name)]
    if missing:
        pytest.skip(f"bundled models not installed: {', '.join(missing)}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: no notebook may reach a hub
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
