# Shared by examples/*/run.sh (sourced, not run): start Groupcast for an example on
# `groupcast dev` or on the local cluster (deploy/local/cluster.sh), start the example's own
# processes, print where everything is, and stop all of it when the script exits (Ctrl-C,
# SIGTERM, or one of its processes dying).
#
# Environment (all optional):
#   GROUPCAST_BIN        groupcast binary (default target/release/groupcast, else
#                        target/debug/groupcast, else `cargo build --release` first)
#   EXAMPLE_PORT         dev: Groupcast's port (default 8000, as in the seeds' URLs)
#   EXAMPLE_PAGE_PORT    the example's web page server (default 8080)
#   EXAMPLE_BACKEND_PORT first port of the example's backend processes (default 9100)
#   EXAMPLE_API_KEY      dev: the API key (default: random)
#   EXAMPLE_LOG_DIR      logs of this run (default: a new temporary directory)
#   GROUPCAST_LOCAL_DIR, GROUPCAST_LOCAL_PORT_OFFSET
#                        cluster: cluster.sh's state directory (default
#                        /tmp/groupcast-example-NAME, deleted at exit) and port offset
#                        (nginx, the clients' entry, is 8000 + offset)

ex_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ex_pids=()
ex_cluster=""

ex_say() { printf '%s\n' "$*"; }
ex_die() {
  printf '%s: %s\n' "$ex_name" "$*" >&2
  exit 1
}

# ex_init NAME MODE: MODE is dev or cluster.
ex_init() {
  ex_name=$1
  ex_mode=$2
  case "$ex_mode" in
    dev | cluster) ;;
    *) ex_die "usage: run.sh [dev|cluster]" ;;
  esac
  ex_log=${EXAMPLE_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/groupcast-example-$ex_name.XXXXXX")}
  mkdir -p "$ex_log"
  ex_page_port=${EXAMPLE_PAGE_PORT:-8080}
  ex_backend_port=${EXAMPLE_BACKEND_PORT:-9100}
  ex_bin=${GROUPCAST_BIN:-}
  if [ -z "$ex_bin" ]; then
    for b in "$ex_root/target/release/groupcast" "$ex_root/target/debug/groupcast"; do
      [ -x "$b" ] && ex_bin=$b && break
    done
  fi
  if [ -z "$ex_bin" ]; then
    ex_say "building groupcast (cargo build --release -p groupcast), once"
    (cd "$ex_root" && cargo build --release --locked -p groupcast)
    ex_bin="$ex_root/target/release/groupcast"
  fi
  ex_python=python3
  [ -x "$ex_root/.tools/venv/bin/python" ] && ex_python="$ex_root/.tools/venv/bin/python"
  trap ex_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# ex_clean_env CMD...: CMD without any GROUPCAST_* variable (groupcast reads each one as a
# configuration key and refuses those it does not know: GROUPCAST_BIN, GROUPCAST_LOCAL_DIR...),
# through env(1), which execs CMD.
ex_clean_env() {
  local unset=() v
  while IFS= read -r v; do
    unset+=(-u "$v")
  done < <(compgen -e | grep '^GROUPCAST_' || true)
  exec env ${unset[@]+"${unset[@]}"} "$@"
}

# ex_bg NAME CMD...: starts CMD in the background (without GROUPCAST_* variables, so its pid is
# CMD's own), output in $ex_log/NAME.log.
ex_bg() {
  local name=$1
  shift
  (ex_clean_env "$@") </dev/null >>"$ex_log/$name.log" 2>&1 &
  ex_pids+=("$!")
  ex_say "  $name: pid $! (log $ex_log/$name.log)"
}

# ex_wait_http URL WHAT: waits up to 30 s for URL to answer 2xx.
ex_wait_http() {
  local i
  for i in $(seq 1 150); do
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  ex_die "$2 did not answer at $1 within 30 s (logs in $ex_log)"
}

# ex_render FILE NAME=VALUE...: a copy of FILE in the log directory with each @NAME@ replaced by
# VALUE (addresses and secrets chosen at run time); prints the copy's path.
ex_render() {
  local src=$1 out
  shift
  out="$ex_log/$(basename "$src")"
  cp "$src" "$out"
  local kv
  for kv in "$@"; do
    sed -i "s|@${kv%%=*}@|${kv#*=}|g" "$out"
  done
  if grep -q '@[A-Z_]*@' "$out"; then
    ex_die "$src: $(grep -o '@[A-Z_]*@' "$out" | head -1) has no value"
  fi
  chmod 600 "$out"
  printf '%s' "$out"
}

# ex_random: 32 random hex digits (keys, secrets).
ex_random() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# ex_start_groupcast CONFIG: Groupcast with the example's settings layered over the mode's own.
# Sets EX_HTTP (http://host:port, the clients' and the API's entry), EX_WS (ws://host:port),
# EX_API_KEY and EX_EDGES (the edges' own http://host:port, one on dev).
ex_start_groupcast() {
  local config=$1
  if [ "$ex_mode" = dev ]; then
    local port=${EXAMPLE_PORT:-8000}
    EX_API_KEY=${EXAMPLE_API_KEY:-$(ex_random)}
    ex_say "groupcast dev on 127.0.0.1:$port with $config"
    ex_bg groupcast "$ex_bin" dev --listen "127.0.0.1:$port" \
      --api-key "$EX_API_KEY" --config "$config"
    EX_HTTP="http://127.0.0.1:$port"
    EX_EDGES=("$EX_HTTP")
    ex_wait_http "$EX_HTTP/readyz" "groupcast dev"
  else
    export GROUPCAST_LOCAL_DIR=${GROUPCAST_LOCAL_DIR:-/tmp/groupcast-example-$ex_name}
    local offset=${GROUPCAST_LOCAL_PORT_OFFSET:-0}
    ex_say "the local cluster (deploy/local/cluster.sh up) with $config, state in $GROUPCAST_LOCAL_DIR"
    ex_cluster=1
    GROUPCAST_BIN=$ex_bin GROUPCAST_LOCAL_EDGE_CONFIG=$config \
      "$ex_root/deploy/local/cluster.sh" up >"$ex_log/cluster.log" 2>&1 || {
      tail -n 30 "$ex_log/cluster.log" >&2
      ex_die "deploy/local/cluster.sh up failed (log $ex_log/cluster.log)"
    }
    EX_API_KEY=$(cat "$GROUPCAST_LOCAL_DIR/api-key")
    EX_HTTP="http://127.0.0.1:$((8000 + offset))"
    EX_EDGES=("http://127.0.0.1:$((8001 + offset))" "http://127.0.0.1:$((8002 + offset))"
      "http://127.0.0.1:$((8003 + offset))")
  fi
  EX_WS=${EX_HTTP/http:/ws:}
}

# ex_serve_page DIR: the example's static pages on 127.0.0.1:$ex_page_port.
ex_serve_page() {
  ex_bg page "$ex_python" -m http.server --bind 127.0.0.1 --directory "$1" "$ex_page_port"
  EX_PAGE="http://127.0.0.1:$ex_page_port"
  ex_wait_http "$EX_PAGE/" "the page server"
}

# ex_npm_file PACKAGE@VERSION FILE: the path of FILE in that npm package: the test tools' copy
# (tests/sdk/node_modules) when it is that version, else installed once into a cache outside
# the repository (${XDG_CACHE_HOME:-~/.cache}/groupcast-examples).
ex_npm_file() {
  local pkg=$1 file=$2 dir
  local installed="$ex_root/tests/sdk/node_modules/${pkg%@*}"
  if [ -f "$installed/$file" ] &&
    grep -q "\"version\": \"${pkg##*@}\"" "$installed/package.json" 2>/dev/null; then
    printf '%s' "$installed/$file"
    return
  fi
  dir="${XDG_CACHE_HOME:-$HOME/.cache}/groupcast-examples/npm/${pkg//[@\/]/_}"
  if [ ! -f "$dir/node_modules/${pkg%@*}/$file" ]; then
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "$pkg" >&2 ||
      ex_die "npm install $pkg failed"
  fi
  printf '%s' "$dir/node_modules/${pkg%@*}/$file"
}

# ex_serve_pages DIR FILE...: like ex_serve_page, from a copy of DIR in the log directory with
# FILEs (paths) added beside its pages.
ex_serve_pages() {
  local src=$1 site="$ex_log/site"
  shift
  rm -rf "$site"
  cp -r "$src" "$site"
  local f
  for f in "$@"; do
    cp "$f" "$site/"
  done
  ex_serve_page "$site"
}

# ex_ready [KEY=VALUE...]: prints the ready line (tests wait for it and read its fields: the
# example's own, then ws, api, key and the edges' addresses), then waits until a process ends.
ex_ready() {
  local edges
  edges=$(IFS=,; printf '%s' "${EX_EDGES[*]}")
  ex_say "ready: $* ws=$EX_WS api=$EX_HTTP/api key=$EX_API_KEY edges=$edges"
  local status=0
  wait -n "${ex_pids[@]}" || status=$?
  ex_die "a process of the example ended (status $status); logs in $ex_log"
}

ex_cleanup() {
  local pid i
  trap - EXIT INT TERM
  for pid in "${ex_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for i in $(seq 1 50); do
    local alive=0
    for pid in "${ex_pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${ex_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -n "$ex_cluster" ]; then
    "$ex_root/deploy/local/cluster.sh" down --purge >>"$ex_log/cluster.log" 2>&1 || true
  fi
  [ -n "${EXAMPLE_LOG_DIR:-}" ] || ex_say "logs kept in $ex_log"
}
