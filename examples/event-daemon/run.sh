#!/usr/bin/env bash
# Seed 001, LQDOJ's event daemon, on Groupcast: one command.
#
#   examples/event-daemon/run.sh          # on `groupcast dev` (127.0.0.1:8000)
#   examples/event-daemon/run.sh cluster  # on deploy/local/cluster.sh (nginx on 127.0.0.1:8000)
#
# Then open http://127.0.0.1:8080/?channels=submissions,contest_1 and post with
# `python3 examples/event-daemon/event_poster.py http://127.0.0.1:8000 KEY submissions hello`
# (KEY is printed below). Ctrl-C stops everything. Settings: examples/lib.sh, and
# EVENT_DAEMON_KEY (default: random), EVENT_DAEMON_MAX_CLIENTS (default 10000).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ex_init event-daemon "${1:-dev}"
daemon=127.0.0.1:$ex_backend_port
key=${EVENT_DAEMON_KEY:-$(ex_random)}
secret=$(ex_random)
config=$(ex_render "$here/groupcast.toml" DAEMON="$daemon" TARGET_SECRET="$secret")
bundle=$(ex_npm_file socket.io-client@4.8.1 dist/socket.io.min.js)
ex_start_groupcast "$config"
ex_bg daemon "$ex_python" "$here/daemon.py" --port "$ex_backend_port" --api "$EX_HTTP/api" \
  --api-key "$EX_API_KEY" --secret "$secret" --key "$key" \
  --max-clients "${EVENT_DAEMON_MAX_CLIENTS:-10000}"
ex_wait_http "http://$daemon/" "the event daemon"
ex_serve_pages "$here/page" "$bundle"
ex_say ""
ex_say "  page:    $EX_PAGE/?channels=submissions,contest_1&url=$EX_HTTP"
ex_say "  poster:  $ex_python $here/event_poster.py $EX_HTTP $key submissions '{\"hello\": 1}'"
ex_say "  EVENT_DAEMON_KEY: $key   (Django: EVENT_DAEMON_URL = EVENT_DAEMON_PUBLIC_URL = $EX_HTTP)"
ex_ready "page=$EX_PAGE/ daemon=http://$daemon event_daemon_key=$key"
