#!/usr/bin/env bash
# Crash check of the JetStream backend (the plan's P4 acceptance): no acknowledged message is
# lost when the server is killed.
#   its own nats-server -js on a free port with a fresh store directory;
#   examples/jetstream_crash.rs publishes COUNT messages (default 100000) with acks, retrying
#   failed publishes with the same id, while a durable subscriber acks what it receives;
#   midway the server is killed with SIGKILL and started again on the same port and store;
#   the example prints published=N acked=N delivered=N lost=N duplicated=N and fails if any
#   acknowledged message was never delivered.
# Exits non-zero on any failure. Needs nats-server (2.9 or newer) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-100000}
NATS_SERVER=${HUBBUS_TEST_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
source scripts/lib.sh

port=$(free_port)
start_nats() {
    "$NATS_SERVER" -a 127.0.0.1 -p "$port" -js -sd "$work/store" >>"$work/nats.log" 2>&1 &
    nats_pid=$!
    pids+=("$nats_pid")
    wait_for "nats-server on port $port" 10 listening "$port"
}
start_nats

cargo build --quiet --example jetstream_crash
target/debug/examples/jetstream_crash --url "nats://127.0.0.1:${port}" --count "$COUNT" \
    >"$work/crash.log" 2>&1 &
crash=$!
pids+=("$crash")

wait_for "half of the publishes to be acknowledged" 300 acked_at_least $((COUNT / 2))

echo "killing nats-server (SIGKILL) at: $(grep -o 'acked=[0-9]* delivered=[0-9]*' "$work/crash.log" | tail -n 1)"
kill -9 "$nats_pid"
wait "$nats_pid" 2>/dev/null || true
start_nats
echo "nats-server restarted on port $port with the same store"

crash_check_result
