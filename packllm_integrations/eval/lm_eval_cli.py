"""lm-evaluation-harness's command line with the ``packllm`` model registered.

lm-eval finds models only in its own registry (no entry points or plugins), so this module
registers :class:`~packllm_integrations.eval.lm_eval_adapter.PackLM` and then hands every
argument to lm-eval's own command line, unchanged::

    python -m packllm_integrations.eval.lm_eval_cli run --model packllm \\
        --model_args models=smollm2-135m+gemma3-270m+qwen2.5-coder-0.5b,weighting=sim \\
        --tasks packllm_demo_mc --include_path tests/data/lm_eval --batch_size 8

Set ``HF_DATASETS_OFFLINE=1`` and ``HF_HUB_OFFLINE=1`` where no hub can be reached; tasks
whose data lives on a hub need it cached first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Register ``packllm`` with lm-eval, then run lm-eval's command line on ``argv``."""
    from lm_eval.__main__ import cli_evaluate

    from . import lm_eval_adapter  # noqa: F401  (registers the model)

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
