#!/usr/bin/env bash
# The long chaos suite (tests/chaos_long.rs): hundreds of shards on a RabbitMQ node and a
# Redis server of its own (loopback, free ports; the machine's services are not touched)
# while agents and workers are killed, the broker is stopped and killed (once during a
# submit), Redis is killed with AOF on and kept down for a minute with idle agents, and
# about a thousand malformed messages arrive. Prints a JSON summary and writes it to
# $QSCHED_CHAOS_OUT (default .out/chaos.json); exits non-zero if anything was lost,
# duplicated, wrongly dead-lettered, crashed, touched outside the roots or resumed
# differently from an uninterrupted run.
#
#   ops/chaos.sh                               # 200 shards, 20 kills, 1000 messages, 60 s outage
#   QSCHED_CHAOS_SHARDS=20 QSCHED_CHAOS_KILLS=4 QSCHED_CHAOS_FUZZ=100 QSCHED_CHAOS_OUTAGE_S=10 ops/chaos.sh
#
# Needs rabbitmq-server (Debian's package; QSCHED_RABBITMQ_SERVER to point elsewhere) and
# redis-server (QSCHED_REDIS_SERVER). About 25-35 minutes on 2 cores at the defaults.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
./ops/bootstrap-libtorch.sh
export QSCHED_DATA_DIR=${QSCHED_DATA_DIR:-$(cd "$repo/../shared/data" && pwd)}
export QSCHED_CHAOS_OUT=${QSCHED_CHAOS_OUT:-$repo/.out/chaos.json}
mkdir -p "$(dirname "$QSCHED_CHAOS_OUT")"
cargo build --workspace --bins
exec cargo test -p qsched-tests --test integration -- --ignored --exact --nocapture chaos_long::long_suite
