#!/usr/bin/env bash
# The test command: services up, libtorch in place, binaries built, whole suite run.
# Usage: ops/test.sh [extra cargo test args]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

./ops/services.sh
./ops/bootstrap-libtorch.sh
export QSCHED_DATA_DIR=${QSCHED_DATA_DIR:-$(cd "$repo/../shared/data" 2>/dev/null && pwd || true)}
if [ -z "$QSCHED_DATA_DIR" ] || [ ! -d "$QSCHED_DATA_DIR/glue" ]; then
  echo "test: no data directory; set QSCHED_DATA_DIR (expected ../shared/data beside the repository)" >&2
  exit 1
fi
# Formatting and lints are part of the suite: a warning fails it.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start real qagent / qsched processes: build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
