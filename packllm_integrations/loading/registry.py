"""Member backends by name: each kind registers its loader and the options it refuses, once.

A new kind of member is a backend module (:mod:`packllm_integrations.backends`) and one
:func:`register` call beside its loader (:mod:`.loaders` registers the three built in);
specs accept its name from then on.

Example:
    >>> from packllm_integrations.loading import registry
    >>> registry.backend_names()
    ('auto', 'openai', 'llama.cpp', 'transformers')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..backends.base import MemberBackend
from ..errors import ConfigError

__all__ = ["BackendKind", "register", "backend_names", "backend_kind"]

Loader = Callable[[Any, bool], MemberBackend]
"""``load(spec, progress)``: the built member of a :class:`~.specs.MemberSpec`."""


def _accept_all(spec: Any) -> None:
    return None


@dataclass(frozen=True)
class BackendKind:
    """One kind of member: its name, its loader, and ``refuse(spec)``, which raises a
    :class:`ConfigError` for a spec option this kind would ignore."""

    name: str
    load: Loader
    refuse: Callable[[Any], None] = _accept_all


_KINDS: dict[str, BackendKind] = {}


def register(name: str, refuse: Callable[[Any], None] = _accept_all) -> Callable[[Loader], Loader]:
    """Register the decorated loader as backend ``name`` (a spec's ``backend=``)."""

    if name == "auto" or name in _KINDS:
        raise ConfigError("backend", name, "a name no other backend has registered (nor 'auto')")

    def add(load: Loader) -> Loader:
        _KINDS[name] = BackendKind(name, load, refuse)
        return load

    return add


def backend_names() -> tuple[str, ...]:
    """Every name a spec's ``backend`` may take: ``"auto"`` and the registered kinds."""
    return ("auto", *_KINDS)


def backend_kind(name: str) -> BackendKind:
    """The registered kind called ``name``."""
    if name not in _KINDS:
        raise ConfigError("backend", name, f"one of {list(backend_names())}")
    return _KINDS[name]
