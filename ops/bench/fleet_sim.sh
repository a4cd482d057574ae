#!/usr/bin/env bash
# Dispatch at fleet scale (BENCHMARKS.md §7): simulated agents take no-op shards through
# the real consume → store → ack path (`qbench fleet-sim`, agent::sim), first 1 agent, then
# AGENTS agents, each agent with its own AMQP and Redis connection. For each fleet size:
#
#   1. `qbench fleet-sim` connects the agents and lets them heartbeat for IDLE seconds
#      (Redis commands per heartbeat are measured over that window), then prints `ready`;
#   2. `qsched submit` publishes SHARDS shards (tiny scale; the simulated agents train
#      nothing, so what the shards ask for does not matter) while the agents consume;
#   3. the simulation stops once every shard is acked (or after TIME_LIMIT seconds) and
#      prints its report: shards/s, publish → agent latency, shards per agent, Redis
#      commands per shard.
#
#   ops/bench/fleet_sim.sh                      # AGENTS=500 SHARDS=5000
#   AGENTS=1000 SHARDS=10000 ops/bench/fleet_sim.sh
#
# Environment: AGENTS, SHARDS (a multiple of 20), TIME_LIMIT (seconds per fleet size,
# default 300), IDLE (default 15), DELAY_MS (the no-op's duration, default 0),
# HEARTBEAT_SECS (default 5, as qagent), QSCHED_AMQP_URL (default the local RabbitMQ),
# QBENCH_BIN / QSCHED_BIN (prebuilt binaries; otherwise built here, PROFILE=dev by
# default), OUT (where the JSON lines and logs go).
#
# Redis: a private redis-server on a free loopback port, started here and stopped on
# exit, because `INFO commandstats` counts every client of a server and CONFIG RESETSTAT
# would disturb anyone else using a shared one. RabbitMQ: the given broker under a unique
# prefix per fleet size, deleted afterwards. Bounded: each fleet size runs for at most
# IDLE + TIME_LIMIT seconds after its connections are open, and every wait has a limit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
AGENTS=${AGENTS:-500}
SHARDS=${SHARDS:-5000}
TIME_LIMIT=${TIME_LIMIT:-300}
IDLE=${IDLE:-15}
DELAY_MS=${DELAY_MS:-0}
HEARTBEAT_SECS=${HEARTBEAT_SECS:-5}
PROFILE=${PROFILE:-dev}
AMQP_URL=${QSCHED_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
TAG=qsfleet-$(date +%s)-$$
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/fleet_sim.XXXXXX")}
mkdir -p "$OUT/logs"

die() { echo "fleet_sim: $*" >&2; exit 1; }
[ $((SHARDS % 20)) -eq 0 ] && [ "$SHARDS" -gt 0 ] || die "SHARDS must be a positive multiple of 20 (5 models × 4 tasks × seeds)"
command -v redis-server >/dev/null || die "needs redis-server (a private one measures the commands)"
command -v redis-cli >/dev/null || die "needs redis-cli"

# Each agent holds an AMQP and a Redis socket, plus the client's own: ask for room.
want_fds=$((AGENTS * 4 + 256))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
  ulimit -n "$want_fds" 2>/dev/null || die "open-file limit $(ulimit -n) < $want_fds and cannot be raised (ulimit -n)"
fi

if [ -z "${QBENCH_BIN:-}" ] || [ -z "${QSCHED_BIN:-}" ]; then
  echo "fleet_sim: building qbench and qsched (profile $PROFILE)" >&2
  (cd "$repo" && cargo build --quiet --profile "$PROFILE" -p qsched-bench --bin qbench \
    && cargo build --quiet --profile "$PROFILE" -p cli --bin qsched) || die "build failed"
fi
dir=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
target=${CARGO_TARGET_DIR:-$repo/target}
QBENCH_BIN=${QBENCH_BIN:-$target/$dir/qbench}
QSCHED_BIN=${QSCHED_BIN:-$target/$dir/qsched}

# --- a private Redis -------------------------------------------------------------------
REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --maxclients 20000 \
  --dir "$OUT" --logfile "$OUT/logs/redis.log" --daemonize no &
REDIS_PID=$!
# URLs travel in the environment, not in argument lists (`ps` shows those).
export QSCHED_AMQP_URL="$AMQP_URL" QSCHED_REDIS_URL="$REDIS_URL"

prefixes=()
SIM_PID=
cleanup() {
  if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; fi
  local p
  for p in "${prefixes[@]}"; do
    "$QBENCH_BIN" fleet-sim --prefix "$p" --delete-only >> "$OUT/logs/cleanup.log" 2>&1 \
      || echo "fleet_sim: could not delete the queues of $p" >&2
  done
  kill "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping >/dev/null || die "the private redis-server did not start (see $OUT/logs/redis.log)"

# CPU seconds of the broker process (the one listening on the AMQP port, when it runs on
# this host) and of the simulation: where the time goes on a shared machine.
amqp_port=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).port or 5672)' "$AMQP_URL")
BROKER_PID=$(ss -ltnpH "sport = :$amqp_port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
cpu_seconds() {  # cpu_seconds PID -> utime + stime in seconds ("" when unknown)
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo ""; return; }
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat"
}

seeds=$(seq -s, 1 $((SHARDS / 20)))
models=qwen3,rev-qwen3,ft-opt,mezo-opt,dizo-opt
tasks=sst2,cola,mrpc,rte

run_fleet() {  # run_fleet AGENTS -> one JSON line on stdout
  local n=$1 prefix="$TAG-a$1" sim_out="$OUT/logs/sim-$1.jsonl" load0 load1 ready_by b0 b1 b2 s1 s2
  # This runs in a subshell (the pipe below): stop its simulation when it exits early.
  trap 'if [ -n "$SIM_PID" ]; then kill "$SIM_PID" 2>/dev/null || true; fi' EXIT
  load0=$(cut -d' ' -f1-3 /proc/loadavg)
  b0=$(cpu_seconds "$BROKER_PID")
  RUST_LOG=${RUST_LOG:-warn} "$QBENCH_BIN" fleet-sim --agents "$n" --shards "$SHARDS" --prefix "$prefix" \
    --time-limit "$TIME_LIMIT" --idle "$IDLE" --delay-ms "$DELAY_MS" --heartbeat-secs "$HEARTBEAT_SECS" \
    --command-stats > "$sim_out" 2> "$OUT/logs/sim-$n.log" &
  SIM_PID=$!
  # Connecting is bounded by the connect timeouts; the idle phase by IDLE.
  ready_by=$(( $(date +%s) + TIME_LIMIT + IDLE + 120 ))
  until grep -q '"event":"ready"' "$sim_out" 2>/dev/null; do
    kill -0 "$SIM_PID" 2>/dev/null || { tail -20 "$OUT/logs/sim-$n.log" >&2; die "qbench fleet-sim ($n agents) exited before it was ready"; }
    [ "$(date +%s)" -lt "$ready_by" ] || die "qbench fleet-sim ($n agents) not ready in time"
    sleep 0.2
  done
  b1=$(cpu_seconds "$BROKER_PID"); s1=$(cpu_seconds "$SIM_PID")
  RUST_LOG=warn "$QSCHED_BIN" submit --prefix "$prefix" --scale tiny --models "$models" --tasks "$tasks" \
    --seeds "$seeds" > "$OUT/logs/submit-$n.out" 2> "$OUT/logs/submit-$n.log" \
    || { cat "$OUT/logs/submit-$n.log" >&2; die "qsched submit failed ($n agents)"; }
  # Read just before the simulation exits: it prints its report, then closes connections.
  until grep -q '"event":"report"' "$sim_out" 2>/dev/null || ! kill -0 "$SIM_PID" 2>/dev/null; do sleep 0.05; done
  b2=$(cpu_seconds "$BROKER_PID"); s2=$(cpu_seconds "$SIM_PID")
  local rc=0
  wait "$SIM_PID" || rc=$?
  SIM_PID=
  load1=$(cut -d' ' -f1-3 /proc/loadavg)
  grep '"event":"report"' "$sim_out" > /dev/null || { tail -20 "$OUT/logs/sim-$n.log" >&2; die "no report ($n agents, exit $rc)"; }
  python3 - "$sim_out" "$load0" "$load1" "$rc" "$b0" "$b1" "$b2" "$s1" "$s2" <<'EOF'
import json, sys
path, load0, load1, rc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
b0, b1, b2, s1, s2 = (float(x) if x else None for x in sys.argv[5:10])
report = next(json.loads(l)["report"] for l in open(path) if '"event":"report"' in l)
report["loadavg_before"], report["loadavg_after"], report["exit_status"] = load0, load1, rc
# Broker CPU while connecting + idling, and from ready to the report (the submit's
# publishing included); the simulation's own CPU from ready to the report.
report["broker_cpu_seconds_connect_idle"] = b1 - b0 if None not in (b0, b1) else None
report["broker_cpu_seconds_run"] = b2 - b1 if None not in (b1, b2) else None
report["sim_cpu_seconds_run"] = s2 - s1 if None not in (s1, s2) else None
print(json.dumps(report))
EOF
}

echo "fleet_sim: tag $TAG, $SHARDS shards, 1 then $AGENTS agents, Redis on port $REDIS_PORT, results in $OUT" >&2
for n in 1 "$AGENTS"; do
  # Noted here, not in run_fleet: that runs in a subshell (the pipe), whose variables the
  # clean-up on exit would not see.
  prefixes+=("$TAG-a$n")
  run_fleet "$n" | tee -a "$OUT/fleet_sim.jsonl" >&2
done

python3 - "$OUT/fleet_sim.jsonl" <<'EOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| agents | shards acked | shards/s | queue→start p50 / p99 ms | start→ack p50 / p99 ms "
      "| shards per agent min / median / max | Jain | Redis cmds per shard | per heartbeat | load avg before → after |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    q, s, f, red = r["queue_to_start_ms"], r["start_to_ack_ms"], r["fairness"], r.get("redis") or {}
    flag = " (timed out)" if r["timed_out"] else ""
    print(f"| {r['agents']} | {r['shards_acked']}/{r['shards_expected']}{flag} | {r['shards_per_second']:,.0f} "
          f"| {q['p50']:.0f} / {q['p99']:.0f} | {s['p50']:.1f} / {s['p99']:.1f} "
          f"| {f['min']} / {f['median']:g} / {f['max']} | {f['jain']:.3f} "
          f"| {red.get('per_shard', 0):.2f} | {red.get('per_heartbeat', 0):.2f} "
          f"| {r['loadavg_before']} → {r['loadavg_after']} |")
if len(rows) == 2 and rows[0]["shards_per_second"] > 0:
    print()
    print(f"{rows[1]['agents']} agents ÷ 1 agent, shards/s: {rows[1]['shards_per_second'] / rows[0]['shards_per_second']:.2f}")
EOF
