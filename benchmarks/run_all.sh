#!/usr/bin/env bash
# Run the GPU benchmarks and write JSON results + a markdown summary into OUT_DIR.
#
#   benchmarks/run_all.sh OUT_DIR [PHASE ...]
#
# Phases (default: all, in this order):
#   gen-1b gen-8b       generation throughput, batch 1 and 64, 6 rows (~2 min / ~4 min)
#   hooks-1b hooks-8b   per-hook time and aten ops of one decoding step, batch 1 (~30 s each)
#   extract-1b extract-8b   extraction prompts/s vs a plain forward (~1 min each)
#   peers-1b            steerpeft vs steering-vectors / repeng, generation + extraction (~2 min)
#   compile-1b          torch.compile check on the steered 1b model, batch 1 (~3-6 min: compiles 4 times)
#   summary             OUT_DIR/RESULTS.md from every JSON in OUT_DIR
#
# Each phase is one python process writing OUT_DIR/<phase>.json and OUT_DIR/<phase>.log, so a
# run cut short keeps the finished phases; run phases in several commands to stay under a
# per-command time limit, e.g.
#   benchmarks/run_all.sh OUT gen-1b gen-8b
#   benchmarks/run_all.sh OUT hooks-1b hooks-8b extract-1b extract-8b peers-1b
#   benchmarks/run_all.sh OUT compile-1b summary
#
# Environment:
#   PEER_WHEELS=DIR   install the peers first: pip install --no-deps --no-index --find-links DIR
#                     -r benchmarks/peer-requirements.txt (skipped when they already import)
#   REPEATS=N         timed repeats (default 5); NEW_TOKENS=N (default 64); DEVICE=cuda:0
#   PYTHON=python     interpreter
#   SMOKE=1           every script with --smoke only (tiny model on CPU): checks this script's plumbing
set -euo pipefail

OUT=${1:?usage: benchmarks/run_all.sh OUT_DIR [PHASE ...]}
shift
PHASES=("$@")
if [ ${#PHASES[@]} -eq 0 ]; then
  PHASES=(gen-1b gen-8b hooks-1b hooks-8b extract-1b extract-8b peers-1b compile-1b summary)
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
REPEATS=${REPEATS:-5}
NEW_TOKENS=${NEW_TOKENS:-64}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1

if [ -n "${PEER_WHEELS:-}" ]; then
  if ! "$PYTHON" -c "import steering_vectors, numpy; numpy.float_ = numpy.float64; import repeng" 2>/dev/null; then
    # scipy is only needed by scikit-learn: keep an installed one.
    grep -v '^#' "$HERE/peer-requirements.txt" | sed 's/#.*//' | grep -v '^ *$' | while read -r req; do
      name=${req%%==*}
      if [ "$name" = "scipy" ] && "$PYTHON" -c "import scipy" 2>/dev/null; then continue; fi
      echo "$req"
    done > "$OUT/peer-requirements.resolved.txt"
    "$PYTHON" -m pip install --no-deps --no-index --find-links "$PEER_WHEELS" -r "$OUT/peer-requirements.resolved.txt" \
      || echo "peer install failed: bench_peers records the missing peers and times steerpeft alone"
  fi
fi

{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) benchmarks/run_all.sh $OUT ${PHASES[*]}"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__)"
} | tee -a "$OUT/environment.txt"

run() {
  local phase=$1 script=$2
  shift 2
  if [ "${SMOKE:-0}" = 1 ]; then
    if [[ " $* " == *" --compile-only "* ]]; then set -- --smoke --compile-only --rows unsteered,actadd; else set -- --smoke; fi
  fi
  set -- "$script" "$@"
  echo "== $phase: $PYTHON $*"
  local start=$SECONDS
  if "$PYTHON" "$@" --out "$OUT/$phase.json" 2>&1 | tee "$OUT/$phase.log"; then
    echo "== $phase done in $((SECONDS - start)) s"
  else
    echo "== $phase FAILED after $((SECONDS - start)) s (see $OUT/$phase.log)"
  fi
}

COMMON=(--device "$DEVICE" --dtype bfloat16 --repeats "$REPEATS" --warmup 1)
for phase in "${PHASES[@]}"; do
  case "$phase" in
    gen-1b | gen-8b)
      run "$phase" "$HERE/bench_generate.py" --model "${phase#gen-}" --batch-sizes 1,64 --prompt-len 128 \
        --new-tokens "$NEW_TOKENS" "${COMMON[@]}" ;;
    hooks-1b | hooks-8b)
      run "$phase" "$HERE/profile_hooks.py" --model "${phase#hooks-}" --batch-sizes 1 --prompt-len 128 --steps 50 \
        "${COMMON[@]}" ;;
    extract-1b | extract-8b)
      run "$phase" "$HERE/bench_extract.py" --model "${phase#extract-}" --batch-sizes 32 --prompts 256 \
        --prompt-len 128 "${COMMON[@]}" ;;
    peers-1b | peers-8b)
      run "$phase" "$HERE/bench_peers.py" --model "${phase#peers-}" --batch-sizes 1,64 --prompt-len 128 \
        --new-tokens "$NEW_TOKENS" --prompts 256 --extract-batch 32 "${COMMON[@]}" ;;
    compile-1b | compile-8b)
      run "$phase" "$HERE/bench_generate.py" --model "${phase#compile-}" --compile-only --compile-batch 1 \
        --rows unsteered,actadd,mars,ablate_hooks --prompt-len 128 --new-tokens "$NEW_TOKENS" \
        --device "$DEVICE" --dtype bfloat16 --repeats 3 ;;
    summary)
      "$PYTHON" "$HERE/summarize.py" "$OUT" --out "$OUT/RESULTS.md"
      echo "== wrote $OUT/RESULTS.md" ;;
    *)
      echo "unknown phase $phase" >&2
      exit 2 ;;
  esac
done
