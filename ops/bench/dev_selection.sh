#!/usr/bin/env bash
# Learning-rate selection on the dev split, then fresh seeds at the chosen rate.
#
#   ops/bench/dev_selection.sh DATA_DIR OUT_DIR [extra qsched submit flags, e.g. --set ...]
#
# Environment (defaults in brackets): TASKS [mrpc], MODELS [qwen3,rev-qwen3,ft-opt],
# LRS ["1e-4 3e-4 1e-3"], SELECT_SEEDS [1,2,3], CONFIRM_SEEDS [4,5,6,7,8], SCALE [tiny].
#
# 1. Every model × task × learning rate on SELECT_SEEDS (OUT_DIR/select_lr*.json).
# 2. ops/bench/select_by_dev.py picks, per model × task, the rate with the best mean dev
#    value of the task's primary metric; test values play no part (OUT_DIR/selection.md).
# 3. The chosen rate on CONFIRM_SEEDS, seeds that took no part in the choice
#    (OUT_DIR/confirm_*.json), summarised by ops/bench/quality_table.py (OUT_DIR/confirm.md).
# First-order models only: the rate is set through `first_order.learning_rate`.
set -euo pipefail
data=${1:?usage: dev_selection.sh DATA_DIR OUT_DIR [flags]}
out=${2:?usage: dev_selection.sh DATA_DIR OUT_DIR [flags]}
shift 2
repo=$(cd "$(dirname "$0")/../.." && pwd)
qsched=${QSCHED_BIN:-$repo/target/release/qsched}
tasks=${TASKS:-mrpc}
models=${MODELS:-qwen3,rev-qwen3,ft-opt}
lrs=${LRS:-1e-4 3e-4 1e-3}
mkdir -p "$out"
common=(--local --scale "${SCALE:-tiny}" --threads 2 --data-dir "$data" --format json "$@")
start=$(date +%s)
for lr in $lrs; do
  "$qsched" submit "${common[@]}" --seeds "${SELECT_SEEDS:-1,2,3}" --models "$models" --tasks "$tasks" \
    --set first_order.learning_rate="$lr" >"$out/select_lr$lr.json" 2>"$out/select_lr$lr.log"
done
python3 "$repo/ops/bench/select_by_dev.py" --field=train.learning_rate "$out"/select_lr*.json | tee "$out/selection.md"
for task in ${tasks//,/ }; do
  for model in ${models//,/ }; do
    # "mrpc qwen3: --set first_order.learning_rate=0.001" -> the flags after the colon.
    line=$(grep "^$task $model: " "$out/selection.md") || { echo "no choice for $task $model" >&2; exit 1; }
    read -r -a chosen <<<"${line#*: }"
    "$qsched" submit "${common[@]}" --seeds "${CONFIRM_SEEDS:-4,5,6,7,8}" --models "$model" --tasks "$task" \
      "${chosen[@]}" >"$out/confirm_${task}_$model.json" 2>"$out/confirm_${task}_$model.log"
  done
done
echo "wall seconds: $(( $(date +%s) - start ))" | tee "$out/wall.txt"
python3 "$repo/ops/bench/quality_table.py" "$out"/confirm_*.json | tee "$out/confirm.md"
