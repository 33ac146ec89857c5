#!/usr/bin/env bash
# Connect rate with and without the connect proxy (docs/benchmarks.md,
# docs/backends.md): `groupcast dev` twice on loopback, one with
# `client.connect_proxy` pointed at `groupcast-bench proxy-backend` (a
# minimal backend: every connect is a new user), then `groupcast-bench
# connect-rate` against each: CONNECTIONS connections (upgrade, connect,
# reply, close), CONCURRENCY in flight.
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/proxy.sh [CONNECTIONS] [CONCURRENCY]
#
# Every process it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-20000}; concurrency=${2:-64}
bin=target/release/groupcast
bench=target/release/groupcast-bench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_ready() { for _ in $(seq 1 200); do curl -fs "http://$1/readyz" >/dev/null 2>&1 && return; sleep 0.05; done; echo "no $1" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
$bench proxy-backend --listen 127.0.0.1:19100 >"$work/backend.log" 2>&1 &
pids+=($!)
cat >"$work/proxy.toml" <<'TOML'
[client]
connect_proxy = "bench"
[[proxies]]
name = "bench"
endpoint = "http://127.0.0.1:19100/connect"
timeout = "2s"
TOML
$bin dev --listen 127.0.0.1:19001 >"$work/plain.log" 2>&1 &
pids+=($!)
$bin dev --listen 127.0.0.1:19002 --config "$work/proxy.toml" >"$work/proxied.log" 2>&1 &
pids+=($!)
wait_ready 127.0.0.1:19001
wait_ready 127.0.0.1:19002
echo "== without a proxy (anonymous connect)"
$bench --server 127.0.0.1:19001 connect-rate --connections "$connections" --concurrency "$concurrency"
echo "== with the connect proxy (one backend request per connect)"
$bench --server 127.0.0.1:19002 connect-rate --connections "$connections" --concurrency "$concurrency"
echo "proxy calls: $(curl -fs http://127.0.0.1:19002/metrics | grep '^groupcast_proxy_requests_total' | tr '\n' ' ')"
