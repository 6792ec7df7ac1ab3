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
    command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
    # rdkafka builds librdkafka from source with its own configure script
    # (make and a C compiler; curl left out): only OpenSSL's headers, for TLS.
    [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
    # The network fault suite (root only: it makes network namespaces).
    if [ "$(id -u)" -eq 0 ]; then
        command -v ip >/dev/null 2>&1 || missing+=(iproute2)
        command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
    # The Kafka-API broker (Tansu) and the Zenoh router, built once from
    # crates.io (about 11 and 6 minutes), then reused from ~/.cargo/bin.
    case ":$PATH:" in *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;; *) export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;; esac
    if ! command -v tansu >/dev/null 2>&1; then
        log "installing tansu (a Kafka-API broker; first time only)"
        env -u CARGO_TARGET_DIR cargo install tansu --version 0.6.0 --locked --features dynostore
    fi
    if ! command -v zenohd >/dev/null 2>&1; then
        log "installing zenohd (the Zenoh router; first time only)"
        env -u CARGO_TARGET_DIR cargo install zenohd --version 1.10.2 --locked
    fi
    # Debian puts nats-server in /usr/sbin.
    case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac
}

install_tools

log "cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path tests/crypto-providers/Cargo.toml --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "the library does not carry the command-line tool"
# A library user with one carrier gets no CLI, benchmark or Raft code.
if cargo tree -p coordinator --no-default-features --features nats -e normal --prefix none --locked \
    | grep -E '^(clap|hdrhistogram|openraft|raft-kv|anyhow|tracing-subscriber) '; then
    echo "the coordinator library depends on the crates above: they belong to coordinator-cli" >&2
    exit 1
fi

log "doc tests"
cargo test --workspace --doc --locked --quiet

log "tests"
cargo nextest run --workspace --locked --no-fail-fast -E 'not binary(netfaults)' "$@"

# A process that links rustls with both ring and aws-lc-rs: a workspace of
# its own, so that the aws-lc-rs feature stays out of the other tests.
log "crypto-provider neutrality"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" \
    cargo test --manifest-path tests/crypto-providers/Cargo.toml --locked

# The network fault suite measures failure detection in real time: it runs
# alone, after the rest, so that no other test competes for the two cores.
# Without root it says why it is skipped.
log "network fault suite"
cargo nextest run -p coordinator-cli --test netfaults --locked --no-fail-fast --no-capture "$@"
