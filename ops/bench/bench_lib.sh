# Shared by the GPU benchmark scripts in this folder (gpu_figures.sh, ckpt_vs_rev.sh);
# sourced, not run. It owns the three things every script needs:
#
#   bench_layout   a layout in which the prebuilt qbench finds libtorch through its rpath
#                  ($ORIGIN/../libtorch/lib): <work>/bin/qbench + <work>/libtorch -> the
#                  host's torch/ (or $LIBTORCH_DIR). Sets QB (the binary to run),
#                  TORCH_DIR and WORK (removed on exit).
#   bench_env      env.txt (versions), ldd.txt, nvidia-smi*.txt in $OUT.
#   run NAME FILE CMD...
#                  runs one command under the time budget: stdout JSON lines appended to
#                  $OUT/FILE, stderr to $OUT/logs/NAME.log, a row in $OUT/runs.tsv. A run
#                  that would start after BUDGET_S is skipped (logged); none may run past
#                  HARD_S (each run's timeout shrinks); FAILED counts non-zero exits.
#
# The caller sets QBENCH, OUT, PYTHON, DEVICE, BUDGET_S, HARD_S, T_RUN and defines
# die(); bench_layout records START.

bench_layout() {
  [ -n "$QBENCH" ] || die "set QBENCH=/path/to/qbench (or pass it as the first argument)"
  [ -f "$QBENCH" ] || die "no qbench binary at $QBENCH"
  mkdir -p "$OUT/logs" || die "cannot create $OUT"
  START=$(date +%s)
  # The host's PyTorch unless LIBTORCH_DIR names a libtorch (a folder with lib/ and
  # include/, e.g. the build's target/libtorch on a host without Python torch).
  if [ -n "${LIBTORCH_DIR:-}" ]; then
    TORCH_DIR="$LIBTORCH_DIR"
  else
    TORCH_DIR="$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))')" \
      || die "$PYTHON cannot import torch (set LIBTORCH_DIR to a libtorch folder to run qbench without it)"
  fi
  [ -d "$TORCH_DIR/lib" ] || die "no lib/ in $TORCH_DIR"
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  mkdir -p "$WORK/bin"
  cp "$QBENCH" "$WORK/bin/qbench" && chmod +x "$WORK/bin/qbench"   # a copy: $ORIGIN follows the real file
  ln -s "$(cd "$TORCH_DIR" && pwd)" "$WORK/libtorch"
  # <work>/nvidia -> site-packages/nvidia keeps torch/lib's own rpath
  # ($ORIGIN/../../nvidia/...) valid through the link; LD_LIBRARY_PATH puts the real
  # torch/lib first anyway. libtorch_cuda.so is named explicitly (no search).
  local site
  site="$(dirname "$TORCH_DIR")"
  [ -d "$site/nvidia" ] && ln -s "$site/nvidia" "$WORK/nvidia"
  export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  [ -f "$TORCH_DIR/lib/libtorch_cuda.so" ] && export QSCHED_LIBTORCH_CUDA="$TORCH_DIR/lib/libtorch_cuda.so"
  # CPU runs measure the resident set: make large frees leave it (glibc keeps brk memory).
  [ "$DEVICE" = cpu ] && export MALLOC_MMAP_THRESHOLD_=65536
  QB="$WORK/bin/qbench"
  ldd "$QB" > "$OUT/ldd.txt" 2>&1
  if grep -q "not found" "$OUT/ldd.txt"; then cat "$OUT/ldd.txt" >&2; die "qbench has unresolved libraries (see ldd.txt)"; fi
  printf 'name\texit\tseconds\tcommand\n' > "$OUT/runs.tsv"
  FAILED=0
}

bench_env() {
  {
    echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"; echo "device: $DEVICE"; echo "sizes: ${SIZES:-}"
    echo "qbench: $QBENCH sha256 $(sha256sum "$QBENCH" | cut -d' ' -f1)"
    echo "torch dir: $TORCH_DIR"
    "$PYTHON" -c 'import sys,torch,transformers;print("python",sys.version.split()[0]);print("torch",torch.__version__,"cuda",torch.version.cuda);print("transformers",transformers.__version__);print("tf32 matmul",torch.backends.cuda.matmul.allow_tf32)'
    echo "glibc: $(ldd --version 2>&1 | head -1)"
  } > "$OUT/env.txt" 2>&1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv \
      > "$OUT/nvidia-smi-query.csv" 2>&1
  fi
}

run() {  # run NAME FILE CMD...
  local name="$1" file="$2"; shift 2
  local now=$(( $(date +%s) - START ))
  if [ "$now" -ge "$BUDGET_S" ]; then
    echo "bench: skipping $name (${now}s elapsed >= BUDGET_S=$BUDGET_S)" >&2
    printf '%s\tskipped\t0\t%s\n' "$name" "$*" >> "$OUT/runs.tsv"
    return
  fi
  local limit=$(( HARD_S - now < T_RUN ? HARD_S - now : T_RUN ))
  echo "bench: [$now s] $name (timeout ${limit}s)" >&2
  local t0
  t0=$(date +%s)
  timeout "$limit" "$@" >> "$OUT/$file" 2> "$OUT/logs/$name.log"
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$*" >> "$OUT/runs.tsv"
  if [ "$rc" -ne 0 ]; then FAILED=$((FAILED + 1)); echo "bench: $name exited $rc (see logs/$name.log)" >&2; fi
}

bench_finish() {  # bench_finish SCRIPT_NAME
  command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi-after.txt" 2>&1
  local total=$(( $(date +%s) - START ))
  echo "total_seconds: $total" >> "$OUT/env.txt"
  echo "$1: done in ${total}s, $FAILED failed run(s); results in $OUT" >&2
  column -t -s $'\t' "$OUT/runs.tsv" >&2 2>/dev/null || cat "$OUT/runs.tsv" >&2
  [ "$FAILED" -eq 0 ]
}
