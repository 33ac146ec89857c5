#!/usr/bin/env bash
# Soak run (docs/benchmarks.md, issue 13): one `groupcast edge` on a real
# nats-server (JetStream) and one membership replica, under MINUTES of
# mixed traffic from `groupcast-bench soak` (resident connections,
# publishes into history and plain channels, presence/history queries,
# connection churn every minute, a slow consumer every minute), sampling the
# edge's RSS, open file descriptors and tokio task count every 10 s into a
# CSV; then plots it (matplotlib, installed into .tools/venv when missing).
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/soak.sh [MINUTES] [OUT_DIR]     # default 20, target/soak
#
# Writes OUT_DIR/soak.csv, OUT_DIR/soak.png and OUT_DIR/soak.log (the
# bench's verdict). Every process it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-20}; out=${2:-target/soak}
bin=target/release/groupcast
bench=target/release/groupcast-bench
nats=${GROUPCAST_NATS_SERVER:-.tools/venv/bin/nats-server}
venv=.tools/venv
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$out"
wait_http() { for _ in $(seq 1 300); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
$nats -a 127.0.0.1 -p 15222 -m 15223 -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:15223/healthz
$bin certs init --dir "$work/certs" >/dev/null
for n in node-1 edge; do $bin certs issue "$n" --dir "$work/certs" >/dev/null; done
$bin membership --id 1 --listen 127.0.0.1:15301 --peers 1=127.0.0.1:15301 --data "$work/m1" \
  --certs "$work/certs" --http 127.0.0.1:15311 >"$work/membership.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:15311/readyz
key=soak-api-key; secret=soak-secret
cat >"$work/edge.toml" <<TOML
listen = "127.0.0.1:15400"
name = "soak"
[api]
key = "$key"
[client]
token_hmac_secret = "$secret"
[channel]
history_size = 100
history_ttl = "5m"
allow_recovery = true
presence = true
join_leave = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
[[namespaces]]
name = "plain"
presence = true
allow_presence_for_subscriber = true
[nats]
urls = ["nats://127.0.0.1:15222"]
[membership]
seeds = ["127.0.0.1:15301"]
certs = "$work/certs"
cert_name = "edge"
TOML
$bin edge --config "$work/edge.toml" >"$work/edge.log" 2>&1 &
edge_pid=$!
pids+=($edge_pid)
wait_http http://127.0.0.1:15400/readyz
token=$($bin token --user soak --ttl 2h --token-hmac-secret "$secret")

$bench --server 127.0.0.1:15400 --token "$token" soak --secs $((minutes * 60)) \
  --server-pid "$edge_pid" --api-key "$key" --csv "$out/soak.csv" | tee "$out/soak.log"

if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "matplotlib==3.9.2"
fi
"$venv/bin/python" benches/soak_plot.py "$out/soak.csv" "$out/soak.png"
echo "plot: $out/soak.png"
