#!/usr/bin/env bash
# Publish throughput of `qsched submit` against two peers on the same broker, in one
# invocation (BENCHMARKS.md §6):
#
#   raw-lapin  shared/examples/raw_publish.rs: one lapin channel, publisher confirms (all
#              in flight, awaited in order), persistent mandatory messages with the mean
#              body size of qsched's shard messages and their properties and header sizes,
#              into a quorum queue declared like qsched's; nothing else. Also run with
#              qsched's pipe shape (8 channels, 256 unconfirmed each) as a second row.
#   qsched     `qsched submit` of N shards (5 models × 4 tasks × N/20 seeds, tiny scale),
#              timed from process start to exit: spec, connections, expansion, encoding,
#              declare, the run record in Redis, publishing with confirms, marking the
#              shards queued.
#   celery     ops/bench/celery_publish.py: `apply_async` with
#              broker_transport_options={'confirm_publish': True}, CELERY_N messages.
#
#   ops/bench/publish_throughput.sh            # N=20000 REPEATS=3 CELERY_N=2000
#   N=40000 REPEATS=5 ops/bench/publish_throughput.sh
#
# Environment: N (a multiple of 20), REPEATS, CELERY_N, QSCHED_AMQP_URL, QSCHED_REDIS_URL,
# QSCHED_BIN / RAW_BIN (prebuilt binaries; otherwise both are built here, release),
# BASELINE_BIN (another qsched binary, e.g. an older build, run in every repeat as a
# fourth row), BODY_BYTES (the raw and Celery body size; default: the mean of qsched's
# messages, which the warm-up submit reports), CELERY_VENV (a venv with celery; made under
# target/ when missing), SKIP_CELERY=1, OUT (where the JSON lines and logs go).
#
# Names are unique under one tag (qsbench-<time>-<pid>). qsched runs share one prefix whose
# topology a warm-up submit declares, as on a fleet where the queues already exist: after
# each run its queue is purged and its Redis keys deleted. Each raw lapin and Celery run
# declares a fresh queue and deletes it. Everything left is deleted on exit. Each repeat
# runs raw lapin, qsched (and the baseline) and Celery back to back. It prints a table of
# medians; the ratio is each rate over raw lapin's publish-loop rate (qsched's figure
# includes its process start and everything above; raw lapin's is first publish to last
# confirm, its connect and declare are in the second row).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
N=${N:-20000}
REPEATS=${REPEATS:-3}
CELERY_N=${CELERY_N:-2000}
AMQP_URL=${QSCHED_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
REDIS_URL=${QSCHED_REDIS_URL:-redis://127.0.0.1:6379}
TAG=qsbench-$(date +%s)-$$
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/publish_throughput.XXXXXX")}
mkdir -p "$OUT/logs"
# URLs travel in the environment, not in argument lists (`ps` shows those).
export QSCHED_AMQP_URL="$AMQP_URL" QSCHED_REDIS_URL="$REDIS_URL" AMQP_ADDR="$AMQP_URL"

die() { echo "publish_throughput: $*" >&2; exit 1; }
[ $((N % 20)) -eq 0 ] && [ "$N" -gt 0 ] || die "N must be a positive multiple of 20 (5 models × 4 tasks × seeds)"
command -v redis-cli >/dev/null || die "needs redis-cli (to delete its Redis keys)"

if [ -z "${QSCHED_BIN:-}" ] || [ -z "${RAW_BIN:-}" ]; then
  echo "publish_throughput: building qsched (without --local) and the raw lapin peer (release)" >&2
  (cd "$repo" && cargo build --release --quiet -p cli --no-default-features --bin qsched \
    && cargo build --release --quiet -p shared --example raw_publish) || die "build failed"
fi
QSCHED_BIN=${QSCHED_BIN:-$repo/target/release/qsched}
RAW_BIN=${RAW_BIN:-$repo/target/release/examples/raw_publish}

if [ "${SKIP_CELERY:-0}" != 1 ]; then
  CELERY_VENV=${CELERY_VENV:-$repo/target/bench-venv}
  if ! "$CELERY_VENV/bin/python" -c 'import celery' 2>/dev/null; then
    echo "publish_throughput: installing celery into $CELERY_VENV" >&2
    python3 -m venv "$CELERY_VENV" && "$CELERY_VENV/bin/pip" install --quiet 'celery==5.7.0' \
      || die "cannot install celery (SKIP_CELERY=1 runs without it)"
  fi
fi

# --- clean-up -------------------------------------------------------------------------
QP="$TAG-qsched"   # the prefix of every qsched run
peer_prefixes=()   # raw lapin and Celery runs: <p>.q, <p>.x, <p>.dlx
forget_runs() {    # the Redis keys of qsched's runs
  redis-cli -u "$REDIS_URL" --scan --pattern "$QP:*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
}
cleanup() {
  "$RAW_BIN" --delete-queue "$QP.shards.cpu" --delete-queue "$QP.shards.cuda" --delete-queue "$QP.dead" \
    --delete-queue "$QP.dead.notices" --delete-exchange "$QP.shards" --delete-exchange "$QP.dlx" \
    >> "$OUT/logs/cleanup.log" 2>&1 || echo "publish_throughput: could not delete the queues of $QP" >&2
  forget_runs
  local p
  for p in "${peer_prefixes[@]}"; do
    "$RAW_BIN" --delete-queue "$p.q" --delete-exchange "$p.x" --delete-exchange "$p.dlx" \
      >> "$OUT/logs/cleanup.log" 2>&1 || echo "publish_throughput: could not delete the queue of $p" >&2
  done
}
trap cleanup EXIT

# --- runs -----------------------------------------------------------------------------
seeds=$(seq -s, 1 $((N / 20)))
models=qwen3,rev-qwen3,ft-opt,mezo-opt,dizo-opt
tasks=sst2,cola,mrpc,rte

run_qsched() {  # run_qsched BIN NAME PEER -> one JSON line on stdout
  local bin=$1 name=$2 peer=$3 t0 t1 log="$OUT/logs/$2.log"
  t0=$(date +%s.%N)
  RUST_LOG=warn,scheduler=info "$bin" submit --prefix "$QP" \
    --scale tiny --models "$models" --tasks "$tasks" --seeds "$seeds" > "$OUT/logs/$name.out" 2> "$log" \
    || { cat "$log" >&2; die "qsched submit failed ($name)"; }
  t1=$(date +%s.%N)
  # Empty the queue and forget the run, keep the topology (as between two submits).
  "$RAW_BIN" --purge-queue "$QP.shards.cpu" >> "$OUT/logs/cleanup.log" 2>&1 || die "cannot purge $QP.shards.cpu"
  forget_runs
  python3 - "$t0" "$t1" "$N" "$log" "$peer" <<'EOF'
import json, re, sys
t0, t1, n, log, peer = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
# The scheduler's `published` event carries the phase timings (older builds: none).
lines = [l for l in open(log).read().splitlines() if re.search(r"\bpublished\b", l)]
fields = dict(re.findall(r"(\w+)=([0-9.]+)", lines[-1])) if lines else {}
wall = t1 - t0
rec = {"peer": peer, "messages": n, "wall_seconds": wall, "messages_per_second": n / wall}
rec.update({k: float(v) for k, v in fields.items() if k.endswith("_ms") or k == "body_bytes"})
if "body_bytes" in rec:
    rec["body_bytes_mean"] = rec["body_bytes"] / n
print(json.dumps(rec))
EOF
}

echo "publish_throughput: tag $TAG, N=$N, repeats $REPEATS, results in $OUT" >&2
# A warm-up submit (not counted): declares qsched's topology (a first submit under a new
# prefix creates its quorum queues), warms the page cache and gives the mean message size.
warm=$(run_qsched "$QSCHED_BIN" warmup qsched)
echo "$warm" > "$OUT/qsched-warmup.json"
SIZE=${BODY_BYTES:-$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1]).get("body_bytes_mean", 0)))' "$warm")}
[ "$SIZE" -gt 0 ] || die "the warm-up submit reported no message size (an older build?): set BODY_BYTES"
echo "publish_throughput: message body $SIZE bytes" >&2

for i in $(seq 1 "$REPEATS"); do
  peer_prefixes+=("$TAG-raw-$i")
  "$RAW_BIN" --prefix "$TAG-raw-$i" --count "$N" --size "$SIZE" 2>> "$OUT/logs/raw.log" | tee -a "$OUT/raw.jsonl" >&2
  # The same with qsched's pipe shape: 8 channels, each with 256 unconfirmed at most.
  peer_prefixes+=("$TAG-raw8-$i")
  "$RAW_BIN" --prefix "$TAG-raw8-$i" --count "$N" --size "$SIZE" --channels 8 --window 256 \
    2>> "$OUT/logs/raw.log" | tee -a "$OUT/raw8.jsonl" >&2
  run_qsched "$QSCHED_BIN" "qsched-$i" qsched | tee -a "$OUT/qsched.jsonl" >&2
  if [ -n "${BASELINE_BIN:-}" ]; then
    run_qsched "$BASELINE_BIN" "baseline-$i" baseline | tee -a "$OUT/baseline.jsonl" >&2
  fi
  if [ "${SKIP_CELERY:-0}" != 1 ]; then
    peer_prefixes+=("$TAG-celery-$i")
    "$CELERY_VENV/bin/python" "$repo/ops/bench/celery_publish.py" --prefix "$TAG-celery-$i" \
      --count "$CELERY_N" --size "$SIZE" 2>> "$OUT/logs/celery.log" | tee -a "$OUT/celery.jsonl" >&2
  fi
done

python3 - "$OUT" "$SIZE" <<'EOF' | tee "$OUT/table.md"
import json, os, statistics, sys
out, size = sys.argv[1], int(sys.argv[2])
def load(name):
    path = os.path.join(out, name)
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []
raw = load("raw.jsonl")
med = statistics.median
raw_rate = med(r["messages_per_second"] for r in raw)
rows = [
    ("raw lapin, publish loop", raw, lambda r: r["messages_per_second"]),
    ("raw lapin, process (with connect + declare)", raw, lambda r: r["messages"] / r["wall_seconds"]),
    ("raw lapin, 8 channels × 256 unconfirmed, publish loop", load("raw8.jsonl"), lambda r: r["messages_per_second"]),
    ("qsched submit, process start to exit", load("qsched.jsonl"), lambda r: r["messages_per_second"]),
    ("baseline qsched submit, process start to exit", load("baseline.jsonl"), lambda r: r["messages_per_second"]),
    ("celery apply_async, confirm_publish", load("celery.jsonl"), lambda r: r["messages_per_second"]),
]
print("| peer | messages | body bytes | msgs/s, median | each repeat | ÷ raw lapin |")
print("|---|---|---|---|---|---|")
for name, rs, rate in rows:
    if not rs:
        continue
    rates = [rate(r) for r in rs]
    body = rs[0].get("body_bytes_mean", rs[0].get("body_bytes", size))
    print(f"| {name} | {rs[0]['messages']} | {body:.0f} | {med(rates):,.0f} | "
          f"{', '.join(f'{x:,.0f}' for x in rates)} | {med(rates) / raw_rate:.2f} |")
keys = ["expand", "encode", "declare", "messages", "record", "publish", "mark", "last_mark", "total"]
for label, rs in (("qsched", load("qsched.jsonl")), ("baseline", load("baseline.jsonl"))):
    have = [k for k in keys if rs and all(f"{k}_ms" in r for r in rs)]
    if not have:
        continue
    print()
    print(f"{label} submit, median ms per phase (expand + encode run beside declare, messages "
          "beside record, mark beside publish):")
    print("| " + " | ".join(have) + " | process wall |")
    print("|" + "---|" * (len(have) + 1))
    print("| " + " | ".join(f"{med(r[k + '_ms'] for r in rs):.0f}" for k in have)
          + f" | {med(r['wall_seconds'] for r in rs) * 1e3:.0f} |")
EOF
