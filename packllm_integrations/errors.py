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
        shown = repr(value)
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
