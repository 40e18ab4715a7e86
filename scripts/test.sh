#!/usr/bin/env bash
# The README's test command: makes sure the programs the tests start are installed, then runs
# `cargo test --workspace --all-features` (extra arguments go to cargo test). CI (.ci/run) runs
# this same script, so the two cannot drift.
#
#   scripts/test.sh                  # install what is missing (Debian/Ubuntu), then test
#   scripts/test.sh --install-only   # only install what is missing
#   scripts/test.sh -- --nocapture   # arguments for the test binaries, as with cargo test
#
# What the tests start: redis-server and redis-cli (a Redis Cluster is made with
# `redis-cli --cluster create`), nats-server, chromium with chromedriver (the example hub's
# page in a real browser), openssl (certificates for the TLS tests). A missing one is installed
# with apt-get when this runs as root or with sudo; otherwise the script says in one line what
# to install and stops before compiling anything.
set -euo pipefail
cd "$(dirname "$0")/.."

# command, Debian package
needs=(
    "redis-server redis-server"
    "redis-cli redis-tools"
    "nats-server nats-server"
    "chromium chromium"
    "chromedriver chromium-driver"
    "openssl openssl"
)

# True when the program is on PATH or where Debian puts servers (/usr/sbin is not on every PATH).
have() {
    command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}

missing=()
for need in "${needs[@]}"; do
    read -r program package <<<"$need"
    have "$program" || missing+=("$package")
done

if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null; }; then
        as_root=()
        [ "$(id -u)" -eq 0 ] || as_root=(sudo)
        echo "installing what the tests need: ${missing[*]}" >&2
        "${as_root[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}"
    elif [ "${HUBBUS_TEST_SKIP_REAL_SERVERS:-}" = "1" ]; then
        echo "not installed: ${missing[*]}; HUBBUS_TEST_SKIP_REAL_SERVERS=1, so the tests that need them skip" >&2
    else
        echo "the tests need these packages (Debian names): ${missing[*]}; install them, or set HUBBUS_TEST_SKIP_REAL_SERVERS=1 to skip the tests that use them" >&2
        exit 1
    fi
fi

if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi
exec cargo test --workspace --all-features "$@"
