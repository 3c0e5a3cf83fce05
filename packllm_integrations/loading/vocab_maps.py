"""Vocabulary maps between members' tokenizers, cached on disk.

A MinED map (:func:`~..alignment.mined.build_vocab_map`) takes seconds to minutes to build;
it is saved under ``<cache_dir>/maps/``, keyed by the two vocabularies' fingerprints, and
read back on later loads (the engine also keeps it in memory).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..alignment.mined import MAP_VERSION, VocabMap, build_vocab_map
from ..alignment.vocabulary import vocabulary_fingerprint
from . import caching
from .caching import cache_dir

__all__ = ["load_vocab_map"]

logger = logging.getLogger(__name__)


def load_vocab_map(
    reference: Any, member: Any, member_width: int, progress: bool = True, cache: Path | None = None
) -> VocabMap:
    """The MinED map from tokenizer ``reference`` to ``member``: from the disk cache, or built
    (see :func:`~..alignment.mined.build_vocab_map`) and saved there.

    The cache key is the pair of vocabulary fingerprints, so moving a model keeps its maps
    and changing a tokenizer rebuilds them. ``cache`` defaults to ``<cache_dir>/maps``. A
    damaged file is rebuilt; a folder that cannot be written costs a warning, not the map.
    """
    ref_key, mem_key = vocabulary_fingerprint(reference), vocabulary_fingerprint(member)
    folder = cache or cache_dir() / "maps"
    path = folder / f"v{MAP_VERSION}-{ref_key[:16]}-{mem_key[:16]}-{member_width}.pt"
    if path.is_file():
        try:
            data = torch.load(path, weights_only=True)
            return VocabMap(data["output"], data["input"], int(data["floor_index"]), int(data["exact"]))
        except Exception:  # a damaged cache file: rebuild it
            logger.warning("Ignoring unreadable vocabulary map cache %s", path)
    result = build_vocab_map(reference, member, member_width, progress)
    data = {"output": result.output, "input": result.input, "floor_index": result.floor_index, "exact": result.exact}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with caching.atomic_file(path) as out:  # a temporary name of this writer's own
            torch.save(data, out)
    except OSError as exc:
        logger.warning("Could not cache the vocabulary map in %s: %s", folder, exc)
    return result
