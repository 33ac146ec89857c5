#!/usr/bin/env bash
# Seed 000, the Django Channels relay, on Groupcast: one command.
#
#   examples/relay/run.sh          # on `groupcast dev` (127.0.0.1:8000)
#   examples/relay/run.sh cluster  # on deploy/local/cluster.sh (nginx on 127.0.0.1:8000, three edges)
#
# Then open http://127.0.0.1:8080/websocket-relay-test/ in two tabs, or run
# `python3 examples/relay/test_websocket_relay.py interactive`. Ctrl-C stops everything.
# Settings: examples/lib.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ex_init relay "${1:-dev}"
ex_start_groupcast "$here/groupcast.toml"
ex_serve_page "$here/page"
ex_say ""
ex_say "  test page:  $EX_PAGE/websocket-relay-test/   (relay: $EX_WS/ws/relay/)"
ex_say "  python:     $ex_python $here/test_websocket_relay.py --url $EX_WS/ws/relay/ interactive"
ex_say "  API:        $EX_HTTP/api   key: $EX_API_KEY"
ex_ready "page=$EX_PAGE/websocket-relay-test/"
