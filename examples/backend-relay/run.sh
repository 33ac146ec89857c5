#!/usr/bin/env bash
# Seed 004, WebSockets bound to backend processes, on Groupcast: one command.
#
#   examples/backend-relay/run.sh          # on `groupcast dev` (127.0.0.1:8000)
#   examples/backend-relay/run.sh cluster  # on deploy/local/cluster.sh (nginx on 127.0.0.1:8000)
#
# Then open http://127.0.0.1:8080/?user_id=alice and http://127.0.0.1:8080/?user_id=bob.
# Ctrl-C stops everything. Settings: examples/lib.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ex_init backend-relay "${1:-dev}"
gateway=127.0.0.1:$ex_backend_port
lobby=127.0.0.1:$((ex_backend_port + 1))
games=127.0.0.1:$((ex_backend_port + 2))
secret=$(ex_random)
config=$(ex_render "$here/groupcast.toml" GATEWAY="$gateway" LOBBY="$lobby" GAMES="$games" \
  TARGET_SECRET="$secret" PAGE_ORIGIN="http://127.0.0.1:$ex_page_port")
ex_start_groupcast "$config"
ex_bg backend "$ex_python" "$here/backend.py" gateway --port "$ex_backend_port" \
  --lobby "$((ex_backend_port + 1))" --games "$((ex_backend_port + 2))" \
  --api "$EX_HTTP/api" --api-key "$EX_API_KEY" --secret "$secret"
ex_wait_http "http://$gateway/processes" "the gateway"
ex_serve_page "$here/page"
ex_say ""
ex_say "  page:       $EX_PAGE/?user_id=alice   (WebSocket: $EX_WS/ws/?user_id=alice)"
ex_say "  processes:  http://$gateway/processes (lobby, games: their pids)"
ex_say "  API:        $EX_HTTP/api   key: $EX_API_KEY"
ex_ready "page=$EX_PAGE/ gateway=http://$gateway"
