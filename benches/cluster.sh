#!/usr/bin/env bash
# The whole cluster under load, beside `groupcast dev`, in one run
# (docs/benchmarks.md, issue 10). The cluster is deploy/local/cluster.sh's
# (three nats-server with clustered JetStream, three membership replicas,
# three edges, nginx in front), on ports offset by 30000 and a temporary
# state directory; clients and API calls go through nginx.
#   1. fan-out to SUBSCRIBERS on one channel: `groupcast dev` alone, then
#      through nginx (which spreads the subscribers over the three edges), on
#      a history channel (JetStream) and on one without (core NATS);
#   2. presence churn: CHURN connections, each subscribing to its own
#      presence channel and unsubscribing again (joins + leaves per second,
#      and the rate the membership service committed them at), with
#      `presence` query latency through an edge meanwhile; through nginx,
#      then straight to the edges.
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/cluster.sh [SUBSCRIBERS] [SECS] [SIZE] [WINDOW] [CHURN]
#   (WINDOW: publishes in flight; 1 measures latency without queueing)
#   ONLY=fanout or ONLY=churn: run only that part.
#   The binaries: $GROUPCAST and $GROUPCAST_BENCH, else ${CARGO_TARGET_DIR:-target}/release/.
#   EDGE_ENV: more NAME=VALUE words for the edges, e.g.
#   EDGE_ENV=GROUPCAST_CLIENT__MAX_PUBLISHES_IN_FLIGHT=1 (one ack awaited at a time, as before issue 22)
#
# Needs nats-server and nginx (scripts/test.sh installs both). Every process
# it starts is stopped by PID on exit (cluster.sh down for the cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
subs=${1:-1000}; secs=${2:-10}; size=${3:-128}; window=${4:-256}; churn=${5:-600}
bin=${GROUPCAST:-${CARGO_TARGET_DIR:-target}/release/groupcast}
bench=${GROUPCAST_BENCH:-${CARGO_TARGET_DIR:-target}/release/groupcast-bench}
only=${ONLY:-}
offset=30000
lb=127.0.0.1:$((8000 + offset))
work=$(mktemp -d)
pids=()
cluster() {
  GROUPCAST_LOCAL_DIR="$work/cluster" GROUPCAST_LOCAL_PORT_OFFSET=$offset GROUPCAST_BIN=$bin \
    GROUPCAST_LOCAL_EDGE_ENV="GROUPCAST_CLIENT__COMMAND_RATE=0 ${EDGE_ENV:-}" deploy/local/cluster.sh "$@"
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -d "$work/cluster" ]; then cluster down --purge >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() { for _ in $(seq 1 200); do curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

if [ "$only" != churn ]; then
echo; echo "== 1a. fan-out: single node (groupcast dev, in-memory)"
GROUPCAST_CLIENT__COMMAND_RATE=0 $bin dev --listen 127.0.0.1:18100 >"$work/dev.log" 2>&1 &
pids+=($!); wait_ready 127.0.0.1:18100
$bench --server 127.0.0.1:18100 fanout --subscribers "$subs" --size "$size" --secs "$secs" --window "$window"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
fi

echo; echo "== the local cluster (deploy/local/cluster.sh up, ports +$offset)"
cluster up >"$work/up.log" 2>&1 || { cat "$work/up.log"; exit 1; }
key=$(cat "$work/cluster/api-key")
token=$($bin token --user bench --ttl 1h --token-hmac-secret "$(cat "$work/cluster/secret")")
edges=()
for i in 1 2 3; do edges+=(--edge "127.0.0.1:$((8000 + offset + i))"); done

if [ "$only" != churn ]; then
echo; echo "== 1b. fan-out through nginx over three edges, history channel (JetStream, 3 replicas)"
$bench --server "$lb" --token "$token" fanout --subscribers "$subs" --size "$size" --secs "$secs" --window "$window"
echo; echo "== 1c. fan-out through nginx over three edges, channel without history (core NATS)"
$bench --server "$lb" --token "$token" fanout --subscribers "$subs" --size "$size" --secs "$secs" --window "$window" --channel status:bench
fi
[ "$only" = fanout ] && exit 0

# `status:` channels have presence and join/leave but no history (deploy/local/edge.toml.tmpl).
churn_args=(presence --connections "$churn" --secs "$secs" --prefix status:churn- --api-key "$key" "${edges[@]}")
echo; echo "== 2a. presence churn through nginx over three edges"
$bench --server "$lb" --token "$token" "${churn_args[@]}"
echo; echo "== 2b. presence churn straight to the three edges (round robin, no nginx)"
$bench --server "$lb" --token "$token" "${churn_args[@]}" --direct
