#!/usr/bin/env python3
"""Seed 004's backend processes, behind Groupcast's relay routes (Python standard library only).

    backend.py gateway --port 9100 --lobby 9101 --games 9102 --api URL --api-key KEY --secret S

The seed had an HTTP handler that spawned a process per session, and set the `X-WS-Relay` header
(target process, metadata) so that the middleware bound the WebSocket to it; the relay monitored
the process and closed its connections when it exited. Here:

* the **gateway** is the handler: Groupcast's connect proxy for the route asks it about each new
  WebSocket (`POST /connect`); it answers with the target process and the metadata
  (`user_id` from the query string, as in the seed). It starts the two handler processes,
  `lobby` and `games`, and **monitors** them: when one exits, for whatever reason, it tells
  Groupcast (`relay_target_gone`), which closes that process's connections with 3015 on every
  edge, and starts the process again. `GET /processes` lists their pids.
* a **handler** (`backend.py handler --name lobby --port 9101 ...`) is one process: it receives its
  connections' events (`join`, `message`, `heartbeat`, `leave`, with the metadata) as signed
  HTTP POSTs, keeps the clients it has, and acts through the server API by client id:
  `relay_send` (answer one client, or broadcast to the clients it tracks), `relay_transfer`
  (hand a connection to the other process) and `relay_close`.

The messages a client sends are JSON: {"type": "say", "text"} (broadcast to this process's
clients), {"type": "whoami"} (answered to the sender only), {"type": "transfer", "to": "games"},
{"type": "bye"} (the process closes the connection: 1000 "Session ended"). What the processes send
is JSON with an "event" field: welcome, said, you, joined, left, heartbeat.
"""

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # examples/
from groupcast_backend import Api, log, verified  # noqa: E402

TARGETS = ("lobby", "games")


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def log_message(self, fmt, *args):
        pass


# ------------------------------------------------------------------ a handler process


class Process:
    """One backend process: its clients, and what it does with their events."""

    def __init__(self, name, api):
        self.name = name
        self.api = api
        self.clients = {}  # client id -> metadata
        self.seen = set()  # (client, seq): a batch whose answer was lost comes again
        self.lock = threading.Lock()

    def send(self, client, obj):
        self.api.call("relay_send", {"client": client, "text": json.dumps(obj)})

    def broadcast(self, obj, but=None):
        with self.lock:
            clients = [c for c in self.clients if c != but]
        for c in clients:
            self.send(c, obj)

    def on_event(self, e):
        key = (e["client"], e["seq"])
        with self.lock:
            if key in self.seen:
                return
            self.seen.add(key)
        client, meta = e["client"], e.get("meta") or {}
        user = meta.get("user_id", "")
        kind = e["type"]
        if kind == "join":
            with self.lock:
                self.clients[client] = meta
            self.send(client, {"event": "welcome", "process": self.name, "pid": os.getpid(),
                               "client": client, "metadata": meta, "node": e["node"]})
            self.broadcast({"event": "joined", "process": self.name, "user_id": user}, but=client)
        elif kind == "leave":
            with self.lock:
                self.clients.pop(client, None)
            self.broadcast({"event": "left", "process": self.name, "user_id": user,
                            "code": e["code"], "reason": e["reason"]})
        elif kind == "heartbeat":
            self.send(client, {"event": "heartbeat", "process": self.name,
                               "uptime_ms": e["uptime_ms"], "message_count": e["messages"]})
        elif kind == "message":
            self.on_message(client, user, meta, e)

    def on_message(self, client, user, meta, e):
        try:
            msg = json.loads(e.get("data", ""))
            kind = msg.get("type") if isinstance(msg, dict) else None
        except ValueError:
            kind = None
        if kind == "say":
            self.broadcast({"event": "said", "process": self.name, "user_id": user,
                            "text": str(msg.get("text", ""))})
        elif kind == "whoami":
            self.send(client, {"event": "you", "process": self.name, "client": client,
                               "metadata": meta})
        elif kind == "transfer" and msg.get("to") in TARGETS and msg["to"] != self.name:
            # The connection leaves this process (a `leave` with code 0, "transferred") and
            # joins the other one, keeping its metadata.
            self.api.call("relay_transfer", {"client": client, "target": msg["to"]})
        elif kind == "bye":
            self.api.call("relay_close", {"client": client, "code": 1000,
                                          "reason": "Session ended"})
        else:
            self.send(client, {"event": "error", "process": self.name,
                               "message": "unknown message type"})


def run_handler(args):
    api = Api(args.api, args.api_key)
    process = Process(args.name, api)
    secret = args.secret.encode()

    class Events(JsonHandler):
        def do_POST(self):
            body = self.body()
            if self.path != "/events":
                return self.reply(404, {"error": "not found"})
            if not verified(secret, self.headers, body):
                return self.reply(401, {"error": "bad signature"})
            for e in json.loads(body)["events"]:
                try:
                    process.on_event(e)
                except Exception as err:  # one bad event must not lose the rest of the batch
                    log(f"{args.name}: event {e.get('type')} {e.get('client')}: {err!r}")
            self.reply(200, {})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Events)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log(f"{args.name}: pid {os.getpid()} on 127.0.0.1:{args.port}")
    server.serve_forever()


# ------------------------------------------------------------------ the gateway


class Supervisor:
    """Starts the handler processes, and when one exits declares its target gone and restarts it."""

    def __init__(self, args, api):
        self.args = args
        self.api = api
        self.procs = {}
        self.stopping = False
        self.lock = threading.Lock()

    def spawn(self, name):
        port = {"lobby": self.args.lobby, "games": self.args.games}[name]
        cmd = [sys.executable, os.path.abspath(__file__), "handler", "--name", name,
               "--port", str(port), "--api", self.args.api, "--api-key", self.args.api_key,
               "--secret", self.args.secret]
        proc = subprocess.Popen(cmd)
        with self.lock:
            self.procs[name] = proc
        threading.Thread(target=self.monitor, args=(name, proc), daemon=True).start()

    def monitor(self, name, proc):
        code = proc.wait()
        if self.stopping:
            return
        # The seed's relay closed a process's connections when it exited: here the gateway
        # tells Groupcast, which closes them on every edge (3015 backend target gone).
        log(f"gateway: process {name} (pid {proc.pid}) exited with {code}; its connections close")
        self.api.call("relay_target_gone", {"target": name})
        time.sleep(0.5)
        if not self.stopping:
            self.spawn(name)

    def pids(self):
        with self.lock:
            return {n: p.pid for n, p in self.procs.items() if p.poll() is None}

    def stop(self):
        self.stopping = True
        with self.lock:
            procs = list(self.procs.items())
        for _, p in procs:
            p.terminate()
        for name, p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
            self.api.call("relay_target_gone", {"target": name})


def run_gateway(args):
    api = Api(args.api, args.api_key)
    sup = Supervisor(args, api)
    for name in TARGETS:
        sup.spawn(name)

    class Gateway(JsonHandler):
        def do_POST(self):
            body = self.body()
            if self.path != "/connect":
                return self.reply(404, {"error": "not found"})
            req = json.loads(body)
            query = (req.get("relay") or {}).get("query") or {}
            user_id = query.get("user_id", "")
            if not user_id:
                # The seed read user_id from the query; without one there is no session.
                return self.reply(200, {"error": {"code": 1001, "message": "user_id required"}})
            target = query.get("process", "lobby")
            if target not in TARGETS:
                return self.reply(200, {"error": {"code": 1002, "message": "no such process"}})
            self.reply(200, {"result": {"user": user_id, "target": target,
                                        "meta": {"user_id": user_id}}})

        def do_GET(self):
            self.body()
            if self.path == "/processes":
                return self.reply(200, sup.pids())
            self.reply(404, {"error": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Gateway)

    def stop(*_):
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"gateway: pid {os.getpid()} on 127.0.0.1:{args.port}")
    try:
        server.serve_forever()
    finally:
        sup.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["gateway", "handler"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", choices=TARGETS, help="handler: which process")
    p.add_argument("--lobby", type=int, help="gateway: the lobby process's port")
    p.add_argument("--games", type=int, help="gateway: the games process's port")
    p.add_argument("--api", required=True, help="Groupcast's API, http://HOST:PORT/api")
    p.add_argument("--api-key", required=True)
    p.add_argument("--secret", required=True, help="the HTTP targets' signing secret")
    args = p.parse_args()
    if args.role == "gateway":
        run_gateway(args)
    else:
        run_handler(args)


if __name__ == "__main__":
    main()
