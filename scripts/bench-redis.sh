#!/usr/bin/env bash
# keel bench cache vs redis-benchmark on the same local redis-server, interleaved rounds.
# Usage: scripts/bench-redis.sh [ROUNDS] [REQUESTS]   (prints a Markdown table)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
requests=${2:-200000}
cargo build --release -q -p keel
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir" >"$dir/log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
url="redis://127.0.0.1:$port"
declare -A runs
for r in $(seq "$rounds"); do
  for t in GET SET; do
    rb=$(redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -n "$requests" -d 64 -r 10000 -t "${t,,}" --csv | tail -1 | cut -d, -f2 | tr -d '"')
    ratio=$([ "$t" = GET ] && echo 1:0 || echo 0:1)
    kb=$(target/release/keel bench cache --url "$url" --clients 50 --requests "$requests" --ratio "$ratio" \
         --value-size 64 --keys 10000 --json | python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["ops_per_sec"])')
    runs[$t]+="$rb $kb;"
  done
done
echo "| command | redis-benchmark -c 50 (ops/s, median) | keel bench --clients 50 (ops/s, median) | ratio keel / redis-benchmark |"
echo "|---|---|---|---|"
for t in GET SET; do
  python3 - "$t" "${runs[$t]}" <<'PY'
import statistics, sys
t, raw = sys.argv[1], sys.argv[2]
pairs = [p.split() for p in raw.strip(";").split(";")]
rb = statistics.median(float(a) for a, _ in pairs)
kb = statistics.median(float(b) for _, b in pairs)
ratios = ", ".join(f"{float(b)/float(a):.2f}" for a, b in pairs)
print(f"| {t} | {rb:.0f} | {kb:.0f} | {kb/rb:.2f}x (rounds: {ratios}) |")
PY
done
