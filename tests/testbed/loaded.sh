#!/usr/bin/env bash
# Runs the integration tests with every CPU busy, the way a loaded CI machine runs them: one busy
# loop per core (normal priority) for the whole run, and 6 test threads. A test that only passes
# on an idle machine fails here. Needs root and the bed (started here if it is not up).
#
# usage: tests/testbed/loaded.sh [RUNS]     RUNS runs in a row (default 2); each must pass.
# env:   BUSY=N busy loops (default: nproc), TEST_THREADS (default 6).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."
runs=${1:-2}
busy=${BUSY:-$(nproc)}
threads=${TEST_THREADS:-6}

tests/testbed/up.sh
# Built before the load starts, as ./test does: the tests measure the sidecar, not the compiler
# (the image test would otherwise build the static release binary under the busy loops).
cargo build --locked --tests >/dev/null
tests/testbed/image.sh --binary-only

pids=()
stop_load() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap stop_load EXIT
for _ in $(seq 1 "$busy"); do
  # Bounded whatever happens to this script: each loop ends by itself after 3 hours.
  timeout 3h sh -c 'while :; do :; done' &
  pids+=($!)
done
echo "[loaded] $busy busy loops on $(nproc) cores; $runs run(s) of the integration tests with $threads threads"

for run in $(seq 1 "$runs"); do
  start=$SECONDS
  echo "[loaded] run $run: parallel tests"
  cargo test --locked --test e2e -- --test-threads "$threads" --skip disruptive_
  echo "[loaded] run $run: disruptive tests, one at a time"
  cargo test --locked --test e2e disruptive_ -- --test-threads 1
  echo "[loaded] run $run passed in $((SECONDS - start)) s"
done
