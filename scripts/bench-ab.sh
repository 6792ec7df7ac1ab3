#!/usr/bin/env bash
# Compares two builds of `coordinator` back to back on the same machine:
# Memory, Native and NATS at 128 B, alternating the binaries, ROUNDS rounds.
#
#   scripts/bench-ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
#
# Build the old one from another checkout, e.g.
#   git worktree add /tmp/old <commit> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p coordinator-cli)
# Prints one line per figure: the median of each binary's rounds and new/old.
# NATS needs nats-server (Debian's package); it is started on a free port.
# BENCH_EXTRA adds options to every run, e.g. BENCH_EXTRA="--senders 16".
set -euo pipefail
old=$1 new=$2 rounds=${3:-3} extra=${BENCH_EXTRA:-}
work=$(mktemp -d)
trap 'kill $(cat "$work/nats.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
"$nats" -a 127.0.0.1 -p "$port" >/dev/null 2>&1 & echo $! > "$work/nats.pid"
sleep 1
cat > "$work/nats.json" <<JSON
{"@type": "Nats", "addresses": ["127.0.0.1:$port"], "cluster": "bench", "clusterKey": {"@type": "Value", "secret": "bench-key"}}
JSON
runs=(
  "memory|--carrier memory --messages 100000 --samples 5000 --raft-writes 2000"
  "native|--carrier native --messages 200000 --samples 10000 --raft-writes 2000"
  "nats|--config $work/nats.json --messages 100000 --samples 5000 --raft-writes 2000"
)
for round in $(seq 1 "$rounds"); do
  for entry in "${runs[@]}"; do
    name=${entry%%|*} args=${entry#*|}
    for which in old new; do
      binary=$old; [ "$which" = new ] && binary=$new
      # shellcheck disable=SC2086
      if ! "$binary" bench --size 128 $args $extra --json > "$work/$name-$which-$round.json" 2> "$work/err"; then
        echo "round $round, $name, $which: $binary bench --size 128 $args $extra failed:" >&2
        tail -n 20 "$work/err" >&2
        exit 1
      fi
    done
  done
done
python3 - "$work" "$rounds" <<'PY'
import json, sys, statistics, glob, os
work, rounds = sys.argv[1], int(sys.argv[2])
for name in ["memory", "native", "nats"]:
    figures = {}
    for which in ["old", "new"]:
        for r in range(1, rounds + 1):
            for row in json.load(open(os.path.join(work, f"{name}-{which}-{r}.json"))):
                for field in ["per_second", "p50_us"]:
                    if row.get(field) is not None:
                        key = (row["subject"], row["test"], field)
                        figures.setdefault(key, {"old": [], "new": []})[which].append(row[field])
    for (subject, test, field), values in figures.items():
        old, new = statistics.median(values["old"]), statistics.median(values["new"])
        unit = "msg/s" if field == "per_second" else "µs p50"
        print(f"{name:6} | {subject:28} | {test:28} | {unit:6} | old {old:12.1f} | new {new:12.1f} | new/old {new / old:5.2f}")
PY
