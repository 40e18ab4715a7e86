#!/usr/bin/env bash
# End-to-end check of the Redis backend (the plan's P2 acceptance, without docker):
# its own redis-server on a free port, two hub processes (examples/hub.rs) on it, a WebSocket
# client on hub B, messages published through hub A's HTTP endpoint.
#   phase 1: every message published through A reaches the client on B exactly once;
#   restart: redis-server is killed and started again on the same port;
#   phase 2: once both hubs report healthy, every message again arrives exactly once.
# Exits non-zero on any failure. Needs redis-server, curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-200}
REDIS_SERVER=${HUBBUS_REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}
source scripts/lib.sh

redis_port=$(free_port)
start_redis() {
    "$REDIS_SERVER" --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work" >"$work/redis.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_for "redis-server" 10 redis-cli -p "$redis_port" ping
}
start_redis

cargo build --quiet --examples
port_a=$(free_port)
port_b=$(free_port)
bus="redis://127.0.0.1:${redis_port}"
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

publish() { # publish SEQ: prints the HTTP status
    curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -d "{\"seq\":$1}" "http://127.0.0.1:${port_a}/publish/room1"
}

: >"$work/expected"
for seq in $(seq 1 "$COUNT"); do
    status=$(publish "$seq")
    [ "$status" = 202 ] || { echo "FAIL: phase 1 publish $seq got HTTP $status" >&2; exit 1; }
    echo "{\"seq\":$seq}" >>"$work/expected"
done

phase1_delivered() { [ "$(grep -c seq "$work/received")" -ge "$COUNT" ]; }
wait_for "phase 1 to reach the client on hub B" 30 phase1_delivered

echo "restarting redis-server on port $redis_port"
kill -9 "$redis_pid"
wait "$redis_pid" 2>/dev/null || true
start_redis
# Healthy means reconnected and (for B) subscribed again.
wait_for "hub A healthy again" 30 curl -fsS "http://127.0.0.1:${port_a}/healthz"
wait_for "hub B healthy again" 30 curl -fsS "http://127.0.0.1:${port_b}/healthz"

for seq in $(seq $((COUNT + 1)) $((2 * COUNT))); do
    status=$(publish "$seq")
    [ "$status" = 202 ] || { echo "FAIL: phase 2 publish $seq got HTTP $status" >&2; exit 1; }
    echo "{\"seq\":$seq}" >>"$work/expected"
done
curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -d '{"stop":true}' \
    "http://127.0.0.1:${port_a}/publish/room1"
wait "$probe" || { echo "FAIL: the probe did not finish cleanly" >&2; exit 1; }

grep -v '^ready$' "$work/received" >"$work/got" || true
received=$(wc -l <"$work/got")
duplicates=$(sort "$work/got" | uniq -d | wc -l)
missing=$(sort "$work/expected" | comm -23 - <(sort -u "$work/got") | wc -l)
unexpected=$(sort -u "$work/got" | comm -13 <(sort "$work/expected") - | wc -l)
echo "published=$((2 * COUNT)) received=$received missing=$missing duplicates=$duplicates unexpected=$unexpected"
if [ "$missing" -ne 0 ] || [ "$duplicates" -ne 0 ] || [ "$unexpected" -ne 0 ]; then
    echo "FAIL" >&2
    exit 1
fi
grep -q 'gohub_bus_redis_reconnects_total [1-9]' <(curl -fsS "http://127.0.0.1:${port_b}/metrics") \
    || { echo "FAIL: hub B did not count its reconnect" >&2; exit 1; }
echo "PASS"
