#!/usr/bin/env bash
# Fan-out over three edges on one NATS, beside the single-node figure, in
# one run (docs/benchmarks.md, issue 4):
#   1. `groupcast dev` alone (in-memory bus);
#   2. three `groupcast edge`s on one nats-server, history channel (JetStream);
#   3. the same edges, a channel without history (core NATS only).
# Subscribers are spread over the three edges; the publisher is on edge 1.
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/cluster-fanout.sh [SUBSCRIBERS] [SECS] [SIZE] [WINDOW]
#   (WINDOW: publishes in flight; 1 measures latency without queueing)
#
# Needs nats-server (scripts/test.sh installs it into .tools/venv). Every
# process it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-1000}; secs=${2:-10}; size=${3:-128}; window=${4:-256}
bin=target/release/groupcast
bench=target/release/groupcast-bench
nats=${GROUPCAST_NATS_SERVER:-.tools/venv/bin/nats-server}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_ready() { for _ in $(seq 1 200); do curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# 1. single node
GROUPCAST_CLIENT__COMMAND_RATE=0 $bin dev --listen 127.0.0.1:18100 >"$work/dev.log" 2>&1 &
pids+=($!); wait_ready 127.0.0.1:18100
echo; echo "== single node (groupcast dev, in-memory)"
$bench --server 127.0.0.1:18100 fanout --subscribers "$subs" --size "$size" --secs "$secs" --window "$window"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# 2 and 3. three edges on one NATS
$nats -a 127.0.0.1 -p 14222 -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/14222) 2>/dev/null && break; sleep 0.05; done
for i in 1 2 3; do
  cat >"$work/edge$i.toml" <<TOML
listen = "127.0.0.1:1810$i"
name = "edge$i"
[client]
allow_anonymous_connect_without_token = true
command_rate = 0
[channel]
history_size = 100
history_ttl = "5m"
allow_recovery = true
allow_publish_for_client = true
allow_anonymous = true
[[namespaces]]
name = "plain"
allow_publish_for_client = true
allow_anonymous = true
[nats]
urls = ["nats://127.0.0.1:14222"]
TOML
  $bin edge --config "$work/edge$i.toml" >"$work/edge$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do wait_ready "127.0.0.1:1810$i"; done
edges="--edge 127.0.0.1:18101 --edge 127.0.0.1:18102 --edge 127.0.0.1:18103"
echo; echo "== three edges, history channel (JetStream)"
$bench --server 127.0.0.1:18101 fanout --subscribers "$subs" --size "$size" --secs "$secs" --window "$window" --channel bench $edges
echo; echo "== three edges, channel without history (core NATS)"
$bench --server 127.0.0.1:18101 fanout --subscribers "$subs" --size "$size" --secs "$secs" --window "$window" --channel plain:bench $edges
