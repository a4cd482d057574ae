#!/usr/bin/env bash
# The two GPU figures, ours (qbench) and the PyTorch peers back to back on the same GPU
# with the same settings. Needs only the prebuilt qbench binary, this folder, and the
# host's python3 with PyTorch 2.11 + transformers (no Rust, no extra installs).
#
#   QBENCH=/path/to/qbench OUT=/path/to/out ops/bench/gpu_figures.sh
#   ops/bench/gpu_figures.sh /path/to/qbench            # OUT defaults to ./bench-out
#
# Writes to $OUT:
#   qwen3_depth.jsonl   figure 1: qsched qwen3 + rev-qwen3 vs HF Qwen3, depths 2..28
#   zo_opt.jsonl        figure 2: qsched inference/mezo/dizo/ft vs plain-PyTorch peers
#   runs.tsv            every command with exit status and seconds
#   logs/*.log          stderr of every run
#   nvidia-smi*.txt, env.txt, ldd.txt
#
# Settings (environment):
#   GPU=0                 CUDA ordinal
#   PYTHON=python3        the interpreter with torch + transformers
#   EXTRA=0               1 adds bf16 LM-head depth sweeps and bf16-autocast OPT runs (~+1.5 min)
#   BUDGET_S=480          runs that would start after this many seconds are skipped (logged)
#   HARD_S=570            no run is allowed past this many seconds (each run's timeout shrinks)
#   SIZES=full            `tiny` = CPU-sized shapes, for testing this script (DEVICE=cpu)
#   DEVICE=cuda:$GPU      `cpu` only with SIZES=tiny
#   LIBTORCH_DIR          a libtorch for qbench other than the host's torch (default: PYTHON's)
#
# Expected runtime on one H100 80GB (estimates, fp32 = TF32 off on both sides):
#   figure 1 (batch 8 x seq 512, 5 timed + 2 warm-up steps): per process ~10 s start-up
#     (CUDA init; Python imports), compute ~0.3 s/step for 28-layer qwen3 fp32, ~0.4 s
#     reversible; cls+lm fp32 and cls bf16, ours + HF            ≈ 1.5–2 min
#   figure 2 (OPT-1.3b, 16 examples x 2 candidates x 256 tokens): forward ~0.5 s fp32;
#     mezo ~1.1 s, dizo + one projection round (20 forwards) ~10 s, ft ~1.6 s; fp32 + fp16
#     weights, ours + torch                                       ≈ 2–2.5 min
#   total ≈ 4–5 min (peak memory: ~35 GB Qwen3 28 layers lm fp32, ~45 GB OPT ft fp32).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QBENCH="${QBENCH:-${1:-}}"
OUT="${OUT:-$PWD/bench-out}"
GPU="${GPU:-0}"
PYTHON="${PYTHON:-python3}"
EXTRA="${EXTRA:-0}"
BUDGET_S="${BUDGET_S:-480}"
HARD_S="${HARD_S:-570}"
SIZES="${SIZES:-full}"
DEVICE="${DEVICE:-cuda:$GPU}"

die() { echo "gpu_figures: $*" >&2; exit 2; }
# shellcheck source=bench_lib.sh
. "$HERE/bench_lib.sh"

# 1. Layout in which the binary's rpath resolves (bench_lib.sh), environment report.
bench_layout
bench_env

# 2. Sizes.
if [ "$SIZES" = tiny ]; then
  Q_SHAPE="--hidden 32 --heads 4 --kv-heads 2 --head-dim 8 --intermediate 48 --vocab 128"
  Q_RUN="--depths 1,2 --batch 2 --seq 16 --steps 2 --warmup 1"
  O_SHAPE="--hidden 32 --layers 2 --heads 4 --ffn 64 --vocab 128"
  O_RUN="--batch 2 --seq 16 --steps 2 --warmup 1"
  DIZO="--dizo-interval 5 --dizo-inner-iters 2 --zo-lr 1e-3"
  ZO_LR="--zo-lr 1e-3"
  T_RUN=120
else
  [ "$DEVICE" != cpu ] || die "DEVICE=cpu needs SIZES=tiny"
  # Qwen3-0.6B width (hidden 1024, 16 q / 8 kv heads, head_dim 128, SwiGLU 3072, vocab 151936).
  Q_SHAPE="--hidden 1024 --heads 16 --kv-heads 8 --head-dim 128 --intermediate 3072 --vocab 151936"
  Q_RUN="--depths 2,4,8,16,28 --batch 8 --seq 512 --steps 5 --warmup 2"
  # OPT-1.3b (hidden 2048, 24 layers, 32 heads, ffn 8192, vocab 50272).
  O_SHAPE="--hidden 2048 --layers 24 --heads 32 --ffn 8192 --vocab 50272"
  O_RUN="--batch 16 --seq 256 --steps 5 --warmup 2"
  DIZO="--dizo-interval 50 --dizo-inner-iters 10"
  ZO_LR=""
  T_RUN=240
fi

# 3. Runner: `run NAME FILE CMD...` (bench_lib.sh): stdout JSON lines to the figure's
#    file, stderr to a log, a row in runs.tsv; a failed run keeps the lines it printed.
PY_Q=("$PYTHON" "$HERE/hf_qwen3_train.py")
PY_O=("$PYTHON" "$HERE/torch_mezo_opt.py")
F1=qwen3_depth.jsonl
F2=zo_opt.jsonl
: > "$OUT/$F1"; : > "$OUT/$F2"

# Figure 1: activation memory and step time over depth. Ours sweeps both models.
Q_CFGS=("cls fp32" "lm fp32" "cls bf16")
[ "$EXTRA" = 1 ] && Q_CFGS+=("lm bf16")
for cfg in "${Q_CFGS[@]}"; do
  head=${cfg% *}; prec=${cfg#* }
  if [ "$DEVICE" = cpu ] && [ "$prec" = bf16 ]; then continue; fi
  run "qwen3-$head-$prec-qsched" "$F1" "$QB" qwen3-depth --device "$DEVICE" $Q_SHAPE $Q_RUN \
      --head "$head" --precision "$prec" --models qwen3,rev-qwen3
  run "qwen3-$head-$prec-hf" "$F1" "${PY_Q[@]}" --device "$DEVICE" $Q_SHAPE $Q_RUN --head "$head" --precision "$prec"
done

# Figure 2: ZO memory vs inference. fp32 weights (all methods), then fp16 weights as MeZO
# runs OPT (no ft: no fp32 master copy), optionally bf16 autocast.
run "opt-fp32-qsched" "$F2" "$QB" zo-opt --device "$DEVICE" $O_SHAPE $O_RUN $DIZO \
    --methods inference,mezo,dizo,ft --weights fp32 --precision fp32
run "opt-fp32-torch" "$F2" "${PY_O[@]}" --device "$DEVICE" $O_SHAPE $O_RUN $ZO_LR \
    --methods inference,mezo,ft --weights fp32 --precision fp32
run "opt-fp16w-qsched" "$F2" "$QB" zo-opt --device "$DEVICE" $O_SHAPE $O_RUN $DIZO \
    --methods inference,mezo,dizo --weights fp16 --precision fp32
run "opt-fp16w-torch" "$F2" "${PY_O[@]}" --device "$DEVICE" $O_SHAPE $O_RUN $ZO_LR \
    --methods inference,mezo --weights fp16 --precision fp32
if [ "$EXTRA" = 1 ] && [ "$DEVICE" != cpu ]; then
  run "opt-bf16-qsched" "$F2" "$QB" zo-opt --device "$DEVICE" $O_SHAPE $O_RUN $DIZO \
      --methods inference,mezo,dizo,ft --weights fp32 --precision bf16
  run "opt-bf16-torch" "$F2" "${PY_O[@]}" --device "$DEVICE" $O_SHAPE $O_RUN $ZO_LR \
      --methods inference,mezo,ft --weights fp32 --precision bf16
fi

bench_finish gpu_figures
