#!/usr/bin/env bash
# Gradient checkpointing vs reversible backprop, one GPU, one script run: qsched's
# qwen3 (autograd), qwen3-ckpt (per-layer checkpointing) and rev-qwen3 (reconstruction),
# each through the model's own backward, next to transformers' Qwen3ForSequenceClassification
# plain and with gradient_checkpointing_enable(). Classification head, bf16 autocast over
# fp32 weights, Qwen3-0.6B width, depths 2..28, at 8 x 1024 (gradients + optimizer state
# dominate the peak) and 4 x 4096 (more activation per layer; gradients still dominate the
# checkpointed peak at these shapes, see BENCHMARKS.md §2b). Gradients are released between
# steps on both sides; every record splits the peak into static (weights + optimizer
# state), gradients and activations; each model's summary record has the least-squares
# slope of activation memory over depth.
#
#   QBENCH=/path/to/qbench OUT=/path/to/out ops/bench/ckpt_vs_rev.sh
#
# Writes $OUT/ckpt_vs_rev.jsonl, $OUT/ckpt_vs_rev.md (summarize.py's tables and the
# done-when checks), $OUT/runs.tsv, $OUT/logs/*.log, env.txt, ldd.txt, nvidia-smi*.txt.
#
# Settings (environment):
#   GPU=0               CUDA ordinal
#   PYTHON=python3      the interpreter with torch + transformers (the HF peers; also
#                       where qbench's libtorch comes from unless LIBTORCH_DIR is set)
#   LIBTORCH_DIR        a libtorch for qbench other than PYTHON's torch
#   PEERS=1             0 skips the transformers rows (only for hosts without transformers;
#                       runs.tsv records the skip)
#   BUDGET_S=470        runs that would start after this many seconds are skipped (logged)
#   HARD_S=540          no run is allowed past 9 minutes (each run's timeout shrinks)
#   SIZES=full          `tiny` = CPU-sized shapes, fp32, for testing this script (DEVICE=cpu)
#   DEVICE=cuda:$GPU    `cpu` only with SIZES=tiny (bf16 autocast is CUDA only)
#
# Runtime on one H200: 157-170 s measured (four processes of 27-45 s each). Peak memory
# 43 GB (28-layer qwen3 without checkpointing at 4 x 4096).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QBENCH="${QBENCH:-${1:-}}"
OUT="${OUT:-$PWD/bench-out}"
GPU="${GPU:-0}"
PYTHON="${PYTHON:-python3}"
PEERS="${PEERS:-1}"
BUDGET_S="${BUDGET_S:-470}"
HARD_S="${HARD_S:-540}"
SIZES="${SIZES:-full}"
DEVICE="${DEVICE:-cuda:$GPU}"

die() { echo "ckpt_vs_rev: $*" >&2; exit 2; }
# shellcheck source=bench_lib.sh
. "$HERE/bench_lib.sh"

if [ "$PEERS" = 1 ]; then
  "$PYTHON" -c 'import torch, transformers' 2>/dev/null \
    || die "$PYTHON cannot import torch and transformers (the HF rows need them; PEERS=0 skips them)"
fi
bench_layout
bench_env

if [ "$SIZES" = tiny ]; then
  SHAPE="--hidden 32 --heads 4 --kv-heads 2 --head-dim 8 --intermediate 48 --vocab 128"
  RUN="--depths 1,2,3 --steps 2 --warmup 1"
  SHAPES=("2 16" "1 64")
  PREC=fp32
  T_RUN=120
else
  [ "$DEVICE" != cpu ] || die "DEVICE=cpu needs SIZES=tiny"
  # Qwen3-0.6B width (hidden 1024, 16 q / 8 kv heads, head_dim 128, SwiGLU 3072, vocab 151936).
  SHAPE="--hidden 1024 --heads 16 --kv-heads 8 --head-dim 128 --intermediate 3072 --vocab 151936"
  RUN="--depths 2,4,8,12,16,20,24,28 --steps 5 --warmup 2"
  SHAPES=("8 1024" "4 4096")
  PREC=bf16
  T_RUN=200
fi

F=ckpt_vs_rev.jsonl
: > "$OUT/$F"
for bt in "${SHAPES[@]}"; do
  b=${bt% *}; t=${bt#* }
  run "qsched-${b}x${t}" "$F" "$QB" qwen3-depth --device "$DEVICE" $SHAPE $RUN --batch "$b" --seq "$t" \
      --head cls --precision "$PREC" --models qwen3,qwen3-ckpt,rev-qwen3
  if [ "$PEERS" = 1 ]; then
    run "hf-${b}x${t}" "$F" "$PYTHON" "$HERE/hf_qwen3_train.py" --device "$DEVICE" $SHAPE $RUN --batch "$b" \
        --seq "$t" --head cls --precision "$PREC" --models qwen3,qwen3-ckpt
  else
    echo "ckpt_vs_rev: PEERS=0: transformers rows not measured" >&2
    printf '%s\tskipped\t0\t%s\n' "hf-${b}x${t}" "PEERS=0" >> "$OUT/runs.tsv"
  fi
done

"$PYTHON" "$HERE/summarize.py" --ckpt-vs-rev "$OUT" > "$OUT/ckpt_vs_rev.md" 2> "$OUT/logs/summarize.log" \
  || echo "ckpt_vs_rev: summarize.py failed (see logs/summarize.log)" >&2
bench_finish ckpt_vs_rev
