#!/usr/bin/env bash
# Groupcast's Socket.IO server against the npm `socket.io` 4.8 server (its
# default `ws` engine), in one run on this machine, with one load generator
# (benches/socketio/load.mjs: socket.io-client 4.8, WebSocket transport only,
# in 4 worker processes) driving both the same way:
#
#   fanout     1,000 sockets in one room; 20 publications/s for 10 s
#   fanout-100 the same at 100 publications/s (100,000 deliveries/s)
#   rooms      500 rooms of 10 sockets; 2,000 publications/s for 10 s, to the
#              rooms in turn
#   rooms-max  the same sockets; 32 publish requests in flight for 10 s, as
#              fast as the server answers them
#   idle       10,000 idle sockets over 100 rooms: server RSS before and 5 s
#              after, divided
#
# A publication is `POST /api/sio_emit {"room", "event", "args"}` with
# `X-API-Key`: Groupcast's API method; the reference server
# (benches/socketio/server.mjs) serves the same call with
# `io.to(room).emit(event, ...args)`. Sockets name their room in the CONNECT
# payload (`auth.room`, which server.mjs joins) and carry a connection token
# whose `channels` claim is that room (`auth.token`, minted with `groupcast
# token`, which Groupcast joins). Each event carries its send time: latency is
# end to end, API call to the event in the client. Every scenario runs on a
# fresh server process; the server's CPU time comes from /proc/PID/stat.
#
#   cargo build --release -p groupcast
#   benches/socketio.sh [--quick] [ROUNDS]     # ROUNDS: default 3
#
# --quick: small counts (200 sockets, 50 rooms of 10, 1,000 idle, 3 s) to
# check that it works. The groupcast binary: $GROUPCAST, else
# ${CARGO_TARGET_DIR:-target}/release/groupcast. npm packages are installed on
# first use into benches/socketio/node_modules (git-ignored) from its
# package-lock.json. Prints every run, then the medians and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0
rounds=3
for a in "$@"; do
  case $a in
    --quick) quick=1 ;;
    [0-9]*) rounds=$a ;;
    *) echo "usage: benches/socketio.sh [--quick] [ROUNDS]" >&2; exit 2 ;;
  esac
done

gc=${GROUPCAST:-${CARGO_TARGET_DIR:-$root/target}/release/groupcast}
[ -x "$gc" ] || { echo "no groupcast binary at $gc: cargo build --release -p groupcast (or set GROUPCAST)" >&2; exit 1; }
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
  { echo "needs Node 20 or later" >&2; exit 1; }

dir=$root/benches/socketio
lock_hash=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$dir/node_modules/.stamp" 2>/dev/null)" != "$lock_hash" ]; then
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" > "$dir/node_modules/.stamp"
fi

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ "$quick" = 1 ]; then
  fanout=(--sockets 200 --rate 20 --secs 3)
  fanout_100=(--sockets 200 --rate 100 --secs 3)
  rooms=(--sockets 500 --rooms 50 --rate 200 --secs 3)
  rooms_max=(--sockets 500 --rooms 50 --window 32 --secs 3)
  idle=(--sockets 1000 --rooms 100 --settle 2)
else
  fanout=(--sockets 1000 --rate 20 --secs 10)
  fanout_100=(--sockets 1000 --rate 100 --secs 10)
  rooms=(--sockets 5000 --rooms 500 --rate 2000 --secs 10)
  rooms_max=(--sockets 5000 --rooms 500 --window 32 --secs 10)
  idle=(--sockets 10000 --rooms 100 --settle 5)
fi

tmp=$(mktemp -d /tmp/groupcast-socketio-bench.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

key=bench-api-key
secret=bench-token-secret
cat > "$tmp/groupcast.toml" <<'EOF'
[socketio]
enabled = true
EOF

# One connection token per room (user "bench", channels = [room]).
for r in f0 $(seq -f 'r%g' 0 499) $(seq -f 'i%g' 0 99); do
  printf '%s %s\n' "$r" "$("$gc" token --user bench --ttl 2h --channel "$r" --token-hmac-secret "$secret")"
done > "$tmp/tokens"

port=18600
start_server() { # groupcast|socket.io
  port=$((port + 1))
  case $1 in
    groupcast)
      "$gc" dev --listen "127.0.0.1:$port" --api-key "$key" --token-hmac-secret "$secret" \
        --config "$tmp/groupcast.toml" >"$tmp/server.log" 2>&1 &
      ;;
    socket.io)
      node "$dir/server.mjs" "$port" "$key" >"$tmp/server.log" 2>&1 &
      ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$1 did not listen on $port:" >&2
  cat "$tmp/server.log" >&2
  exit 1
}
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

run() { # SERVER SCENARIO LOAD_ARGS...
  local server=$1 scenario=$2
  shift 2
  start_server "$server"
  local kind=${scenario%%-*}
  node "$dir/load.mjs" --url "http://127.0.0.1:$port" --key "$key" --pid "$server_pid" \
    --label "$server" --scenario "$kind" --tokens "$tmp/tokens" "$@" >"$tmp/run.out" || true
  sed "s/\"scenario\":\"$kind\"/\"scenario\":\"$scenario\"/" "$tmp/run.out" | { grep '^RESULT ' || true; } |
    tee -a "$tmp/results" | cut -c1-240
  stop_server
}

echo "groupcast: $gc (tree at $(git -C "$root" rev-parse --short HEAD))"
echo "node $(node --version); $(cd "$dir" && node -e 'for (const p of ["socket.io","engine.io","ws","socket.io-client"]) process.stdout.write(p + " " + require("./node_modules/" + p + "/package.json").version + "; ")')"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
: > "$tmp/results"
for r in $(seq "$rounds"); do
  # Alternate which server goes first, so drift on a shared machine hits both.
  order=(groupcast socket.io)
  [ $((r % 2)) = 0 ] && order=(socket.io groupcast)
  echo "== round $r of $rounds"
  for s in "${order[@]}"; do run "$s" fanout "${fanout[@]}"; done
  for s in "${order[@]}"; do run "$s" fanout-100 "${fanout_100[@]}"; done
  for s in "${order[@]}"; do run "$s" rooms "${rooms[@]}"; done
  for s in "${order[@]}"; do run "$s" rooms-max "${rooms_max[@]}"; done
  for s in "${order[@]}"; do run "$s" idle "${idle[@]}"; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
node "$dir/summary.mjs" "$tmp/results"
