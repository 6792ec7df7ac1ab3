#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests, the conformance
# suite on every carrier available here, and the CLI tests.
#
# It installs what the tests need first. Carriers that need a broker start
# their own broker processes on free loopback ports from inside the tests;
# set COORDINATOR_TEST_* variables (see README.md) to use external brokers.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

install_tools() {
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install cargo-nextest --locked
    fi
    # Brokers for the carrier tests, from Debian's packages (the tests start
    # their own processes on free loopback ports; running services are not used).
    local missing=()
    command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    # Debian puts nats-server in /usr/sbin.
    case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac
}

install_tools

log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "doc tests"
cargo test --workspace --doc --locked --quiet

# Last, so that the run closes on nextest's summary of every test.
log "tests"
cargo nextest run --workspace --locked --no-fail-fast "$@"
