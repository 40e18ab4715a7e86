#!/usr/bin/env bash
# What the JetStream consumer layout costs at 10, 100 and 1000 channels (subscribe time, idle
# CPU of server and client, end-to-end throughput), on its own nats-server with a fresh store.
# Not part of CI: it takes about a minute and its numbers depend on the machine.
#   CHANNELS="10 100 1000" COUNT=20000 scripts/jetstream_layout.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CHANNELS=${CHANNELS:-"10 100 1000"}
COUNT=${COUNT:-20000}
NATS_SERVER=${HUBBUS_TEST_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
source scripts/lib.sh

port=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$port" -js -sd "$work/store" >>"$work/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
wait_for "nats-server on port $port" 10 listening "$port"

cargo build --quiet --release --example jetstream_layout
# shellcheck disable=SC2086 # CHANNELS is a list of numbers
target/release/examples/jetstream_layout --url "nats://127.0.0.1:${port}" \
    --server-pid "$nats_pid" --count "$COUNT" $CHANNELS
