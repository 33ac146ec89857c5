#!/usr/bin/env bash
# Fan-out and rooms figures of two `groupcast` builds, back to back on this
# machine, alternating A and B each round (so drift on a shared machine hits
# both alike). One `groupcast-bench` (the newer) drives both servers.
#
#   benches/before_after.sh OLD_GROUPCAST NEW_GROUPCAST [ROUNDS] [BENCH]
#
# e.g. build the previous commit into another target directory:
#   git worktree add /tmp/before HEAD~1
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p groupcast)
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/before_after.sh /tmp/before-target/release/groupcast target/release/groupcast 3
#
# Scenarios (all `groupcast dev`, in-memory, client command rate lifted):
#   fanout-256  1,000 subscribers, 128-byte publications, 256 in flight, 10 s (throughput)
#   fanout-1    the same with one publish in flight (latency)
#   rooms       500 rooms x 10 members, 2,000 publications/s over the rooms, 10 s
# Prints one line per run; the medians are for the reader.
set -euo pipefail
old=${1:?old groupcast binary}
new=${2:?new groupcast binary}
rounds=${3:-3}
bench=${4:-target/release/groupcast-bench}
ulimit -n 20000
port=18300

run_one() { # LABEL BINARY SCENARIO...
  local label=$1 bin=$2
  shift 2
  port=$((port + 1))
  GROUPCAST_CLIENT__COMMAND_RATE=0 "$bin" dev --listen "127.0.0.1:$port" \
    --api-key k --token-hmac-secret s >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  local out
  out=$("$bench" --server "127.0.0.1:$port" "$@" 2>&1 || true)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local delivered latency
  delivered=$(grep -o 'delivered: [0-9]* ([0-9]*/s), expected [0-9]* ([0-9.]*%)' <<<"$out" || echo "failed: $(tail -1 <<<"$out")")
  latency=$(grep -o 'p50 [0-9.]* ms, p99 [0-9.]* ms' <<<"$out" || echo "no latency")
  printf '%-4s %-11s %s | %s\n' "$label" "$SCENARIO" "$delivered" "$latency"
}

for r in $(seq "$rounds"); do
  echo "== round $r"
  for pair in "old:$old" "new:$new"; do
    label=${pair%%:*}
    bin=${pair#*:}
    # 16 source addresses: thousands of connections a run, closed sockets
    # linger in TIME_WAIT for a minute, and one address has ~28k ports.
    SCENARIO=fanout-256 run_one "$label" "$bin" fanout --subscribers 1000 --size 128 --secs 10 --source-ips 16
    SCENARIO=fanout-1 run_one "$label" "$bin" fanout --subscribers 1000 --size 128 --secs 10 --window 1 --source-ips 16
    SCENARIO=rooms run_one "$label" "$bin" rooms --rooms 500 --members 10 --rate 2000 --secs 10 --source-ips 16
  done
done
