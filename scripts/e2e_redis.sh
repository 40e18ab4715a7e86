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
REDIS_SERVER=${HUBBUS_TEST_REDIS_SERVER:-$(command -v redis-server || echo /usr/bin/redis-server)}
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

start_hubs "redis://127.0.0.1:${redis_port}"
publish_phase "phase 1" 1 "$COUNT"
wait_for "phase 1 to reach the client on hub B" 30 delivered_at_least "$COUNT"

echo "restarting redis-server on port $redis_port"
kill -9 "$redis_pid"
wait "$redis_pid" 2>/dev/null || true
start_redis
# Healthy means reconnected and (for B) subscribed again.
wait_hubs_healthy " again" 30

publish_phase "phase 2" $((COUNT + 1)) $((2 * COUNT))
finish_and_count
if [ "$missing" -ne 0 ] || [ "$duplicates" -ne 0 ] || [ "$unexpected" -ne 0 ]; then
    echo "FAIL" >&2
    exit 1
fi
counted gohub_bus_redis_reconnects_total "$port_b" \
    || { echo "FAIL: hub B did not count its reconnect" >&2; exit 1; }
echo "PASS"
