#!/usr/bin/env bash
# The CPU quality comparison of BENCHMARKS.md §4: all five methods on SST-2, CoLA, MRPC and
# RTE, and the two Qwen3 methods on STS-B (label-word scoring cannot regress), 3 seeds each,
# through the embedded mode. Writes one JSON array per command into OUT_DIR and prints the
# Markdown table (ops/bench/quality_table.py).
#
#   ops/bench/quality.sh DATA_DIR OUT_DIR [extra qsched submit flags, e.g. --set ...]
#
# Run on an otherwise idle machine for meaningful wall times; the metrics do not depend on
# load (same seed and thread count, same result).
set -euo pipefail
data=${1:?usage: quality.sh DATA_DIR OUT_DIR [flags]}
out=${2:?usage: quality.sh DATA_DIR OUT_DIR [flags]}
shift 2
repo=$(cd "$(dirname "$0")/../.." && pwd)
qsched=${QSCHED_BIN:-$repo/target/release/qsched}
mkdir -p "$out"
common=(--local --scale "${QUALITY_SCALE:-tiny}" --seeds 1,2,3 --threads 2 --data-dir "$data" --format json "$@")
start=$(date +%s)
"$qsched" submit "${common[@]}" --models qwen3,rev-qwen3,ft-opt,mezo-opt,dizo-opt \
  --tasks sst2,cola,mrpc,rte >"$out/quality_glue.json" 2>"$out/quality_glue.log"
"$qsched" submit "${common[@]}" --models qwen3,rev-qwen3 --tasks stsb \
  >"$out/quality_stsb.json" 2>"$out/quality_stsb.log"
echo "wall seconds: $(( $(date +%s) - start ))" | tee "$out/wall.txt"
python3 "$repo/ops/bench/quality_table.py" "$out/quality_glue.json" "$out/quality_stsb.json"
