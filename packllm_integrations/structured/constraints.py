"""Constrained decoding: the fused distribution masked by a grammar at every step.

A :class:`Constraint` (a JSON Schema, a regular expression or a Lark grammar) goes into
``GenerationConfig.constraint``. Each prompt of a request gets a matcher over its
reference member's tokenizer (llguidance: a compiled token mask per step, made for
exactly this); before each token is chosen, the tokens the grammar does not allow next
get a fused score of ``-inf``, in greedy and sampled decoding alike. End-of-sequence is
allowed only where the grammar is complete. The output ends with ``finish_reason="stop"``
when the grammar is complete (by an end token or because nothing more may follow);
``"length"`` means ``max_new_tokens`` cut it before that, so it need not parse. A grammar
with an empty language is refused; one that comes to a dead end before the output is whole
raises :class:`~packllm_integrations.errors.ConstraintError`. JSON Schemas are taken as
llguidance enforces them exactly (:mod:`.schemas`); a looping string is ended (:mod:`.repeats`).

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
from .repeats import MIN_REPEAT_SPAN, RepeatGuard
from .schemas import JSON_LAYOUT, MAX_SCHEMA_DEPTH, closed_schema, nesting, one_of_as_any_of

__all__ = [
    "JSON_LAYOUT",
    "MAX_SCHEMA_DEPTH",
    "MIN_REPEAT_SPAN",
    "Constraint",
    "Grammars",
    "RepeatGuard",
    "RowMatcher",
    "closed_schema",
    "mask",
    "one_of_as_any_of",
]

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
            except RecursionError:
                raise ConfigError("constraint", schema[:80], f"a JSON Schema at most {MAX_SCHEMA_DEPTH} deep") from None
        if not isinstance(schema, Mapping):
            raise ConfigError("constraint", schema, "a JSON Schema (a dict, its JSON text or a pydantic model)")
        if nesting(schema) > MAX_SCHEMA_DEPTH:
            raise ConfigError(
                "constraint",
                f"<a schema more than {MAX_SCHEMA_DEPTH} objects and arrays deep>",
                f"a JSON Schema at most {MAX_SCHEMA_DEPTH} deep",
            )
        schema = one_of_as_any_of(schema)  # a oneOf the grammar cannot enforce raises here
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

    grammar = constraint.grammar()
    problem = LLMatcher.validate_grammar(grammar)  # it reports, never raises
    if problem:
        return problem
    return _empty(LLMatcher(_byte_tokenizer(), grammar, log_level=0))


EMPTY = "its language is empty: no output can begin a sentence of it"
"""What a grammar whose language is empty (``start: start "a"``, a schema ``{"$ref": "#"}``) is refused for."""


def _empty(matcher: Any) -> str | None:
    """:data:`EMPTY` when ``matcher`` (fresh) allows no first token and is not complete, else None (llguidance's
    ``NoExtensionBias`` at the first mask). A grammar whose every sentence is infinite (``start: "a" start``)
    is not found: it runs until ``max_new_tokens`` and ends with ``"length"``, never ``"stop"``."""
    probe = matcher.deep_copy()
    probe.compute_bitmask()
    return EMPTY if probe.is_error() and not probe.is_accepting() else None


@functools.cache
def _byte_tokenizer() -> Any:
    """A vocabulary of the 256 bytes and an end token: enough to ask llguidance about a grammar's language
    before any member's vocabulary is at hand (every byte string can be written with it)."""
    from llguidance import LLTokenizer
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    chars = byte_level_chars()
    tokenizer = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|end|>", special=True)])
    return LLTokenizer(tokenizer.to_str(), n_vocab=257, eos_token=[256])


class Grammars:
    """One engine's compiled tokenizers (by fingerprint), checked grammars, and each vocabulary's string closers."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}
        self._closers: dict[str, torch.Tensor] = {}
        self._checked: set[tuple[str, Constraint]] = set()
        self._lock = threading.Lock()

    def _tokenizer(self, member: Any) -> Any:
        key = member.tokenizer_fingerprint
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = _ll_tokenizer(member)
            return self._tokenizers[key]

    def _closing(self, member: Any, tokenizer: Any) -> torch.Tensor:
        """The tokens of ``member``'s vocabulary whose text begins with ``"``: a bool tensor [vocab_size]."""
        key = member.tokenizer_fingerprint
        with self._lock:
            if key not in self._closers:
                closing = torch.zeros(member.vocab_size, dtype=torch.bool)
                for token in range(min(member.vocab_size, tokenizer.vocab_size)):
                    closing[token] = tokenizer.decode_bytes([token]).startswith(b'"')
                self._closers[key] = closing
            return self._closers[key]

    def matcher(self, member: Any, constraint: Constraint, string_repeats: int = 0) -> RowMatcher:
        """A fresh matcher of ``constraint`` over ``member``'s vocabulary (``string_repeats``: :class:`RepeatGuard`'s,
        0: none)."""
        from llguidance import LLMatcher

        tokenizer = self._tokenizer(member)
        grammar = constraint.grammar()
        key = (member.tokenizer_fingerprint, constraint)
        shown = constraint.source[:200]
        if key not in self._checked:
            error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
            if error:
                raise ConfigError("constraint", shown, f"a grammar llguidance takes: {messages[0]}")
        matcher = LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            reason = matcher.get_error()
            raise ConfigError("constraint", shown, f"a grammar llguidance takes: {reason}")
        if key not in self._checked:
            if empty := _empty(matcher):
                raise ConfigError("constraint", shown, f"a grammar with at least one sentence ({empty})")
            self._checked.add(key)
        guard = None
        json_text = constraint.kind == "json_schema" or (constraint.kind == "lark" and "%json" in constraint.source)
        if string_repeats and json_text:
            guard = RepeatGuard(string_repeats, whole=constraint.kind == "json_schema")
        closing = self._closing(member, tokenizer) if guard is not None else None
        return RowMatcher(matcher, member.vocab_size, guard, closing)


def _ll_tokenizer(member: Any) -> Any:
    """``member``'s vocabulary for llguidance, its non-special added tokens read as the text they are.

    llguidance reads every added token as a special one, which no grammar text can match;
    Qwen2.5's ``<tool_call>`` is an added token that is ordinary text, so in a byte-level
    BPE vocabulary such tokens are read as vocabulary entries under their byte-level spelling.
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
            spelled = "".join(chars[b] for b in token["content"].encode("utf-8"))
            if token.get("special", True) or (token["id"] in ids and vocab.get(spelled) != token["id"]):
                kept.append(token)
            else:  # new, or already there (a GGUF file's: left special, the mask offered what it then refused)
                vocab[spelled] = token["id"]
        spec["added_tokens"] = kept
    return LLTokenizer(json.dumps(spec), n_vocab=member.vocab_size, eos_token=sorted(member.eos_token_ids))


class RowMatcher:
    """One prompt's grammar state: the mask of its next token, and the tokens chosen so far.

    ``guard`` and ``closing`` (the tokens that begin with ``"``): see :class:`RepeatGuard`.
    """

    def __init__(
        self, matcher: Any, width: int, guard: RepeatGuard | None = None, closing: torch.Tensor | None = None
    ) -> None:
        self.matcher, self.width = matcher, width
        self.guard, self.closing = guard, closing

    def allowed(self) -> torch.Tensor:
        """The tokens the grammar allows next: a bool tensor [width] (only those that end a looping string,
        where the grammar allows one).

        A grammar that allows nothing more where the output is not whole raises
        :class:`~packllm_integrations.errors.ConstraintError`."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        if self.matcher.is_error():
            reason = self.matcher.get_error().splitlines()[0]
            raise ConstraintError(
                "the grammar allows no token after the output so far, which is not a whole sentence of it: "
                f"a rule it took can never end (llguidance: {reason})"
            )
        allowed = np.unpackbits(bits, bitorder="little")[: self.width].astype(bool)
        if allowed.shape[0] < self.width:
            allowed = np.concatenate([allowed, np.zeros(self.width - allowed.shape[0], dtype=bool)])
        out = torch.from_numpy(allowed)
        if self.guard is not None and self.closing is not None and self.guard.looping:
            closing = out & self.closing
            if bool(closing.any()):
                self.guard.closed += 1
                return closing
        return out

    def advance(self, token: int) -> bool:
        """Record the chosen token; True when the grammar is complete and nothing more may follow."""
        if not self.matcher.consume_token(int(token)):
            raise ConstraintError(f"the grammar refused token {token}: {self.matcher.get_error()}")
        return bool(self.matcher.is_stopped())

    def read(self, text: str) -> None:
        """The text the chosen tokens became (for the guard against looping strings)."""
        if self.guard is not None:
            self.guard.read(text)

    @property
    def complete(self) -> bool:
        """Whether the output so far is a whole sentence of the grammar."""
        return bool(self.matcher.is_accepting())


def mask(fused: torch.Tensor, matchers: Sequence[RowMatcher | None], step: int) -> torch.Tensor:
    """``fused`` [G, W] with each row's disallowed tokens at ``-inf`` (rows without a matcher unchanged)."""
    for i, m in enumerate(matchers):
        if m is None:
            continue
        try:
            allowed = m.allowed()
        except ConstraintError as exc:
            raise ConstraintError(f"at step {step}, {exc}") from None
        fused[i].masked_fill_(~allowed.to(fused.device), float("-inf"))  # both: the reference's vocab_size
        if not bool(torch.isfinite(fused[i]).any()):
            raise ConstraintError(f"at step {step}, the constraint allows no token the pack can produce")
    return fused
