#!/usr/bin/env bash
# Reversible Qwen3 gradient error: `qbench rev-grad-error` over depth and precision.
# Per (depth, precision) one JSON line: per parameter group the relative gradient error
# of the reconstruction backward and of plain autograd, both against fp64 autograd through
# the same (fixed-point) network, and whether every reconstructed block input was
# bit-identical to the forward's. Batches are real text (SST-2 train sentences, Qwen
# tokenizer, packed), next-token loss.
#
#   QBENCH=/path/to/qbench DATA=/path/to/data OUT=/path/to/out ops/bench/rev_grad_error.sh
#
# The GPU command (Qwen3-0.6B width, real vocabulary, 4 x 512 tokens, fp32 and bf16
# autocast, at init and after 200 AdamW steps):
#   qbench rev-grad-error --device cuda:0 --data-dir $DATA --depths 2,4,8,12,28 \
#       --precisions fp32,bf16 --batch 4 --seq 512 [--train-steps 200]
#
# Settings (environment):
#   GPU=0               CUDA ordinal
#   DEVICE=cuda:$GPU    `cpu` only with SIZES=tiny (bf16 is CUDA only)
#   SIZES=full          `tiny` = hidden 64 at real vocabulary, 2 x 64 tokens, fp32 (tests the script)
#   TRAIN_STEPS="0 200" one sweep per value (AdamW steps before measuring)
#   PYTHON=python3      used only to find the host's libtorch (torch/lib) when LIBTORCH_DIR is unset
#   LIBTORCH_DIR        a libtorch whose lib/ the binary should load (default: the host's torch)
#
# Writes $OUT/rev_grad_error.jsonl, $OUT/logs/*.log and $OUT/runs.tsv. Expected time on one
# H200: 10 s at init, 157 s with 200 training steps (measured).
set -uo pipefail

QBENCH="${QBENCH:-${1:-}}"
DATA="${DATA:-}"
OUT="${OUT:-$PWD/bench-out}"
GPU="${GPU:-0}"
DEVICE="${DEVICE:-cuda:$GPU}"
SIZES="${SIZES:-full}"
TRAIN_STEPS="${TRAIN_STEPS:-0 200}"
PYTHON="${PYTHON:-python3}"

die() { echo "rev_grad_error: $*" >&2; exit 2; }
[ -n "$QBENCH" ] && [ -f "$QBENCH" ] || die "set QBENCH=/path/to/qbench"
[ -n "$DATA" ] && [ -d "$DATA" ] || die "set DATA=/path/to/data (glue/SST-2/train.tsv, tokenizers/qwen)"
mkdir -p "$OUT/logs" || die "cannot create $OUT"

# The binary finds libtorch through its rpath ($ORIGIN/../libtorch/lib): lay out
# <work>/bin/qbench + <work>/libtorch, as gpu_figures.sh does.
if [ -z "${LIBTORCH_DIR:-}" ]; then
  LIBTORCH_DIR="$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))' 2>/dev/null)" \
    || LIBTORCH_DIR="$(cd "$(dirname "$QBENCH")/../libtorch" 2>/dev/null && pwd)" \
    || die "no libtorch: set LIBTORCH_DIR or PYTHON with torch"
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/bin"
cp "$QBENCH" "$WORK/bin/qbench" && chmod +x "$WORK/bin/qbench"
ln -s "$LIBTORCH_DIR" "$WORK/libtorch"
[ -d "$(dirname "$LIBTORCH_DIR")/nvidia" ] && ln -s "$(dirname "$LIBTORCH_DIR")/nvidia" "$WORK/nvidia"
export LD_LIBRARY_PATH="$LIBTORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -f "$LIBTORCH_DIR/lib/libtorch_cuda.so" ] && export QSCHED_LIBTORCH_CUDA="$LIBTORCH_DIR/lib/libtorch_cuda.so"
# Deterministic cuBLAS workspace: the reconstruction needs bit-identical recomputation.
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"

if [ "$SIZES" = tiny ]; then
  ARGS=(--depths 2,12 --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 192 --batch 2 --seq 64
        --precisions fp32)
else
  [ "$DEVICE" != cpu ] || die "DEVICE=cpu needs SIZES=tiny"
  ARGS=(--depths 2,4,8,12,28 --batch 4 --seq 512 --precisions fp32,bf16)
fi

printf 'name\texit\tseconds\tcommand\n' > "$OUT/runs.tsv"
: > "$OUT/rev_grad_error.jsonl"
FAILED=0
for steps in $TRAIN_STEPS; do
  name="rev-grad-error-train$steps"
  cmd=("$WORK/bin/qbench" rev-grad-error --device "$DEVICE" --data-dir "$DATA" "${ARGS[@]}" --train-steps "$steps")
  echo "rev_grad_error: $name" >&2
  t0=$(date +%s)
  "${cmd[@]}" >> "$OUT/rev_grad_error.jsonl" 2> "$OUT/logs/$name.log"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "${cmd[*]}" >> "$OUT/runs.tsv"
  [ "$rc" -eq 0 ] || { FAILED=$((FAILED + 1)); echo "rev_grad_error: $name exited $rc (see logs/$name.log)" >&2; }
done
[ "$FAILED" -eq 0 ]
