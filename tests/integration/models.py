"""The bundled models the integration tests need."""

from __future__ import annotations

import pytest

from packllm_integrations.loading.catalog import is_installed


def need(*names: str) -> None:
    """Skip the test unless every named bundled model's packages are installed."""
    missing = [n for n in names if not is_installed(n)]
    if missing:
        pytest.skip(f"bundled model packages not installed: {missing} (see requirements-models.txt)")
