#!/usr/bin/env bash
# End-to-end check of the NATS backend (the plan's P3 "kill server -> restart -> messages
# received again"): its own nats-server on a free port, two hub processes (examples/hub.rs) on
# it, a WebSocket client on hub B, messages published through hub A's HTTP endpoint.
#   phase 1: every message published through A reaches the client on B;
#   restart: nats-server is killed (SIGKILL) and started again on the same port and store;
#   phase 2: once both hubs report healthy and a warm-up message got through, every message
#            reaches the client on B again.
# Core NATS (default) must deliver each message exactly once. With JETSTREAM=1 the hubs use
# JetStream (at-least-once): nothing may be missing; redeliveries are reported, not failures.
# Exits non-zero on any failure. Needs nats-server, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-200}
JETSTREAM=${JETSTREAM:-0}
NATS_SERVER=${HUBBUS_TEST_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
source scripts/lib.sh

nats_port=$(free_port)
start_nats() {
    "$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/store" >"$work/nats.log" 2>&1 &
    nats_pid=$!
    pids+=("$nats_pid")
    wait_for "nats-server" 10 listening "$nats_port"
}
start_nats

bus="nats://127.0.0.1:${nats_port}?reconnect_wait=100ms"
[ "$JETSTREAM" = 1 ] && bus="${bus}&jetstream=true"
start_hubs "$bus"
publish_phase "phase 1" 1 "$COUNT"
wait_for "phase 1 to reach the client on hub B" 30 delivered_at_least "$COUNT"

echo "restarting nats-server on port $nats_port"
kill -9 "$nats_pid"
wait "$nats_pid" 2>/dev/null || true
start_nats
wait_hubs_healthy " again" 30
# Healthy is the connection; the subscription's renewal on the server follows it. Publish
# warm-up messages until one arrives, then start counting.
warm=0
warmed_up() { warm=$((warm + 1)); publish "{\"warmup\":$warm}" >/dev/null; grep -q warmup "$work/received"; }
wait_for "a warm-up message through the restarted server" 30 warmed_up

publish_phase "phase 2" $((COUNT + 1)) $((2 * COUNT))
finish_and_count
if [ "$missing" -ne 0 ] || [ "$unexpected" -ne 0 ]; then
    echo "FAIL" >&2
    exit 1
fi
if [ "$JETSTREAM" != 1 ] && [ "$duplicates" -ne 0 ]; then
    echo "FAIL: core NATS delivered duplicates" >&2
    exit 1
fi
counted gohub_bus_nats_reconnects_total "$port_b" \
    || { echo "FAIL: hub B did not count its reconnect" >&2; exit 1; }
echo "PASS"
