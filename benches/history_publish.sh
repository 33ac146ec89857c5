#!/usr/bin/env bash
# History publications stored per second from ONE connection (issue 22,
# item 5): `groupcast dev --nats` against one local nats-server with
# JetStream (file storage, one replica), one publisher connection sending
# 128-byte publishes to a history channel with WINDOW commands awaiting
# their reply (`groupcast-bench fanout --subscribers 1`: the one subscriber
# just keeps the channel live). Every run is paired: the edge with
# `client.max_publishes_in_flight = 1` (one acknowledgement awaited at a
# time per connection, the behaviour before issue 22), then with IN_FLIGHT
# (default 64), each on a fresh edge and a fresh nats-server.
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/history_publish.sh [SECS] [ROUNDS] [WINDOW] [IN_FLIGHT]
#
# RUNS (default "before after"): which runs a round makes, in order:
# `before` (in flight 1), `after` (IN_FLIGHT), `nats` (no Groupcast: the
# same load generator publishes over nats-server's WebSocket listener to a
# JetStream stream with the same storage, awaiting JetStream's reply to each
# publication: `--protocol nats-ws --nats-jetstream`; benches/peers.sh).
#
# Needs nats-server (scripts/test.sh installs it into .tools). Every process
# it starts is stopped by PID on exit; its temporary directory is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; rounds=${2:-3}; window=${3:-256}; in_flight=${4:-64}
bin=${BIN:-target/release/groupcast}
bench=${BENCH_BIN:-target/release/groupcast-bench}
nats_server=${NATS_SERVER:-$(command -v nats-server || echo .tools/venv/bin/nats-server)}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_LOGS:-}" ] && cat "$work"/*.log >&2
  rm -rf "$work"
}
trap cleanup EXIT
wait_ready() { for _ in $(seq 1 200); do curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (with uncommitted changes)'); nats-server: $($nats_server --version)"

echo 'websocket { listen: "127.0.0.1:14298", no_tls: true }' >"$work/nats.conf"
run() { # IN_FLIGHT|nats ROUND
  local n=$1 r=$2
  rm -rf "$work/js"; mkdir -p "$work/js"
  $nats_server -c "$work/nats.conf" -a 127.0.0.1 -p 14299 -js -sd "$work/js" >"$work/nats.log" 2>&1 &
  local nats=$!; pids+=("$nats")
  for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/14299) 2>/dev/null && break; sleep 0.05; done
  if [ "$n" = nats ]; then
    for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/14298) 2>/dev/null && break; sleep 0.05; done
    echo; echo "== round $r, nats-server WebSocket, JetStream, window $window"
    $bench --server 127.0.0.1:14298 --protocol nats-ws --nats-jetstream fanout --subscribers 1 --size 128 \
      --secs "$secs" --window "$window" --channel "hist$r" | grep -E "published|refused|delivered"
    kill "$nats"; wait "$nats" 2>/dev/null || true
    pids=()
    return
  fi
  GROUPCAST_CLIENT__COMMAND_RATE=0 GROUPCAST_CLIENT__MAX_PUBLISHES_IN_FLIGHT=$n \
    $bin dev --listen 127.0.0.1:18199 --nats nats://127.0.0.1:14299 >"$work/dev.log" 2>&1 &
  local dev=$!; pids+=("$dev")
  wait_ready 127.0.0.1:18199
  echo; echo "== round $r, client.max_publishes_in_flight = $n, window $window"
  $bench --server 127.0.0.1:18199 fanout --subscribers 1 --size 128 --secs "$secs" --window "$window" --channel "hist$r" \
    | grep -E "published|refused|delivered"
  # The edge first (it drains and closes its NATS connection), then NATS.
  kill "$dev"; wait "$dev" 2>/dev/null || true
  kill "$nats"; wait "$nats" 2>/dev/null || true
  pids=() # both stopped: never signal their PIDs again
}
for r in $(seq 1 "$rounds"); do
  for run in ${RUNS:-before after}; do
    case $run in
      before) run 1 "$r" ;;
      after) run "$in_flight" "$r" ;;
      nats) run nats "$r" ;;
      *) echo "RUNS: before, after or nats, not $run" >&2; exit 2 ;;
    esac
  done
done
