"""The house rules, read from the package's own imports (docs/ARCHITECTURE.md draws them).

Every import statement of every module is collected with :mod:`ast` (lazy imports inside
functions included; ``if TYPE_CHECKING:`` blocks left out, they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "packllm_integrations"
ADAPTERS = ("packllm_integrations.langchain", "packllm_integrations.llama_index")
# What an adapter may import from the package: the engine's public API and the host layer.
PUBLIC = {
    "packllm_integrations",
    "packllm_integrations.aio",
    "packllm_integrations.catalog",
    "packllm_integrations.config",
    "packllm_integrations.engine",
    "packllm_integrations.errors",
    "packllm_integrations.events",
    "packllm_integrations.loading",
}
# The loader and its GGUF helper (which builds a GGUF's tokenizer) use transformers too.
TRANSFORMERS_OWNERS = {
    "packllm_integrations.backends.transformers",
    "packllm_integrations.loading",
    "packllm_integrations.gguf_files",
}
# Each backend library belongs to its own backend module.
LIBRARY_OWNERS = {
    "llama_cpp": "packllm_integrations.backends.llama_cpp",
    "httpx": "packllm_integrations.backends.remote",
    "llguidance": "packllm_integrations.constraints",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Modules imported by ``path`` (relative imports resolved; ``from a import b`` gives a and a.b)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path) for name, path in modules.items()}


def _internal(graph: dict[str, set[str]], name: str) -> set[str]:
    return {m for m in graph[name] if m in graph and m != name}


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    assert "packllm_integrations.decoding" in _internal(graph, "packllm_integrations.engine")
    assert "packllm_integrations.backends.base" in _internal(graph, "packllm_integrations.backends.transformers")


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    # A package's __init__ imports its children, which name their package when they import a
    # sibling (``from .base import X`` reads the package first): edges to an enclosing package are left out.
    def edges(name: str) -> set[str]:
        return {m for m in _internal(graph, name) if not name.startswith(m + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for nxt in sorted(edges(name)):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)


def test_only_the_transformers_backend_and_the_loader_import_transformers(graph: dict[str, set[str]]) -> None:
    for name, imported in graph.items():
        uses = sorted(m for m in imported if m == "transformers" or m.startswith("transformers."))
        if name not in TRANSFORMERS_OWNERS:
            assert not uses, f"{name} imports {uses}: transformers belongs in backends/transformers.py and loading.py"


def test_adapters_use_only_the_public_api_and_the_host(graph: dict[str, set[str]]) -> None:
    checked = 0
    for name, imported in graph.items():
        adapter = next((a for a in ADAPTERS if name == a or name.startswith(a + ".")), None)
        if adapter is None:
            continue
        checked += 1
        for m in imported:
            if not m.startswith("packllm_integrations"):
                continue
            if m == adapter or m.startswith(adapter + "."):
                continue
            other = next((a for a in ADAPTERS if m == a or m.startswith(a + ".")), None)
            assert other is None, f"{name} imports the other adapter ({m})"
            allowed = m in PUBLIC or m.rpartition(".")[0] in PUBLIC or m.startswith("packllm_integrations.host")
            assert allowed, f"{name} imports {m}, below the engine's public API and the host layer"
    assert checked >= 4


def test_the_engine_and_the_host_import_no_framework(graph: dict[str, set[str]]) -> None:
    for name, imported in graph.items():
        if any(name == a or name.startswith(a + ".") for a in ADAPTERS) or name.startswith("packllm_integrations.eval"):
            continue  # the evaluation harness has an lm-eval adapter of its own
        frameworks = sorted(m for m in imported if m.split(".")[0] in ("langchain_core", "langchain", "llama_index"))
        assert not frameworks, f"{name} imports {frameworks}"


def test_each_backend_library_is_imported_by_its_backend_only(graph: dict[str, set[str]]) -> None:
    for library, owner in LIBRARY_OWNERS.items():
        users = sorted(n for n, imported in graph.items() if any(m.split(".")[0] == library for m in imported))
        assert users == [owner], f"{library} is imported by {users}; it belongs in {owner}"


def test_no_package_file_is_over_about_300_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 330
    }
    assert not long, f"split these by job: {long}"
