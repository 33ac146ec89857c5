#!/usr/bin/env bash
# Seed 003, the MUD, on Groupcast: one command.
#
#   examples/mud/run.sh          # on `groupcast dev` (127.0.0.1:8000)
#   examples/mud/run.sh cluster  # on deploy/local/cluster.sh (nginx on 127.0.0.1:8000, three edges)
#
# Then open http://127.0.0.1:8080/?player=hero (and ?room=room2). Ctrl-C stops everything.
# Settings: examples/lib.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ex_init mud "${1:-dev}"
game=127.0.0.1:$ex_backend_port
secret=$(ex_random)
config=$(ex_render "$here/groupcast.toml" GAME="$game" TARGET_SECRET="$secret" \
  PAGE_ORIGIN="http://127.0.0.1:$ex_page_port")
ex_start_groupcast "$config"
ex_bg game "$ex_python" "$here/game.py" --port "$ex_backend_port" \
  --api "$EX_HTTP/api" --api-key "$EX_API_KEY" --secret "$secret"
ex_wait_http "http://$game/state" "the game loop"
ex_serve_page "$here/page"
ex_say ""
ex_say "  play:       $EX_PAGE/?player=hero&room=room1   (WebSocket: $EX_WS/ws/game/room1/)"
ex_say "  world:      http://$game/state"
ex_say "  API:        $EX_HTTP/api   key: $EX_API_KEY"
ex_ready "page=$EX_PAGE/ game=http://$game"
