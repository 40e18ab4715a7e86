# Shared by the end-to-end scripts: a scratch directory and child processes cleaned up on exit,
# free ports, and waiting for a condition with a deadline. Source it; it sets `work` and `pids`.

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# listening PORT: succeeds when something accepts connections on 127.0.0.1:PORT.
listening() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$1"; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds or time runs out.
wait_for() {
    local what=$1 seconds=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then echo "FAIL: timed out waiting for $what" >&2; exit 1; fi
        sleep 0.1
    done
}

# --- Two hubs on one broker, a WebSocket client on hub B (the end-to-end scripts) ---

# start_hubs BUS: builds the examples, starts hub A and hub B on BUS, waits until both are
# healthy, and starts a WebSocket client subscribed to room1 on hub B, which writes what it
# receives to $work/received. Sets port_a, port_b and probe.
start_hubs() {
    cargo build --quiet --examples
    port_a=$(free_port)
    port_b=$(free_port)
    target/debug/examples/hub --listen "127.0.0.1:${port_a}" --bus "$1" --node-id hub-a >"$work/a.log" 2>&1 &
    pids+=($!)
    target/debug/examples/hub --listen "127.0.0.1:${port_b}" --bus "$1" --node-id hub-b >"$work/b.log" 2>&1 &
    pids+=($!)
    wait_hubs_healthy "" 20
    target/debug/examples/hub_probe --url "ws://127.0.0.1:${port_b}/ws" --channel room1 >"$work/received" &
    probe=$!
    pids+=("$probe")
    wait_for "the probe to subscribe" 10 grep -q ready "$work/received"
    : >"$work/expected"
}

# wait_hubs_healthy SUFFIX SECONDS: both hubs answer /healthz with 200.
wait_hubs_healthy() {
    wait_for "hub A healthy$1" "$2" curl -fsS "http://127.0.0.1:${port_a}/healthz"
    wait_for "hub B healthy$1" "$2" curl -fsS "http://127.0.0.1:${port_b}/healthz"
}

# publish JSON: publishes JSON to room1 through hub A; prints the HTTP status.
publish() {
    curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
        -d "$1" "http://127.0.0.1:${port_a}/publish/room1"
}

# publish_phase NAME FIRST LAST: publishes {"seq":FIRST..LAST}; each must be accepted (202).
publish_phase() {
    local seq status
    for seq in $(seq "$2" "$3"); do
        status=$(publish "{\"seq\":$seq}")
        [ "$status" = 202 ] || { echo "FAIL: $1 publish $seq got HTTP $status" >&2; exit 1; }
        echo "{\"seq\":$seq}" >>"$work/expected"
    done
}

# delivered_at_least N: the client on hub B received N sequence messages.
delivered_at_least() { [ "$(grep -c seq "$work/received")" -ge "$1" ]; }

# finish_and_count: stops the client and counts what it received against what was published;
# sets received, missing, duplicates and unexpected, and prints them.
finish_and_count() {
    local status
    status=$(publish '{"stop":true}')
    [ "$status" = 202 ] || { echo "FAIL: stop publish got HTTP $status" >&2; exit 1; }
    wait "$probe" || { echo "FAIL: the probe did not finish cleanly" >&2; exit 1; }
    grep seq "$work/received" >"$work/got" || true
    received=$(wc -l <"$work/got")
    duplicates=$(sort "$work/got" | uniq -d | wc -l)
    missing=$(sort "$work/expected" | comm -23 - <(sort -u "$work/got") | wc -l)
    unexpected=$(sort -u "$work/got" | comm -13 <(sort "$work/expected") - | wc -l)
    echo "published=$(wc -l <"$work/expected") received=$received missing=$missing duplicates=$duplicates unexpected=$unexpected"
}

# counted METRIC PORT: hub on PORT exposes METRIC with a value of at least 1.
counted() { grep -Eq "^$1(\{[^}]*\})? [1-9]" <(curl -fsS "http://127.0.0.1:$2/metrics"); }

# --- The JetStream crash checks (examples/jetstream_crash.rs writing $work/crash.log) ---

# acked_at_least N: the example reports at least N acknowledged publishes.
acked_at_least() {
    local acked
    acked=$(grep -o 'acked=[0-9]*' "$work/crash.log" | tail -n 1 | cut -d= -f2)
    [ -n "$acked" ] && [ "$acked" -ge "$1" ]
}

# crash_check_result: waits for the example ($crash), prints its report and exits non-zero
# unless every acknowledged message was delivered; prints OK otherwise.
crash_check_result() {
    local status=0
    wait "$crash" || status=$?
    tail -n 2 "$work/crash.log"
    if [ "$status" -ne 0 ]; then
        echo "FAIL: acknowledged messages were lost (exit status $status)" >&2
        exit "$status"
    fi
    grep -q '^published=.* lost=0 ' "$work/crash.log" || { echo "FAIL: no final report" >&2; exit 1; }
    echo "OK"
}
