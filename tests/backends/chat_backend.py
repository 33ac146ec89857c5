#!/usr/bin/env python3
"""Seed 002's chat, notification and status endpoints, served by Groupcast's
relay routes with this process as their backend (standard library only;
used by crates/groupcast/tests/backends.rs and documented in
docs/backends.md). The browser side is unchanged: plain WebSockets on
/ws/chat/<room>/, /ws/notifications/ and /ws/status/ with ?token=..., JSON
frames with a "type".

Usage: chat_backend.py GROUPCAST_URL API_KEY SECRET
Prints "listening PORT". It serves:
  POST /connect  the relay routes' connect proxy (Centrifugo's format plus
                 the relay fields): ?token=tok-<user> authenticates <user>;
                 anything else is error 1001 "login required". The answer
                 binds the connection to a target and subscribes it to its
                 room (chat), its personal channel (notifications) or the
                 status channel.
  POST /events   the relay target "django" (HTTP): batches of
                 join/message/heartbeat/leave events, signed with SECRET
                 for the purpose "relay" (docs/backends.md, "Signatures":
                 X-Groupcast-Signature is sha256=HMAC-SHA256(SECRET,
                 "relay.<timestamp>.<body>")); a bad signature (a webhook's
                 included) is refused (401) and counted, and so is a
                 timestamp more than 5 minutes from now (a replay).
  GET /stats     {"bad_signatures": N, "stale_timestamps": N, "events": N,
                 "types": {...}}.
Message handling, as the seed's consumers: chat_message is HTML-escaped
(XSS filtering) and published to the room; typing goes to the room;
edit_message and delete_message are validated (only the author, known
ids); status_update is published to the status channel as user_status; a
frame that is not JSON, or an unknown type, gets {"type": "error"} back to
its sender only (API relay_send).
"""
import hashlib
import hmac
import html
import itertools
import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GROUPCAST, API_KEY, SECRET = sys.argv[1], sys.argv[2], sys.argv[3].encode()
LOCK = threading.Lock()
STATS = {"bad_signatures": 0, "stale_timestamps": 0, "events": 0, "types": {}}
# Timestamps further than this from now are refused: a batch captured on
# the way cannot be replayed later (Groupcast signs each attempt afresh).
MAX_AGE = 300
MESSAGES = {}  # id -> {"author": user, "room": room}
IDS = itertools.count(1)


def api(method, params):
    req = urllib.request.Request(
        f"{GROUPCAST}/api/{method}", data=json.dumps(params).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        out = json.loads(r.read())
    if "error" in out:
        raise RuntimeError(f"{method}: {out['error']}")
    return out["result"]


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


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def connect(req):
    relay = req.get("relay", {})
    token = relay.get("query", {}).get("token", "")
    if not token.startswith("tok-"):
        return {"error": {"code": 1001, "message": "login required"}}
    user = token[4:]
    path = relay.get("path", "")
    if path.startswith("/ws/chat/"):
        room = relay["params"]["room"]
        channels, meta = [f"chat:{room}"], {"endpoint": "chat", "room": room}
    elif path == "/ws/notifications/":
        channels, meta = [f"notify:#{user}"], {"endpoint": "notifications"}
    else:
        channels, meta = ["status"], {"endpoint": "status"}
    return {"result": {"user": user, "target": "django", "meta": meta,
                       "channels": channels}}


def error_to(client, message):
    api("relay_send", {"client": client,
                       "text": json.dumps({"type": "error", "message": message})})


def handle(event):
    if event["type"] != "message":
        return
    client, user, meta = event["client"], event["user"], event.get("meta") or {}
    try:
        frame = json.loads(event.get("data", ""))
        kind = frame["type"]
    except (ValueError, KeyError, TypeError):
        return error_to(client, "invalid JSON")
    room = meta.get("room")
    if kind == "chat_message" and room:
        msg_id = next(IDS)
        MESSAGES[msg_id] = {"author": user, "room": room}
        api("publish", {"channel": f"chat:{room}", "data": {
            "type": "chat_message",
            "message": {"id": msg_id, "content": html.escape(str(frame.get("message", ""))),
                        "author": {"username": user}, "timestamp": now(),
                        "channel_id": frame.get("channel_id"),
                        "reply_to": frame.get("reply_to")}}})
    elif kind == "typing" and room:
        api("publish", {"channel": f"chat:{room}", "exclude_client": client, "data": {
            "type": "typing", "user": user, "is_typing": bool(frame.get("is_typing"))}})
    elif kind in ("edit_message", "delete_message") and room:
        known = MESSAGES.get(frame.get("message_id"))
        if known is None or known["author"] != user:
            return error_to(client, "not your message")
        data = {"type": kind, "message_id": frame["message_id"]}
        if kind == "edit_message":
            data["new_content"] = html.escape(str(frame.get("new_content", "")))
        api("publish", {"channel": f"chat:{room}", "data": data})
    elif kind == "status_update":
        api("publish", {"channel": "status", "data": {
            "type": "user_status", "user_id": user, "status": frame.get("status"),
            "last_seen": now()}})
    elif kind == "mark_read":
        api("relay_send", {"client": client, "text": json.dumps(
            {"type": "marked_read", "notification_id": frame.get("notification_id")})})
    else:
        error_to(client, f"unknown type {kind!r}")


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
            self.answer(200, json.dumps(STATS).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/connect":
            return self.answer(200, json.dumps(connect(json.loads(body))).encode())
        if self.path != "/events":
            return self.answer(404)
        wrong = verify("relay", self.headers, body)
        if wrong:
            with LOCK:
                STATS[wrong] += 1
            return self.answer(401)
        # One batch at a time, in order (Groupcast sends the next batch of a
        # target only after this one is answered).
        with LOCK:
            for event in json.loads(body)["events"]:
                STATS["events"] += 1
                STATS["types"][event["type"]] = STATS["types"].get(event["type"], 0) + 1
                handle(event)
        self.answer(200)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
