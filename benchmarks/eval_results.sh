#!/usr/bin/env bash
# Reproduce the measurements in docs/RESULTS.md on the default pack (CPU, float32).
#
# Needs: the default pack installed (packllm models), matplotlib and gensim==4.4.0 (--no-deps).
# The multiple-choice rows were measured on BIG-bench 1.0.0, which the registry no longer serves:
# they are rerun only where $PACKLLM_BIGBENCH points at a copy of its source archive. The
# evaluation suite replaces them with data that installs offline:
#     python benchmarks/run_suite.py --pack default      (see docs/EVALUATION.md)
# Usage: benchmarks/eval_results.sh [RUNS_DIR]   (default: $TMPDIR/packllm-eval-runs; the plots go to docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${TMPDIR:-/tmp}/packllm-eval-runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PACKLLM=${PACKLLM:-packllm}

run() {  # name, then the packllm eval arguments
    local name=$1
    shift
    "$PACKLLM" eval "$@" --alignment mined --output "$RUNS/$name" --prefix "$name"  # as measured
}

TEXT=(lee stdlib:textwrap+shlex --max-chars 5000 --window-chars 1000 --context-chars 400 --batch-size 2)
run text "${TEXT[@]}"
results=("$RUNS/text/text.json")
if [[ -n "${PACKLLM_BIGBENCH:-}" ]]; then
    run strategyqa bigbench:strategyqa --limit 80
    run code bigbench:code_line_description --limit 12
    run gk bigbench:general_knowledge --limit 30
    results+=("$RUNS/strategyqa/strategyqa.json" "$RUNS/code/code.json" "$RUNS/gk/gk.json")
else
    echo "PACKLLM_BIGBENCH is not set: the BIG-bench multiple-choice rows are skipped" >&2
    echo "(the evaluation suite measures multiple choice on data that installs offline: benchmarks/run_suite.py)" >&2
fi
# Diagnostic: the same texts with the reference vocabulary forced to SmolLM2's.
run text-ref "${TEXT[@]}" --reference smollm2-135m
# Diagnostic: the prompt scored on each member's own tokenization, beside the default.
run text-own "${TEXT[@]}" --scoring reference,own

"$PACKLLM" eval-report "${results[@]}" --format markdown --output "$RUNS/all" --prefix results
cp "$RUNS/all/results_scores.png" docs/eval_scores.png
cp "$RUNS/all/results_weights.png" docs/eval_weights.png
cp "$RUNS/text-ref/text-ref_weights.png" docs/eval_weights_reference_smollm.png
cp "$RUNS/text-own/text-own_weights.png" docs/eval_weights_own_scoring.png
