#!/usr/bin/env bash
# A timed fuzzing campaign over every decoder (before a release; the test
# suite only replays the kept inputs):
#
#   scripts/fuzz.sh [TARGET...]        # default: every target in fuzz/Cargo.toml
#
# Each target runs until RUNS executions (default 5,000,000) or SECONDS_EACH
# seconds (default 900), whichever comes first, with libFuzzer's limits:
# RSS_MB (default 1024) for the process and MALLOC_MB (default 64) for any
# one allocation, TIMEOUT_S (default 10) per input. New inputs go to a
# scratch directory (fuzz/target-corpus/, not committed); the seeds in
# fuzz/corpus/ are read only. A failure leaves its input in
# fuzz/artifacts/TARGET/ and stops the campaign: copy it to
# fuzz/regressions/TARGET/ (named after what it found) once fixed, so the
# test suite replays it.
#
# FUZZ_TARGET_DIR: where the instrumented builds go (default target/fuzz).
# Needs the nightly toolchain and cargo-fuzz (both installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5000000}
seconds=${SECONDS_EACH:-900}
rss=${RSS_MB:-1024}
malloc=${MALLOC_MB:-64}
timeout=${TIMEOUT_S:-10}
# Instrumented builds go to a target directory of their own (the normal
# build is not disturbed, nor waited for).
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/fuzz}

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^coordinator-fuzz$')
fi

summary=()
for target in "${targets[@]}"; do
    scratch="fuzz/target-corpus/$target"
    mkdir -p "$scratch" "fuzz/artifacts/$target"
    log="fuzz/target-corpus/$target.log"
    echo "== $target: up to $runs runs or $seconds s (rss ${rss} MB, malloc ${malloc} MB, timeout ${timeout} s)"
    cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$target_dir" "$target" "$scratch" "fuzz/corpus/$target" -- \
        -runs="$runs" -max_total_time="$seconds" -rss_limit_mb="$rss" \
        -malloc_limit_mb="$malloc" -timeout="$timeout" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$target/" 2>&1 | tee "$log" | grep -E '^(#[0-9]+ +(DONE|pulse)|==|INFO: (Running|Loaded))' || true
    status=${PIPESTATUS[0]}
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    line="$target: ${execs:-?} executions, peak RSS ${peak:-?} MB, ${cov:-cov: ?}, exit $status"
    summary+=("$line")
    echo "$line"
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $target failed: its input is in fuzz/artifacts/$target/ (log: $log)" >&2
        printf '%s\n' "${summary[@]}"
        exit 1
    fi
done
echo
echo "== campaign over"
printf '%s\n' "${summary[@]}"
