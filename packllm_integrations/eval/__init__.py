"""The evaluation harness: measure a pack against its members on real tasks.

Run several methods side by side (each member alone, ``uniform``, ``top1``, ``sim``,
``opt`` and ``fixed``) from one forward pass per member, on multiple-choice accuracy and
language-modelling bits per byte; report tables and plots. ``packllm eval`` is the command
line; :mod:`packllm_integrations.eval.lm_eval_adapter` plugs a pack into lm-evaluation-harness.
The suite (:mod:`packllm_integrations.eval.suite`, ``packllm eval suite``) runs tasks users run
(HumanEval pass@1, multiple choice, short answers, bits per byte on prose, code and their
mixture) once per method, timed, and compares each with the best member alone with paired
significance (:mod:`packllm_integrations.eval.stats`).

Example:
    >>> from packllm_integrations import PackEngine  # doctest: +SKIP
    >>> from packllm_integrations.eval import evaluate, bigbench_task, lee_task, stdlib_code_task, render_table
    >>> engine = PackEngine.from_models()  # doctest: +SKIP
    >>> tasks = [bigbench_task("general_knowledge", limit=60), lee_task(), stdlib_code_task()]  # doctest: +SKIP
    >>> print(render_table(evaluate(engine, tasks)))  # doctest: +SKIP
"""

from .data import bigbench_task, lee_task, pydoc_topics_task, stdlib_code_task
from .errors import DataNotFoundError, MissingDependencyError, TaskFileError
from .execution import ExecutionResult, run_program, run_programs
from .generation import CodeTask, GenerationTask, Outcome, RunTask, ShortAnswerTask
from .harness import evaluate
from .methods import FUSED_METHODS, MEMBER_MODES, Method, standard_methods
from .multiple_choice import MCItem, MultipleChoiceTask, format_question
from .report import plot_scores, plot_weights, render_table, render_weights, write_outputs
from .results import EvalReport, TaskResult
from .stats import Difference, McNemar, mcnemar_exact, paired_bootstrap, stratified_bootstrap
from .suite import (
    DEFAULT_TASKS,
    SUITE_TASKS,
    Comparison,
    build_tasks,
    compare,
    compare_means,
    parse_method,
    parse_methods,
    register_task,
    run_suite,
)
from .suite_report import plot_differences, render_suite, write_suite
from .task_files import load_task_file
from .tasks import TextTask, text_windows

__all__ = [
    "DEFAULT_TASKS",
    "SUITE_TASKS",
    "CodeTask",
    "Comparison",
    "Difference",
    "ExecutionResult",
    "GenerationTask",
    "McNemar",
    "Outcome",
    "RunTask",
    "ShortAnswerTask",
    "build_tasks",
    "compare",
    "compare_means",
    "mcnemar_exact",
    "paired_bootstrap",
    "parse_method",
    "parse_methods",
    "plot_differences",
    "register_task",
    "render_suite",
    "run_program",
    "run_programs",
    "run_suite",
    "stratified_bootstrap",
    "write_suite",
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
