#!/usr/bin/env bash
# Runs N Native nodes as separate processes on 127.0.0.1..N (default 50) for
# a while (default 300 s), with default timings, and counts the suspicions
# and deaths they report once the cluster has formed: a healthy cluster of
# this size on this machine must have none.
#
#   scripts/loopback-cluster.sh [NODES] [SECONDS]
#
# Builds the release binary first. Every process is stopped at the end (or
# on Ctrl-C); the logs go to a temporary directory, removed unless a node
# reported a death.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-50}
seconds=${2:-300}
[ "$nodes" -ge 2 ] && [ "$nodes" -le 250 ] || { echo "NODES must be 2..250" >&2; exit 2; }

# NO_BUILD=1 uses the binary already built.
[ -n "${NO_BUILD:-}" ] || cargo build --release --locked -p coordinator-cli --quiet
# BIN=path runs another build of the binary (with NO_BUILD=1).
bin="${BIN:-${CARGO_TARGET_DIR:-target}/release/coordinator}"
dir=$(mktemp -d /tmp/coordinator-loopback.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
for i in $(seq 1 "$nodes"); do
    cat >"$dir/node$i.json" <<EOF
{"@type":"Native","nodeId":$i,"clusterKey":{"@type":"Value","secret":"loopback"},
 "bindAddr":"127.0.0.$i","port":$port,"seedNodes":["127.0.0.1:$port","127.0.0.2:$port"]}
EOF
    "$bin" node --config "$dir/node$i.json" >"$dir/node$i.out" 2>"$dir/node$i.log" &
    pids+=($!)
done

# Formed: every node knows every other one.
formed=""
for _ in $(seq 1 120); do
    sleep 0.5
    done_nodes=0
    for i in $(seq 1 "$nodes"); do
        known=$({ grep -oE '^member [0-9]+ \([0-9]+\): (Joined|Alive)' "$dir/node$i.out" || true; } | cut -d' ' -f2 | sort -u | wc -l)
        [ "$known" -ge $((nodes - 1)) ] && done_nodes=$((done_nodes + 1))
    done
    if [ "$done_nodes" -eq "$nodes" ]; then formed=yes; break; fi
done
[ -n "$formed" ] || { echo "the cluster did not form within 60 s (logs in $dir)" >&2; trap - EXIT; cleanup; exit 1; }
echo "$nodes nodes formed a cluster; watching for $seconds s"
declare -A mark
for i in $(seq 1 "$nodes"); do mark[$i]=$(wc -l <"$dir/node$i.out"); done
sleep "$seconds"
suspicions=0
deaths=0
for i in $(seq 1 "$nodes"); do
    after=$(tail -n +"$((mark[$i] + 1))" "$dir/node$i.out")
    s=$(grep -cE '^member .*: Suspected' <<<"$after" || true)
    d=$(grep -cE '^member .*: Died' <<<"$after" || true)
    suspicions=$((suspicions + s))
    deaths=$((deaths + d))
done
echo "$nodes nodes for $seconds s: $suspicions suspicion reports, $deaths deaths"
if [ "$deaths" -ne 0 ]; then
    echo "logs kept in $dir" >&2
    trap - EXIT
    cleanup
    exit 1
fi
cleanup
trap - EXIT
rm -rf "$dir"
