#!/usr/bin/env python3
"""LQDOJ's event daemon (seed 001) as a Groupcast backend (Python standard library only).

    daemon.py --port 9100 --api http://HOST:PORT/api --api-key KEY --secret S --key EVENT_DAEMON_KEY

The seed's daemon was a Socket.IO 4.8 server. On Groupcast, Groupcast is the Socket.IO server
(the browsers and the Django poster connect to it, through nginx, to any edge) and this process
keeps only the daemon's logic:

* as the namespace's **connect proxy** (`POST /connect`) it checks `auth`: `{role: 'client'}`
  is a browser, `{role: 'sender', token}` the poster, whose token must be EVENT_DAEMON_KEY
  (anything else: a connect error);
* as the namespace's **target** (`POST /events`, signed batches) it gets the sockets' events:
  - `post` {channel, message} (sender): a new id, the message published to the channel's room
    as event `message` {id, channel, message}; acknowledged {status: 'success', id}, or
    {status: 'error', code: 'invalid-channel'};
  - `last-msg` (sender): acknowledged {status: 'success', id} with the last id;
  - `start-msg` {start} (browser): the last id the page has;
  - `set-filter` {filter: [channels]} (browser): the socket's rooms become those channels, it
    gets `status` {status: 'success'}, then again every message of a newly added channel newer
    than its `start` (from Groupcast's history of the channel); errors as event `error`
    {status: 'error', code, message}: `invalid-filter`, `too-many-subscriptions` (over 10),
    `invalid-channel`;
  - over `--max-clients` browsers: `error` `server-capacity`, then the socket is disconnected.

Ids increase across all channels and keep rising across restarts: each is the clock in
milliseconds, or the last id plus one when the clock has not moved on.
"""

import argparse
import hmac
import json
import pathlib
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # examples/
from groupcast_backend import Api, log, verified  # noqa: E402

MAX_FILTER = 10
CHANNEL = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


class Daemon:
    def __init__(self, api, key, max_clients, history):
        self.api = api
        self.key = key
        self.max_clients = max_clients
        self.history = history
        self.lock = threading.Lock()
        self.last_id = int(time.time() * 1000)
        self.clients = {}  # client id -> {"start": int, "filter": set}
        self.seen = {}  # client id -> seq of its last event

    def next_id(self):
        with self.lock:
            self.last_id = max(self.last_id + 1, int(time.time() * 1000))
            return self.last_id

    # ---------------------------------------------------------------- connect proxy

    def connect(self, req):
        auth = (req.get("socketio") or {}).get("auth") or {}
        role = auth.get("role")
        if role == "client":
            return {"result": {"meta": {"role": "client"}}}
        if role == "sender":
            token = auth.get("token")
            if isinstance(token, str) and hmac.compare_digest(token, self.key):
                return {"result": {"user": "event-poster", "meta": {"role": "sender"}}}
            return {"error": {"code": 1003, "message": "invalid token"}}
        return {"error": {"code": 1000, "message": "unknown role"}}

    # ---------------------------------------------------------------- events

    def on_event(self, e):
        client = e["client"]
        with self.lock:
            if e["seq"] <= self.seen.get(client, -1):
                return
            self.seen[client] = e["seq"]
        role = (e.get("meta") or {}).get("role")
        kind = e["type"]
        if kind == "connect":
            if role == "client":
                self.on_client(client)
        elif kind == "disconnect":
            with self.lock:
                self.clients.pop(client, None)
                self.seen.pop(client, None)
        elif kind == "event":
            name, args, ack = e.get("event"), e.get("args") or [], e.get("ack")
            data = args[0] if args else None
            if role == "sender" and name == "post":
                self.answer(client, ack, self.post(data))
            elif role == "sender" and name == "last-msg":
                self.answer(client, ack, {"status": "success", "id": self.last_id})
            elif role == "client" and name == "start-msg":
                log(f"start-msg {client}: {data}")
                start = data.get("start") if isinstance(data, dict) else None
                with self.lock:
                    # A page connected before this daemon (re)started is known from now on.
                    state = self.clients.setdefault(client, {"start": 0, "filter": set()})
                    if isinstance(start, int):
                        state["start"] = start
            elif role == "client" and name == "set-filter":
                self.set_filter(client, data)

    def on_client(self, client):
        with self.lock:
            full = len(self.clients) >= self.max_clients
            if not full:
                self.clients[client] = {"start": 0, "filter": set()}
        if full:
            self.error(client, "server-capacity", "the server is at capacity")
            self.api.call("sio_disconnect", {"client": client})

    def answer(self, client, ack, data):
        if ack is not None:
            self.api.call("sio_ack", {"client": client, "id": ack, "args": [data]})

    def error(self, client, code, message):
        self.api.call("sio_emit", {"client": client, "event": "error",
                                   "args": [{"status": "error", "code": code, "message": message}]})

    def post(self, data):
        channel = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(channel, str) or not CHANNEL.match(channel):
            return {"status": "error", "code": "invalid-channel"}
        msg_id = self.next_id()
        event = {"id": msg_id, "channel": channel, "message": data.get("message")}
        r = self.api.call("sio_emit", {"room": channel, "event": "message", "args": [event]})
        if "error" in r:
            return {"status": "error", "code": "server-error"}
        return {"status": "success", "id": msg_id}

    def set_filter(self, client, data):
        channels = data.get("filter") if isinstance(data, dict) else None
        if not isinstance(channels, list):
            return self.error(client, "invalid-filter", "filter must be a list of channels")
        if len(channels) > MAX_FILTER:
            return self.error(client, "too-many-subscriptions",
                              f"at most {MAX_FILTER} channels")
        if not all(isinstance(c, str) and CHANNEL.match(c) for c in channels):
            return self.error(client, "invalid-channel", "a channel is 1-100 letters, digits, _ . -")
        with self.lock:
            # A page connected before this daemon (re)started is known from now on.
            state = self.clients.setdefault(client, {"start": 0, "filter": set()})
            old, new = state["filter"], set(channels)
            state["filter"] = new
            start = state["start"]
        for c in old - new:
            self.api.call("sio_leave", {"client": client, "room": c})
        for c in new - old:
            self.api.call("sio_join", {"client": client, "room": c})
        self.api.call("sio_emit", {"client": client, "event": "status",
                                   "args": [{"status": "success"}]})
        # The daemon's catch-up: the messages of the new channels newer than the page's
        # start, oldest first. Joined first, so nothing published meanwhile is missed (a
        # message may come both live and here: pages drop an id they have seen).
        missed = []
        for c in sorted(new - old):
            r = self.api.call("history", {"channel": f"event:{c}", "limit": self.history})
            for pub in (r.get("result") or {}).get("publications", []):
                args = pub.get("data")
                if isinstance(args, list) and args and args[0].get("id", 0) > start:
                    missed.append(args[0])
        for m in sorted(missed, key=lambda m: m["id"]):
            self.api.call("sio_emit", {"client": client, "event": "message", "args": [m]})
        log(f"set-filter {client}: {sorted(new)}, {len(missed)} newer than {start} sent again")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--secret", required=True, help="the HTTP target's signing secret")
    p.add_argument("--key", required=True, help="EVENT_DAEMON_KEY: the poster's token")
    p.add_argument("--max-clients", type=int, default=10000)
    p.add_argument("--history", type=int, default=100, help="messages per channel caught up")
    args = p.parse_args()
    daemon = Daemon(Api(args.api, args.api_key), args.key, args.max_clients, args.history)
    secret = args.secret.encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path == "/connect":
                return self.reply(200, daemon.connect(json.loads(body)))
            if self.path != "/events":
                return self.reply(404, {})
            if not verified(secret, self.headers, body):
                return self.reply(401, {})
            for e in json.loads(body)["events"]:
                try:
                    daemon.on_event(e)
                except Exception as err:  # one bad event must not lose the batch's others
                    log(f"event {e.get('type')} {e.get('event')}: {err!r}")
            self.reply(200, {})

        def do_GET(self):
            self.reply(200, {"last_id": daemon.last_id, "clients": len(daemon.clients)})

        def reply(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log(f"event daemon on 127.0.0.1:{args.port}, first id {daemon.last_id}")
    server.serve_forever()


if __name__ == "__main__":
    main()
