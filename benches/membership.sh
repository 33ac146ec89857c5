#!/usr/bin/env bash
# Membership service throughput and query latency (docs/benchmarks.md,
# issue 5): three `groupcast membership` replicas on loopback, then
# `groupcast-bench membership` with EDGES edge handles each running
# CONCURRENCY join/leave loops (every join and leave is awaited until
# committed), plus one task reading presence (linearizable) back to back.
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/membership.sh [EDGES] [CONCURRENCY] [SECS]
#
# Every process it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
edges=${1:-4}; concurrency=${2:-256}; secs=${3:-10}
bin=target/release/groupcast
bench=target/release/groupcast-bench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
$bin certs init --dir "$work/certs" >/dev/null
$bin certs issue edge --dir "$work/certs" >/dev/null
peers=1=127.0.0.1:17501,2=127.0.0.1:17502,3=127.0.0.1:17503
for i in 1 2 3; do
  $bin certs issue "node-$i" --dir "$work/certs" >/dev/null
  $bin membership --id "$i" --listen "127.0.0.1:1750$i" --peers "$peers" \
    --data "$work/data$i" --certs "$work/certs" --http "127.0.0.1:1751$i" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:1751$i/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
done
$bench membership --seeds 127.0.0.1:17501,127.0.0.1:17502,127.0.0.1:17503 \
  --certs "$work/certs" --edges "$edges" --concurrency "$concurrency" --secs "$secs"
for i in 1 2 3; do
  s=$(curl -fs "http://127.0.0.1:1751$i/status")
  echo "replica $i: $(echo "$s" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["state"], "term", s["term"], "applied", s["applied_index"], "snapshot", s["snapshot_index"], "digest", s["state_digest"])')"
done
