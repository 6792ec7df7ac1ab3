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
    # Broker packages for the carrier tests (NATS, Redis) are added here by
    # their issues; the foundation's tests need no broker.
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
