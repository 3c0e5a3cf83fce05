"""The house rules, read from the package's own imports (docs/ARCHITECTURE.md draws them).

Every import statement of every module is collected with :mod:`ast` (lazy imports inside
functions included; ``if TYPE_CHECKING:`` blocks left out where they never run, and read
too for the cycle check that includes them).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "packllm_integrations"
ADAPTERS = ("packllm_integrations.langchain", "packllm_integrations.llama_index")
# What an adapter may import from the package: the engine's public API and the host layer.
PUBLIC = {
    "packllm_integrations",
    "packllm_integrations.aio",
    "packllm_integrations.config",
    "packllm_integrations.engine",
    "packllm_integrations.errors",
    "packllm_integrations.events",
    "packllm_integrations.loading",
}
# The loader and its GGUF helper (which builds a GGUF's tokenizer) use transformers too.
TRANSFORMERS_OWNERS = {
    "packllm_integrations.backends.transformers",
    "packllm_integrations.loading.loaders",
    "packllm_integrations.loading.gguf_files",
}
# Each backend library belongs to its own backend module.
LIBRARY_OWNERS = {
    "llama_cpp": "packllm_integrations.backends.llama_cpp_context",
    "httpx": "packllm_integrations.backends.server_client",
    "llguidance": "packllm_integrations.structured.constraints",
}
# The layers, lowest first: a module imports from its own layer or lower ones only. A name
# is a module or a folder (package) below packllm_integrations; the longest one that
# holds a module gives its layer; "" is the package itself (its public API, on top).
LAYERS = (
    ("errors", "events", "alignment.vocabulary"),  # no import from the package
    ("structured",),  # grammars, tools, replies, chat formats
    ("config",),  # the request's settings (a constraint among them)
    ("backends",),  # members: one file per kind
    ("alignment",),  # vocabulary maps, natural reading, projections
    ("loading",),  # specs and files -> backends; caches
    ("decoding",),  # the session and its pure functions
    ("engine", "aio"),  # the public engine
    ("host",),  # what every front end shares
    ("langchain", "llama_index", "eval", "cli", ""),  # front ends, and the package's root
)


def _layer(module: str) -> int:
    name = module.removeprefix("packllm_integrations").removeprefix(".")
    best, found = -1, None
    for level, names in enumerate(LAYERS):
        for prefix in names:
            holds = name == prefix or name.startswith(prefix + ".") or prefix == ""
            if holds and len(prefix) > best:
                best, found = len(prefix), level
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, type_only: bool = False) -> set[str]:
    """Modules imported by ``path`` (relative imports resolved; ``from a import b`` gives a and a.b);
    with ``type_only``, those under ``if TYPE_CHECKING:`` too."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_only:
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


@pytest.fixture(scope="module")
def typed_graph() -> dict[str, set[str]]:
    """The graph with the imports made for type checkers only."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, type_only=True) for name, path in modules.items()}


def _internal(graph: dict[str, set[str]], name: str) -> set[str]:
    return {m for m in graph[name] if m in graph and m != name}


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    assert "packllm_integrations.decoding.session" in _internal(graph, "packllm_integrations.engine")
    assert "packllm_integrations.backends.base" in _internal(graph, "packllm_integrations.backends.transformers")


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    # A package's __init__ imports its children, which name their package when they import a
    # sibling (``from .base import X`` reads the package first): edges to an enclosing package are left out.
    def edges(name: str) -> set[str]:
        return {m for m in _internal(graph, name) if not name.startswith(m + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for nxt in sorted(edges(name)):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := walk(name)):
            return cycle
    return None


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycles_counting_type_only_imports(typed_graph: dict[str, set[str]]) -> None:
    cycle = _find_cycle(typed_graph)
    assert cycle is None, "import cycle (type-only imports included): " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    looped = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(looped) == ["a", "b", "c", "a"]


def test_every_module_imports_only_its_layer_and_those_below(typed_graph: dict[str, set[str]]) -> None:
    wrong = []
    for name in typed_graph:
        for imported in _internal(typed_graph, name):
            if name.startswith(imported + "."):
                continue  # a module names its own package when it imports a sibling
            if _layer(imported) > _layer(name):
                wrong.append(f"{name} (layer {_layer(name)}) imports {imported} (layer {_layer(imported)})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_layers_are_read_as_drawn() -> None:
    assert _layer("packllm_integrations.alignment.vocabulary") == 0
    assert _layer("packllm_integrations.alignment.mined") == 4
    assert _layer("packllm_integrations.decoding.session") > _layer("packllm_integrations.backends.base")
    assert _layer("packllm_integrations") == len(LAYERS) - 1


def test_importing_the_package_imports_no_backend_library() -> None:
    code = (
        "import sys, packllm_integrations, packllm_integrations.loading, packllm_integrations.host\n"
        "heavy = sorted(m for m in ('transformers', 'llama_cpp', 'httpx', 'langchain_core', 'llama_index') "
        "if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_only_the_transformers_backend_and_the_loader_import_transformers(graph: dict[str, set[str]]) -> None:
    for name, imported in graph.items():
        uses = sorted(m for m in imported if m == "transformers" or m.startswith("transformers."))
        if name not in TRANSFORMERS_OWNERS:
            assert not uses, f"{name} imports {uses}: transformers belongs to {sorted(TRANSFORMERS_OWNERS)}"


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
