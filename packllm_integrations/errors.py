"""The package's exceptions: one base class, typed subclasses that name the bad input."""

from __future__ import annotations

from typing import Any

__all__ = [
    "PackLLMError",
    "ConfigError",
    "PromptError",
    "PromptTooLongError",
    "ModelNotFoundError",
    "ModelLoadError",
    "MemberError",
    "BackendError",
    "GenerationTimeoutError",
    "ConstraintError",
]


class PackLLMError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PackLLMError, ValueError):
    """A parameter has a value that cannot be used.

    The message names the parameter, shows the bad value and says what would be valid::

        >>> raise ConfigError("tau", -1.0, "a number > 0")
        Traceback (most recent call last):
        ...
        packllm_integrations.errors.ConfigError: tau=-1.0 is invalid: expected a number > 0
    """

    def __init__(self, parameter: str, value: Any, expected: str) -> None:
        self.parameter = parameter
        self.value = value
        self.expected = expected
        try:
            shown = repr(value)
        except RecursionError:  # a value nested too deeply to print
            shown = f"<a {type(value).__name__} nested too deeply to show>"
        if len(shown) > 200:
            shown = shown[:197] + "..."
        super().__init__(f"{parameter}={shown} is invalid: expected {expected}")


class PromptError(ConfigError, TypeError):
    """A prompt is not text (or not a list of chat messages where those are accepted)."""


class PromptTooLongError(ConfigError):
    """A prompt does not fit in a member's context window."""


class ModelNotFoundError(PackLLMError, FileNotFoundError):
    """A member spec names no catalog model, folder or file that exists here."""


class ModelLoadError(PackLLMError, RuntimeError):
    """A member's files exist but could not be turned into a model."""


class MemberError(PackLLMError, RuntimeError):
    """A member failed during a request: its backend raised, or it gave non-finite scores.

    Attributes:
        member: the member's name.
        step: the decoding step (0 for the first generated token) or None for the prefill.
        prompts: the indices of the prompts it failed on.
        partial: each prompt's text generated before the failure (index -> text).
    """

    def __init__(
        self,
        member: str,
        step: int | None,
        reason: str,
        prompts: tuple[int, ...] = (),
        partial: dict[int, str] | None = None,
    ) -> None:
        self.member, self.step, self.reason = member, step, reason
        self.prompts = prompts
        self.partial = dict(partial or {})
        where = "at the prefill" if step is None else f"at step {step}"
        which = f" (prompts {list(prompts)})" if prompts else ""
        super().__init__(f"member {member!r} failed {where}{which}: {reason}")


class BackendError(PackLLMError, ConnectionError):
    """A member's backend could not answer: a server's HTTP error, timeout or malformed response.

    Attributes:
        member: the member's name.
        server: where it runs (a URL).
        reason: what went wrong (never the API key).

    During a request the session turns it into a :class:`MemberError` (or drops the member,
    with ``on_member_error="drop"``).
    """

    def __init__(self, member: str, server: str, reason: str) -> None:
        self.member, self.server, self.reason = member, server, reason
        super().__init__(f"member {member!r} at {server}: {reason}")


class GenerationTimeoutError(PackLLMError, TimeoutError):
    """A request took longer than its ``timeout``; ``partial`` holds each prompt's text so far."""

    def __init__(self, timeout: float, partial: dict[int, str] | None = None) -> None:
        self.timeout = timeout
        self.partial = dict(partial or {})
        super().__init__(f"generation took longer than timeout={timeout} s")


class ConstraintError(PackLLMError, RuntimeError):
    """A constraint left no token the pack can produce, its grammar refused a chosen token, or it came to a
    point where nothing may follow before the output was a whole sentence of it."""
