"""The evaluation harness: measure a pack against its members on real tasks.

Run several methods side by side (each member alone, ``uniform``, ``top1``, ``sim``,
``opt`` and ``fixed``) from one forward pass per member, on multiple-choice accuracy and
language-modelling bits per byte; report tables and plots. ``packllm eval`` is the command
line; :mod:`packllm_integrations.eval.lm_eval_adapter` plugs a pack into lm-evaluation-harness.

Example:
    >>> from packllm_integrations import PackEngine  # doctest: +SKIP
    >>> from packllm_integrations.eval import evaluate, bigbench_task, lee_task, stdlib_code_task, render_table
    >>> engine = PackEngine.from_models()  # doctest: +SKIP
    >>> tasks = [bigbench_task("general_knowledge", limit=60), lee_task(), stdlib_code_task()]  # doctest: +SKIP
    >>> print(render_table(evaluate(engine, tasks)))  # doctest: +SKIP
"""

from .data import bigbench_task, lee_task, pydoc_topics_task, stdlib_code_task
from .errors import DataNotFoundError, MissingDependencyError, TaskFileError
from .harness import evaluate
from .methods import FUSED_METHODS, MEMBER_MODES, Method, standard_methods
from .multiple_choice import MCItem, MultipleChoiceTask, format_question
from .report import plot_scores, plot_weights, render_table, render_weights, write_outputs
from .results import EvalReport, TaskResult
from .task_files import load_task_file
from .tasks import TextTask, text_windows

__all__ = [
    "FUSED_METHODS",
    "MEMBER_MODES",
    "DataNotFoundError",
    "EvalReport",
    "MCItem",
    "Method",
    "MissingDependencyError",
    "MultipleChoiceTask",
    "TaskFileError",
    "TaskResult",
    "TextTask",
    "bigbench_task",
    "evaluate",
    "format_question",
    "lee_task",
    "load_task_file",
    "plot_scores",
    "plot_weights",
    "pydoc_topics_task",
    "render_table",
    "render_weights",
    "standard_methods",
    "stdlib_code_task",
    "text_windows",
    "write_outputs",
]
