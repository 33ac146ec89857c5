#!/usr/bin/env bash
# Seed 002, the Django Channels chat, notifications and user status, on Groupcast: one command.
#
#   examples/chat/run.sh          # on `groupcast dev` (127.0.0.1:8000)
#   examples/chat/run.sh cluster  # on deploy/local/cluster.sh (nginx on 127.0.0.1:8000, three edges)
#
# Then open the page it prints (http://127.0.0.1:8080/chat/...) in two browser windows, log in as
# two users (password "demo"), and chat. Ctrl-C stops everything. Settings: examples/lib.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ex_init chat "${1:-dev}"
backend=http://127.0.0.1:$ex_backend_port
page_origin=http://127.0.0.1:$ex_page_port
signing_secret=$(ex_random)
config=$(ex_render "$here/groupcast.toml" BACKEND="$backend" PAGE_ORIGIN="$page_origin" \
  SECRET="$signing_secret")
ex_start_groupcast "$config"
# Secrets by environment, not on the command line (ps would show them).
export CHAT_GROUPCAST=$EX_HTTP CHAT_API_KEY=$EX_API_KEY CHAT_SIGNING_SECRET=$signing_secret
export CHAT_TOKEN_SECRET=${EXAMPLE_TOKEN_SECRET:-$(ex_random)}
export CHAT_PAGE_ORIGIN=$page_origin CHAT_LISTEN=127.0.0.1:$ex_backend_port
ex_bg backend "$ex_python" "$here/backend.py"
ex_wait_http "$backend/healthz" "the backend"
ex_serve_page "$here/page"
page="$EX_PAGE/chat/?ws=$EX_WS&api=$backend"
ex_say ""
ex_say "  page:     $page&room=lobby   (log in with any name, password demo)"
ex_say "  sockets:  $EX_WS/ws/chat/<room>/  $EX_WS/ws/notifications/  $EX_WS/ws/status/  (?token=)"
ex_say "  backend:  $backend   (POST /api/token/, POST /api/notifications/)"
ex_say "  API:      $EX_HTTP/api   key: $EX_API_KEY"
ex_ready "page=$EX_PAGE/chat/ backend=$backend"
