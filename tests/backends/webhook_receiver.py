#!/usr/bin/env python3
"""A webhook receiver for crates/groupcast/tests/backends.rs (standard
library only): checks every POST's signature as docs/backends.md
("Signatures") says (X-Groupcast-Signature: sha256=HMAC-SHA256(secret,
"webhook.<timestamp>.<body>"): a batch signed for an HTTP relay target,
"relay.…", is refused even under the same secret), refuses timestamps
more than 5 minutes from now (replays), keeps the events of the accepted
POSTs, and can fail the first requests to exercise retries.

Usage: webhook_receiver.py SECRET [FAIL_FIRST]
Prints "listening PORT". GET /events: the kept events, in arrival order;
GET /stats: {"requests": N, "failed_on_purpose": N, "bad_signatures": N,
"stale_timestamps": N}.
"""
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = sys.argv[1].encode()
FAIL_FIRST = int(sys.argv[2]) if len(sys.argv) > 2 else 0
LOCK = threading.Lock()
EVENTS = []
STATS = {"requests": 0, "failed_on_purpose": 0, "bad_signatures": 0, "stale_timestamps": 0}
# Timestamps further than this from now are refused: a batch captured on
# the way cannot be replayed later (Groupcast signs each attempt afresh).
MAX_AGE = 300


def verify(purpose, headers, body):
    """None when the batch is signed with SECRET for `purpose` (our own
    expectation, never taken from the request) at a current timestamp;
    else what is wrong ("bad_signatures" or "stale_timestamps")."""
    ts = headers.get("X-Groupcast-Timestamp", "")
    signed = purpose.encode() + b"." + ts.encode() + b"." + body
    want = "sha256=" + hmac.new(SECRET, signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, headers.get("X-Groupcast-Signature", "")):
        return "bad_signatures"
    if not ts.isdigit() or abs(time.time() - int(ts)) > MAX_AGE:
        return "stale_timestamps"
    return None


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
        wrong = verify("webhook", self.headers, body)
        with LOCK:
            STATS["requests"] += 1
            if STATS["failed_on_purpose"] < FAIL_FIRST:
                STATS["failed_on_purpose"] += 1
                return self.answer(500)
            if wrong:
                STATS[wrong] += 1
                return self.answer(401)
            EVENTS.extend(json.loads(body)["events"])
        self.answer(200)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
