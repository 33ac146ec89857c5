#!/usr/bin/env bash
# Relay to a backend over NATS (docs/benchmarks.md, docs/backends.md):
# nats-server, `groupcast dev --nats` with a relay route bound to backend
# targets `bench.<room>`, and `groupcast-bench relay-backend`, whose backend
# echoes every frame back through `relay_send` on the edge's own NATS
# command subject. Reports round trips per second and latency p50/p99
# (client frame -> edge -> NATS -> backend -> NATS -> edge -> frame back).
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/relay_backend.sh [CONNECTIONS] [WINDOW] [SECS]
#
# Every process it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-100}; window=${2:-8}; secs=${3:-10}
bin=target/release/groupcast
bench=target/release/groupcast-bench
nats=${GROUPCAST_NATS_SERVER:-.tools/venv/bin/nats-server}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_http() { for _ in $(seq 1 300); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
$nats -a 127.0.0.1 -p 15522 -m 15523 -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:15523/healthz
cat >"$work/relay.toml" <<'TOML'
[api]
key = "bench-key"
over_nats = true
[client]
command_rate = 0.0
[[relay.routes]]
path = "/ws/bench/{room}/"
target = "bench.{room}"
TOML
$bin dev --listen 127.0.0.1:15501 --nats nats://127.0.0.1:15522 --config "$work/relay.toml" >"$work/edge.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:15501/readyz
$bench --server 127.0.0.1:15501 relay-backend --nats nats://127.0.0.1:15522 --api-key bench-key \
  --connections "$connections" --window "$window" --secs "$secs"
echo "events: $(curl -fs http://127.0.0.1:15501/metrics | grep '^groupcast_relay_backend_events_total' | tr '\n' ' ')"
