"""Constrained decoding: the fused distribution masked by a grammar at every step.

A :class:`Constraint` (a JSON Schema, a regular expression or a Lark grammar) goes into
``GenerationConfig.constraint``. Each prompt of a request gets a matcher over its
reference member's tokenizer (llguidance: a compiled token mask per step, made for
exactly this); before each token is chosen, the tokens the grammar does not allow next
get a fused score of ``-inf``, in greedy and sampled decoding alike. End-of-sequence is
allowed only where the grammar is complete. The output ends with ``finish_reason="stop"``
when the grammar is complete (by an end token or because nothing more may follow);
``"length"`` means ``max_new_tokens`` cut it before that, so it need not parse.

Compiled tokenizers are kept per engine (building one takes up to about a second for a
262k vocabulary); a grammar the library cannot compile (an unsupported schema feature)
is a :class:`~packllm_integrations.errors.ConfigError` naming ``constraint``.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..alignment.vocabulary import byte_level_chars
from ..errors import ConfigError, ConstraintError

__all__ = ["JSON_LAYOUT", "Constraint", "Grammars", "RowMatcher", "closed_schema", "mask"]

KINDS = ("json_schema", "regex", "lark")


@dataclass(frozen=True)
class Constraint:
    """What the output must match. Build one with the class methods.

    Example:
        >>> Constraint.regex(r"(yes|no)").kind
        'regex'
        >>> Constraint.json_schema({"type": "object", "properties": {"n": {"type": "integer"}}}).kind
        'json_schema'
    """

    kind: str
    source: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError("constraint", self.kind, f"a constraint kind, one of {list(KINDS)}")
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("constraint", self.source, "a non-empty schema, pattern or grammar")

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str | type) -> Constraint:
        """Output that is JSON valid against ``schema`` (a dict, its JSON text, or a pydantic model class)."""
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ConfigError("constraint", schema[:80], f"a JSON Schema in JSON ({exc})") from None
        if not isinstance(schema, Mapping):
            raise ConfigError("constraint", schema, "a JSON Schema (a dict, its JSON text or a pydantic model)")
        if (depth := _nesting(schema)) > MAX_SCHEMA_DEPTH:
            raise ConfigError(
                "constraint",
                f"<a schema {depth} objects and arrays deep>",
                f"a JSON Schema at most {MAX_SCHEMA_DEPTH} deep",
            )
        try:  # key order kept: the output follows it
            text = json.dumps(closed_schema(schema), allow_nan=False)
        except ValueError:
            raise ConfigError(
                "constraint", schema, "a JSON Schema whose numbers are finite (no NaN or infinity)"
            ) from None
        except TypeError as exc:
            raise ConfigError("constraint", schema, f"a JSON Schema of JSON values only ({exc})") from None
        return cls("json_schema", text)

    @classmethod
    def json(cls) -> Constraint:
        """Any JSON object."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Output that matches the regular expression ``pattern`` as a whole."""
        return cls("regex", pattern)

    @classmethod
    def lark(cls, grammar: str) -> Constraint:
        """Output in the language of a Lark context-free grammar (llguidance's dialect; start rule ``start``)."""
        return cls("lark", grammar)

    def problem(self) -> str | None:
        """Why llguidance cannot take this constraint (an unsupported schema feature, a bad pattern), or None.

        Checked without a vocabulary, so a schema can be refused where it is given, before
        any member is asked.

        >>> Constraint.json_schema({"type": "strnig"}).problem()
        'Invalid type: strnig'
        """
        return _problem(self)

    def grammar(self) -> str:
        """The llguidance grammar of this constraint."""
        from llguidance import LLMatcher

        if self.kind == "json_schema":
            return LLMatcher.grammar_from_json_schema(self.source, defaults=JSON_LAYOUT)
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.source)
        return LLMatcher.grammar_from_lark(self.source)


@functools.lru_cache(maxsize=256)
def _problem(constraint: Constraint) -> str | None:
    from llguidance import LLMatcher

    return LLMatcher.validate_grammar(constraint.grammar()) or None  # it reports, never raises


MAX_SCHEMA_DEPTH = 100
"""How deeply objects and arrays may nest in a JSON Schema (the grammar library's parser stops at 128)."""


def _nesting(value: Any) -> int:
    """How deeply dicts and lists nest in ``value`` (without recursion, so any depth is measured).

    >>> _nesting({"a": [{"b": 1}]}), _nesting(3)
    (3, 0)
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, Mapping) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_SCHEMA_DEPTH:  # deeper than the limit is enough to know
            stack.extend((child, depth + 1) for child in children)
    return deepest


JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""JSON as ``json.dumps`` writes it: no free whitespace for a model to wander in."""


def closed_schema(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` wherever an object lists its properties and says nothing.

    What matches the closed schema matches the original (it is a subset), and a model is
    kept from adding keys of its own after the ones asked for. An object whose keys other
    subschemas may add (``allOf``, ``anyOf``, ``oneOf``, ``$ref``, ``if``, ...) stays open, and so do
    the branches of an ``allOf`` (each must accept the others' keys).

    >>> closed_schema({"properties": {"a": {}}})
    {'properties': {'a': {}}, 'additionalProperties': False}
    >>> closed_schema({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]})
    {'allOf': [{'properties': {'a': {}}}, {'properties': {'b': {}}}]}
    """
    return _closed(schema, close=True)


_SHARED_KEYS = frozenset({"allOf", "anyOf", "oneOf", "$ref", "if", "then", "else", "dependentSchemas"})
"""Keywords beside ``properties`` through which other subschemas may add keys to the same object."""


def _closed(schema: Any, close: bool) -> Any:
    if isinstance(schema, Mapping):
        out = {
            k: [_closed(v, False) for v in value] if k == "allOf" and isinstance(value, list) else _closed(value, True)
            for k, value in schema.items()
        }
        if close and "properties" in out and "additionalProperties" not in out and not _SHARED_KEYS & out.keys():
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v, True) for v in schema]
    return schema


class Grammars:
    """One engine's compiled tokenizers (by fingerprint) and checked grammars."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}
        self._checked: set[tuple[str, Constraint]] = set()
        self._lock = threading.Lock()

    def _tokenizer(self, member: Any) -> Any:
        key = member.tokenizer_fingerprint
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = _ll_tokenizer(member)
            return self._tokenizers[key]

    def matcher(self, member: Any, constraint: Constraint) -> RowMatcher:
        """A fresh matcher of ``constraint`` over ``member``'s vocabulary."""
        from llguidance import LLMatcher

        tokenizer = self._tokenizer(member)
        grammar = constraint.grammar()
        key = (member.tokenizer_fingerprint, constraint)
        if key not in self._checked:
            error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
            if error:
                raise ConfigError("constraint", constraint.source[:200], f"a grammar llguidance takes: {messages[0]}")
            self._checked.add(key)
        matcher = LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            reason = matcher.get_error()
            raise ConfigError("constraint", constraint.source[:200], f"a grammar llguidance takes: {reason}")
        return RowMatcher(matcher, member.vocab_size)


def _ll_tokenizer(member: Any) -> Any:
    """``member``'s vocabulary for llguidance, its non-special added tokens read as the text they are.

    llguidance reads every added token as a special one, which no grammar text can match;
    Qwen2.5's ``<tool_call>`` is an added token that is ordinary text, so in a byte-level
    BPE vocabulary such tokens move into the model's vocabulary under their byte-level spelling.
    """
    from llguidance import LLTokenizer

    backend = getattr(member.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("constraint", member.name, "a member with a fast (Rust) tokenizer")
    spec = json.loads(backend.to_str())
    spec["padding"] = spec["truncation"] = None
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") == "BPE" and decoder.get("type") == "ByteLevel":
        chars = byte_level_chars()
        vocab, kept = model["vocab"], []
        ids = set(vocab.values())
        for token in spec.get("added_tokens", []):
            if token.get("special", True) or token["id"] in ids:
                kept.append(token)
            else:
                vocab["".join(chars[b] for b in token["content"].encode("utf-8"))] = token["id"]
        spec["added_tokens"] = kept
    return LLTokenizer(json.dumps(spec), n_vocab=member.vocab_size, eos_token=sorted(member.eos_token_ids))


class RowMatcher:
    """One prompt's grammar state: the mask of its next token, and the tokens chosen so far."""

    def __init__(self, matcher: Any, width: int) -> None:
        self.matcher, self.width = matcher, width

    def allowed(self) -> torch.Tensor:
        """The tokens the grammar allows next: a bool tensor [width]."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: self.width].astype(bool)
        if allowed.shape[0] < self.width:
            allowed = np.concatenate([allowed, np.zeros(self.width - allowed.shape[0], dtype=bool)])
        return torch.from_numpy(allowed)

    def advance(self, token: int) -> bool:
        """Record the chosen token; True when the grammar is complete and nothing more may follow."""
        if not self.matcher.consume_token(int(token)):
            raise ConstraintError(f"the grammar refused token {token}: {self.matcher.get_error()}")
        return bool(self.matcher.is_stopped())

    @property
    def complete(self) -> bool:
        """Whether the output so far is a whole sentence of the grammar."""
        return bool(self.matcher.is_accepting())


def mask(fused: torch.Tensor, matchers: Sequence[RowMatcher | None], step: int) -> torch.Tensor:
    """``fused`` [G, W] with each row's disallowed tokens at ``-inf`` (rows without a matcher unchanged)."""
    for i, m in enumerate(matchers):
        if m is None:
            continue
        fused[i].masked_fill_(~m.allowed().to(fused.device), float("-inf"))  # both: the reference's vocab_size
        if not bool(torch.isfinite(fused[i]).any()):
            raise ConstraintError(f"at step {step}, the constraint allows no token the pack can produce")
    return fused
