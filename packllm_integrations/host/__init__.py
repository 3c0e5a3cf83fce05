"""The host layer: what every host of the engine shares, framework-free.

Adapters (LangChain, LlamaIndex), the command line and the evaluation harness translate
their host's types with these and the engine's public API, nothing below it:

- the settings table (:data:`SETTINGS`): every generation setting's engine name, type,
  doc, bounds and per-host names; :func:`pack_model` builds a host's pydantic fields
  from it;
- call settings (:func:`resolve_call`), pack loading (:func:`load_engine`), weights
  strings (:func:`parse_weights`);
- the runner, sync and async, with timeout and out-of-memory retry (:class:`Runner`,
  :func:`acollect_results`);
- tool calling and constraints per call (:class:`ToolRequest`, :func:`split_call`,
  :func:`constrained`);
- results to metadata (:func:`result_metadata`, :func:`weights_metadata`,
  :func:`usage_dict`) and chat messages to the engine's (:func:`merge_messages`).

This package imports neither LangChain nor LlamaIndex.
"""

from .fields import PackModel, pack_model
from .running import Runner, acollect_results
from .settings import (
    HOSTS,
    SETTINGS,
    Setting,
    check_settings,
    engine_settings,
    host_names,
    in_host_terms,
    load_engine,
    parse_weights,
    resolve_call,
)
from .tool_request import ToolRequest, constrained, split_call
from .translate import merge_messages, result_metadata, usage_dict, weights_metadata

__all__ = [
    "HOSTS",
    "SETTINGS",
    "PackModel",
    "Setting",
    "Runner",
    "ToolRequest",
    "acollect_results",
    "check_settings",
    "constrained",
    "engine_settings",
    "host_names",
    "in_host_terms",
    "load_engine",
    "merge_messages",
    "pack_model",
    "parse_weights",
    "resolve_call",
    "split_call",
    "result_metadata",
    "usage_dict",
    "weights_metadata",
]
