#!/usr/bin/env python3
"""A small application backend written for Centrifugo's HTTP event proxy
(standard library only), used by crates/groupcast/tests/backends.rs as the
target of Groupcast's proxies. It behaves like seed 002's Django backend:
a session cookie authenticates, membership decides who may join a room,
messages are checked and HTML-escaped (XSS filtering) before anyone sees
them, and RPCs answer from the backend.

Usage: proxy_backend.py [PORT]   (0 or nothing: any free port)
Prints "listening PORT" once serving; GET /log returns every event it got.

Behaviour, by what the request carries:
  POST /connect    Cookie session=alice|bob: result (user, info, data,
                   channels ["news"]); session=banned: disconnect 4403;
                   session=slow: answers after 4 s; session=broken: HTTP 500;
                   session=garbage: a body that is not JSON; session=huge:
                   a valid answer over 1 MiB; no session:
                   error 1001 "login required".
  POST /subscribe  rooms:* channels: alice may, anyone else gets error 1003;
                   result info {"role": "member"}, data {"topic": CHANNEL}.
  POST /publish    text "<script>..." is escaped (result data replaced);
                   text "forbidden": error 1403 "moderated"; text "quiet":
                   skip_history.
  POST /rpc        method echo: data back; whoami: {"user": USER};
                   anything else: error 1404 "unknown method".
  POST /send       kept in the log, answered {"result": {}}.
  Expiry: session=brief connects for 1 s; POST /refresh extends it by 1 s
  once (info {"refreshed": 1}), then answers expired. Channel rooms:brief
  is subscribed for 1 s; POST /sub_refresh answers expired.
"""
import html
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = []
LOG_LOCK = threading.Lock()


def session_of(headers):
    for part in headers.get("Cookie", "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == "session":
            return v
    return ""


def connect(req, headers):
    s = session_of(headers)
    if s in ("alice", "bob"):
        return {"result": {"user": s, "info": {"name": s.title()},
                           "data": {"welcome": s}, "channels": ["news"]}}
    if s == "brief":
        return {"result": {"user": "brief", "expire_at": int(time.time()) + 1}}
    if s == "banned":
        return {"disconnect": {"code": 4403, "reason": "banned"}}
    if s == "slow":
        time.sleep(4)
        return {"result": {"user": "slow"}}
    if s == "broken":
        return 500
    if s == "garbage":
        return b"<html>oops</html>"
    if s == "huge":
        return {"result": {"user": "huge", "info": {"pad": "x" * (1 << 20)}}}
    return {"error": {"code": 1001, "message": "login required"}}


def subscribe(req, headers):
    ch = req.get("channel", "")
    if ch.startswith("rooms:") and req.get("user") != "alice":
        return {"error": {"code": 1003, "message": "not a member"}}
    if ch == "rooms:brief":
        return {"result": {"expire_at": int(time.time()) + 1}}
    return {"result": {"info": {"role": "member"}, "data": {"topic": ch}}}


def publish(req, headers):
    text = (req.get("data") or {}).get("text", "")
    if text == "forbidden":
        return {"error": {"code": 1403, "message": "moderated"}}
    if text == "quiet":
        return {"result": {"skip_history": True}}
    escaped = html.escape(text)
    if escaped != text:
        return {"result": {"data": {"text": escaped, "by": req.get("user")}}}
    return {"result": {}}


def rpc(req, headers):
    if req.get("method") == "echo":
        return {"result": {"data": req.get("data")}}
    if req.get("method") == "whoami":
        return {"result": {"data": {"user": req.get("user")}}}
    return {"error": {"code": 1404, "message": "unknown method"}}


def send(req, headers):
    return {"result": {}}


REFRESHED = set()


def refresh(req, headers):
    client = req.get("client")
    if client in REFRESHED:
        return {"result": {"expired": True}}
    REFRESHED.add(client)
    return {"result": {"expire_at": int(time.time()) + 1, "info": {"refreshed": 1}}}


def sub_refresh(req, headers):
    return {"result": {"expired": True}}


ROUTES = {"/connect": connect, "/subscribe": subscribe, "/publish": publish,
          "/rpc": rpc, "/send": send, "/refresh": refresh,
          "/sub_refresh": sub_refresh}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/log":
            with LOG_LOCK:
                body = json.dumps(LOG).encode()
            return self.answer(200, body)
        self.answer(404, b"{}")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        route = ROUTES.get(self.path)
        if route is None:
            return self.answer(404, b"{}")
        req = json.loads(raw)
        with LOG_LOCK:
            LOG.append({"path": self.path, "body": req,
                        "cookie": self.headers.get("Cookie"),
                        "content_type": self.headers.get("Content-Type")})
        out = route(req, self.headers)
        if isinstance(out, int):
            return self.answer(out, b"{}")
        if isinstance(out, bytes):
            return self.answer(200, out)
        self.answer(200, json.dumps(out).encode())


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
