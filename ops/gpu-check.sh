#!/usr/bin/env bash
# Check a GPU host with prebuilt binaries: the CUDA path of qagent end to end.
#
#   ops/gpu-check.sh --bin DIR --data DIR --out DIR [--saved DIR] [--gpu N]
#
#   --bin    folder with qagent and qsched (release builds; may be stripped)
#   --data   data directory (glue/SST-2 and tokenizers/{qwen,opt} are enough)
#   --out    where the reports go
#   --saved  optional: checkpoints written by qsched's save test (ops/parity/check_saved.py)
#
# Needs the host's python3 with PyTorch 2.11 (+cu130) and transformers; nothing is built.
# Steps, each report in --out:
#   1. install layout: ops/install.sh --torch-lib <torch>/lib into a scratch prefix, so the
#      binaries find libtorch through their rpath and libtorch_cuda.so beside it (no
#      LD_LIBRARY_PATH);
#   2. devices.txt: qagent refuses a CUDA ordinal the host does not have (no CPU fallback);
#   3. parity_gpu.jsonl: `qagent inspect` logits on cuda vs the transformers references
#      (ops/parity/check_inspect.py, tolerance 1e-3);
#   4. check_saved.txt: checkpoints saved by qsched load in this host's transformers with
#      the same logits;
#   5. shards_fp32.json / shards_bf16.json: one tiny SST-2 shard of every method on
#      cuda:N through the agent (supervisor + worker process, placement audit included),
#      fp32 and bf16 autocast.
set -uo pipefail

BIN= DATA= OUT= SAVED= GPU=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --saved) SAVED=$2; shift 2 ;;
    --gpu) GPU=$2; shift 2 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$BIN" ] && [ -n "$DATA" ] && [ -n "$OUT" ] || { echo "usage: $0 --bin DIR --data DIR --out DIR [--saved DIR]" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
status=0
step() { echo "== $*" >&2; }

TORCH_DIR=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))') || { echo "python3 cannot import torch" >&2; exit 2; }
python3 -c 'import torch;print(torch.__version__, torch.cuda.get_device_name(0))' > "$OUT/env.txt" 2>&1
nvidia-smi >> "$OUT/env.txt" 2>&1

step "1. install layout"
WORK=$(mktemp -d)
PREFIX=$WORK/prefix
mkdir -p "$WORK/target/release"
cp "$BIN/qagent" "$BIN/qsched" "$WORK/target/release/"
chmod +x "$WORK/target/release/qagent" "$WORK/target/release/qsched"
"$REPO/ops/install.sh" --prefix "$PREFIX" --target-dir "$WORK/target" --torch-lib "$TORCH_DIR/lib" > "$OUT/install.txt" 2>&1 \
  || { echo "install failed" >&2; cat "$OUT/install.txt" >&2; exit 1; }
QAGENT="$PREFIX/bin/qagent"
QSCHED="$PREFIX/bin/qsched"
unset LD_LIBRARY_PATH

step "2. device errors"
{
  echo "\$ qagent --device cuda:99 (expect a clear error, exit 1)"
  "$QAGENT" --device cuda:99 --data-dir "$DATA" 2>&1; echo "exit $?"
  echo "\$ qagent --device gpu (expect a clear error, exit 2)"
  "$QAGENT" --device gpu --data-dir "$DATA" 2>&1; echo "exit $?"
} > "$OUT/devices.txt"

step "3. parity on cuda:$GPU"
python3 "$REPO/ops/parity/check_inspect.py" --qagent "$QAGENT" --device "cuda:$GPU" --tol 1e-3 > "$OUT/parity_gpu.jsonl" 2>&1 || status=1

if [ -n "$SAVED" ]; then
  step "4. qsched-saved checkpoints in transformers"
  for d in "$SAVED"/*/; do
    echo "# $d"
    python3 "$REPO/ops/parity/check_saved.py" "$d" "$d/tokens.json" 2>&1 || status=1
  done > "$OUT/check_saved.txt"
fi

step "5. one shard per method on cuda:$GPU"
for precision in fp32 bf16; do
  "$QSCHED" submit --local --device-class cuda --devices "cuda:$GPU" --scale tiny --seeds 1 \
    --models qwen3,rev-qwen3,ft-opt,mezo-opt,dizo-opt --tasks sst2 \
    --set "first_order.precision=$precision" --set "zeroth_order.precision=$precision" \
    --data-dir "$DATA" --format json > "$OUT/shards_$precision.json" 2> "$OUT/shards_$precision.log" || status=1
done
exit $status
