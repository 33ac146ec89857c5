#!/usr/bin/env bash
# Join/leave at scale (issue 22): N connections subscribe to one channel,
# one at a time (connect + subscribe, both replies awaited, each connection
# then stays and reads), on a fresh `groupcast dev` per run, in three
# namespaces that differ only in their join/leave options:
#
#   plain  presence, no join/leave
#   jl     presence and join/leave with the defaults (coalesced from 100
#          subscribers for 50 ms, no pushes above 1,000 on the edge)
#   today  presence and join/leave as before issue 22: every join and leave
#          pushed at once to every subscriber (join_leave_coalesce = "0s",
#          no ceiling worth the name); it gives up at TODAY_TIMEOUT seconds
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/join_leave.sh [N] [ROUNDS] [NAMESPACES]   # 10000 3 "plain jl today"
#
# Connections come from 32 source addresses (127.0.0.2-33): each run leaves
# N sockets in TIME_WAIT for a minute, and with 4 addresses the kernel's
# search for a free source port made later runs stall in the load generator
# (12-18 s of its CPU time, seen in plain and join/leave runs alike).
#
# Prints every run (`groupcast-bench join-storm`, the server's CPU time, the
# machine's 1-minute load average before the run), then the medians of the
# time to subscribe all N and the ratio to `plain`. The binaries: $GROUPCAST
# and $GROUPCAST_BENCH, else ${CARGO_TARGET_DIR:-target}/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
n=${1:-10000}
rounds=${2:-3}
namespaces=${3:-plain jl today}
today_timeout=${TODAY_TIMEOUT:-60}
bin=${CARGO_TARGET_DIR:-$root/target}/release
gc=${GROUPCAST:-$bin/groupcast}
bench=${GROUPCAST_BENCH:-$bin/groupcast-bench}
for b in "$gc" "$bench"; do
  [ -x "$b" ] || { echo "no binary at $b: cargo build --release -p groupcast -p groupcast-bench" >&2; exit 1; }
done
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# The dev profile's channel options, per namespace.
ns() {
  cat <<TOML
[[namespaces]]
name = "$1"
history_size = 100
history_ttl = "5m"
allow_recovery = true
presence = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
allow_anonymous = true
$2
TOML
}
{
  echo 'listen = "127.0.0.1:18422"'
  ns plain 'join_leave = false'
  ns jl 'join_leave = true'
  ns today 'join_leave = true
join_leave_coalesce = "0s"
join_leave_max_subscribers = 1000000'
} > "$tmp/config.toml"

declare -A times
for ((r = 1; r <= rounds; r++)); do
  for ns in $namespaces; do
    "$gc" dev --config "$tmp/config.toml" > "$tmp/server.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do
      (exec 3<>/dev/tcp/127.0.0.1/18422) 2>/dev/null && break
      sleep 0.1
    done
    load=$(cut -d' ' -f1 /proc/loadavg)
    timeout=600
    [ "$ns" = today ] && timeout=$today_timeout
    out=$("$bench" --server 127.0.0.1:18422 join-storm --subscribers "$n" \
      --channel "$ns:room" --timeout-secs "$timeout" --source-ips 32 2>/dev/null)
    cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$server/stat")
    kill "$server"; wait "$server" 2>/dev/null || true; server=
    echo "round $r, $ns: $(echo "$out" | tail -2 | tr '\n' ' ')server CPU ${cpu}s, load before ${load}"
    times[$ns]+="$(echo "$out" | sed -n 's/^subscribed: [0-9]* in \([0-9.]*\) s.*/\1/p') "
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${times[plain]:-}" | median)
for ns in $namespaces; do
  m=$(echo "${times[$ns]}" | median)
  ratio=$( [ -n "$base" ] && awk -v m="$m" -v b="$base" 'BEGIN {printf "%.2f", m / b}' || echo "-")
  echo "median $ns: ${m} s (runs: ${times[$ns]}) ratio to plain: $ratio"
done
