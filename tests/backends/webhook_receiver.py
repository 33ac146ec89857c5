#!/usr/bin/env python3
"""A webhook receiver for crates/groupcast/tests/backends.rs (standard
library only): checks every POST's signature as docs/backends.md says
(X-Groupcast-Signature: sha256=HMAC-SHA256(secret, "<timestamp>.<body>")),
keeps the events of the well-signed ones, and can fail the first requests
to exercise retries.

Usage: webhook_receiver.py SECRET [FAIL_FIRST]
Prints "listening PORT". GET /events: the kept events, in arrival order;
GET /stats: {"requests": N, "failed_on_purpose": N, "bad_signatures": N}.
"""
import hashlib
import hmac
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = sys.argv[1].encode()
FAIL_FIRST = int(sys.argv[2]) if len(sys.argv) > 2 else 0
LOCK = threading.Lock()
EVENTS = []
STATS = {"requests": 0, "failed_on_purpose": 0, "bad_signatures": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"{}"):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            out = EVENTS if self.path == "/events" else STATS
            self.answer(200, json.dumps(out).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ts = self.headers.get("X-Groupcast-Timestamp", "")
        want = "sha256=" + hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        with LOCK:
            STATS["requests"] += 1
            if STATS["failed_on_purpose"] < FAIL_FIRST:
                STATS["failed_on_purpose"] += 1
                return self.answer(500)
            if not hmac.compare_digest(want, self.headers.get("X-Groupcast-Signature", "")):
                STATS["bad_signatures"] += 1
                return self.answer(401)
            EVENTS.extend(json.loads(body)["events"])
        self.answer(200)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
