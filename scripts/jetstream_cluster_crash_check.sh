#!/usr/bin/env bash
# Crash check of the JetStream backend on a cluster: no acknowledged message is lost when a
# server of a three-server cluster is killed, whichever it is.
#   three nats-server -js processes in one cluster (routes on free ports), each with its own
#   store; examples/jetstream_crash.rs with a stream of three replicas publishes COUNT messages
#   (default 20000) with acks, retrying failed publishes with the same id, while a durable
#   subscriber acks what it receives; midway a randomly chosen server (SERVER=0|1|2 picks one)
#   is killed with SIGKILL, and started again on the same ports and store a few seconds later;
#   the example fails if any acknowledged message was never delivered.
# Exits non-zero on any failure. Needs nats-server (2.9 or newer) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-20000}
NATS_SERVER=${HUBBUS_TEST_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
source scripts/lib.sh

ports=() routes=() nats_pids=()
for i in 0 1 2; do
    ports+=("$(free_port)")
    routes+=("$(free_port)")
done
all_routes="nats://127.0.0.1:${routes[0]},nats://127.0.0.1:${routes[1]},nats://127.0.0.1:${routes[2]}"
start_nats() { # start_nats I: server sI on its ports and store
    local i=$1
    mkdir -p "$work/store$i"
    "$NATS_SERVER" -a 127.0.0.1 -p "${ports[$i]}" -n "s$i" -js -sd "$work/store$i" \
        --cluster_name hubbus --cluster "nats://127.0.0.1:${routes[$i]}" --routes "$all_routes" \
        >>"$work/nats$i.log" 2>&1 &
    nats_pids[$i]=$!
    pids+=("${nats_pids[$i]}")
    wait_for "nats-server s$i on port ${ports[$i]}" 10 listening "${ports[$i]}"
}
for i in 0 1 2; do start_nats "$i"; done

cargo build --quiet --example jetstream_crash
url="nats://127.0.0.1:${ports[0]},nats://127.0.0.1:${ports[1]},nats://127.0.0.1:${ports[2]}"
target/debug/examples/jetstream_crash --url "$url" --replicas 3 --count "$COUNT" \
    >"$work/crash.log" 2>&1 &
crash=$!
pids+=("$crash")

wait_for "half of the publishes to be acknowledged" 300 acked_at_least $((COUNT / 2))

victim=${SERVER:-$((RANDOM % 3))}
echo "killing s$victim (SIGKILL) at: $(grep -o 'acked=[0-9]* delivered=[0-9]*' "$work/crash.log" | tail -n 1)"
kill -9 "${nats_pids[$victim]}"
wait "${nats_pids[$victim]}" 2>/dev/null || true
sleep 3 # the server stays down a while, so the cluster runs without it (a fault, not a wait)
start_nats "$victim"
echo "s$victim restarted with the same store"

crash_check_result
