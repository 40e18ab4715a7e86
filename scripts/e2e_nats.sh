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
NATS_SERVER=${HUBBUS_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
source scripts/lib.sh

nats_port=$(free_port)
start_nats() {
    "$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/store" >"$work/nats.log" 2>&1 &
    nats_pid=$!
    pids+=("$nats_pid")
    wait_for "nats-server" 10 listening "$nats_port"
}
start_nats

cargo build --quiet --examples
port_a=$(free_port)
port_b=$(free_port)
bus="nats://127.0.0.1:${nats_port}?reconnect_wait=100ms"
[ "$JETSTREAM" = 1 ] && bus="${bus}&jetstream=true"
target/debug/examples/hub --listen "127.0.0.1:${port_a}" --bus "$bus" --node-id hub-a >"$work/a.log" 2>&1 &
pids+=($!)
target/debug/examples/hub --listen "127.0.0.1:${port_b}" --bus "$bus" --node-id hub-b >"$work/b.log" 2>&1 &
pids+=($!)
wait_for "hub A healthy" 20 curl -fsS "http://127.0.0.1:${port_a}/healthz"
wait_for "hub B healthy" 20 curl -fsS "http://127.0.0.1:${port_b}/healthz"

target/debug/examples/hub_probe --url "ws://127.0.0.1:${port_b}/ws" --channel room1 >"$work/received" &
probe=$!
pids+=("$probe")
wait_for "the probe to subscribe" 10 grep -q ready "$work/received"

publish() { # publish JSON: prints the HTTP status
    curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -d "$1" "http://127.0.0.1:${port_a}/publish/room1"
}

: >"$work/expected"
for seq in $(seq 1 "$COUNT"); do
    status=$(publish "{\"seq\":$seq}")
    [ "$status" = 202 ] || { echo "FAIL: phase 1 publish $seq got HTTP $status" >&2; exit 1; }
    echo "{\"seq\":$seq}" >>"$work/expected"
done
phase1_delivered() { [ "$(grep -c seq "$work/received")" -ge "$COUNT" ]; }
wait_for "phase 1 to reach the client on hub B" 30 phase1_delivered

echo "restarting nats-server on port $nats_port"
kill -9 "$nats_pid"
wait "$nats_pid" 2>/dev/null || true
start_nats
wait_for "hub A healthy again" 30 curl -fsS "http://127.0.0.1:${port_a}/healthz"
wait_for "hub B healthy again" 30 curl -fsS "http://127.0.0.1:${port_b}/healthz"
# Healthy is the connection; the subscription's renewal on the server follows it. Publish
# warm-up messages until one arrives, then start counting.
warm=0
warmed_up() { warm=$((warm + 1)); publish "{\"warmup\":$warm}" >/dev/null; grep -q warmup "$work/received"; }
wait_for "a warm-up message through the restarted server" 30 warmed_up

for seq in $(seq $((COUNT + 1)) $((2 * COUNT))); do
    status=$(publish "{\"seq\":$seq}")
    [ "$status" = 202 ] || { echo "FAIL: phase 2 publish $seq got HTTP $status" >&2; exit 1; }
    echo "{\"seq\":$seq}" >>"$work/expected"
done
status=$(publish '{"stop":true}')
[ "$status" = 202 ] || { echo "FAIL: stop publish got HTTP $status" >&2; exit 1; }
wait "$probe" || { echo "FAIL: the probe did not finish cleanly" >&2; exit 1; }

grep seq "$work/received" >"$work/got" || true
received=$(wc -l <"$work/got")
duplicates=$(sort "$work/got" | uniq -d | wc -l)
missing=$(sort "$work/expected" | comm -23 - <(sort -u "$work/got") | wc -l)
unexpected=$(sort -u "$work/got" | comm -13 <(sort "$work/expected") - | wc -l)
echo "published=$((2 * COUNT)) received=$received missing=$missing duplicates=$duplicates unexpected=$unexpected"
if [ "$missing" -ne 0 ] || [ "$unexpected" -ne 0 ]; then
    echo "FAIL" >&2
    exit 1
fi
if [ "$JETSTREAM" != 1 ] && [ "$duplicates" -ne 0 ]; then
    echo "FAIL: core NATS delivered duplicates" >&2
    exit 1
fi
grep -q 'gohub_bus_nats_reconnects_total [1-9]' <(curl -fsS "http://127.0.0.1:${port_b}/metrics") \
    || { echo "FAIL: hub B did not count its reconnect" >&2; exit 1; }
echo "PASS"
