"""Loading: member specs and files turned into backends, and the disk caches behind them.

- :mod:`.specs`: :class:`MemberSpec` and the spec strings (``"smollm2-135m"``,
  ``"path/to/model.gguf,backend=llama.cpp"``, ``"openai:URL,model=..."``).
- :mod:`.catalog`: the bundled models (:data:`CATALOG`, :data:`DEFAULT_PACK`).
- :mod:`.registry`: the kinds of member by name (a backend registers itself once).
- :mod:`.loaders`: specs -> backends (:func:`load_member`, :func:`load_pack`).
- :mod:`.vocab_maps`: vocabulary maps cached on disk (:func:`load_vocab_map`).
- :mod:`.gguf_files`, :mod:`.caching`: GGUF files and tokenizers; the cache folder
  (:func:`cache_dir`) and its checksummed, atomic files.

Example:
    >>> from packllm_integrations.loading import parse_spec
    >>> parse_spec("smollm2-135m,dtype=float32").dtype
    'float32'
"""

from .caching import cache_dir
from .catalog import CATALOG, DEFAULT_PACK, CatalogEntry, is_installed
from .loaders import load_member, load_pack
from .registry import backend_names
from .specs import MemberSpec, parse_spec
from .vocab_maps import load_vocab_map

__all__ = [
    "CATALOG",
    "DEFAULT_PACK",
    "CatalogEntry",
    "MemberSpec",
    "backend_names",
    "cache_dir",
    "is_installed",
    "load_member",
    "load_pack",
    "load_vocab_map",
    "parse_spec",
]
