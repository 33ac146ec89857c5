#!/usr/bin/env python3
"""Seed 002's server side (the Django Channels chat, notification and status consumers) as a
small backend of Groupcast's relay routes. Python standard library only.

Groupcast holds the browsers' WebSockets (/ws/chat/<room>/, /ws/notifications/, /ws/status/);
this process decides and answers:

  POST /groupcast/connect   the routes' connect proxy: checks ?token= (an HS256 JWT this process
                            minted) and names the connection's user, target and channels
  POST /groupcast/events    the relay target "django": signed batches of join / message / leave
                            events, from every edge; every message frame is validated here
  POST /groupcast/webhooks  channel_occupied / channel_vacated of each user's "online:<id>"
                            channel: the user's first connection anywhere opened, or their last
                            one closed (Groupcast's membership decides, once per cluster)
  POST /api/token/          the seed's token endpoint: {username, password} -> {access, refresh}
  POST /api/notifications/  the application creating a notification for a user (Bearer token)
  GET  /media/<id>/<name>   a file uploaded over the chat socket
  GET  /healthz

It acts through Groupcast's HTTP API: `publish` to a room, a user's notification channel or the
status channel, `relay_send` to one connection (errors, upload progress), `relay_close`.

Environment: CHAT_GROUPCAST (Groupcast's http://host:port), CHAT_API_KEY, CHAT_SIGNING_SECRET
(the relay target's and the webhook's secret), CHAT_TOKEN_SECRET (the JWT key),
CHAT_PAGE_ORIGIN (the page's origin, for CORS), CHAT_LISTEN (host:port).
"""
import base64
import collections
import hashlib
import hmac
import html
import itertools
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GROUPCAST = os.environ["CHAT_GROUPCAST"].rstrip("/")
API_KEY = os.environ["CHAT_API_KEY"]
SIGNING_SECRET = os.environ["CHAT_SIGNING_SECRET"].encode()
TOKEN_SECRET = os.environ["CHAT_TOKEN_SECRET"].encode()
PAGE_ORIGIN = os.environ.get("CHAT_PAGE_ORIGIN", "")
HOST, PORT = os.environ.get("CHAT_LISTEN", "127.0.0.1:9100").rsplit(":", 1)

# The seed's settings.py.
WEBSOCKET_RATE_LIMIT = 60  # messages per minute, per user (all of the user's connections)
WEBSOCKET_MESSAGE_MAX_SIZE = 1024 * 1024  # bytes of one frame
RATE_WINDOW = 60.0  # seconds, rolling
# What this backend publishes must also fit the way to the subscribers: on the local cluster the
# API goes through nginx (client_max_body_size 1 MiB) and publications cross NATS (max_payload
# 1 MiB), each with its own envelope around the data. A message whose publication (HTML-escaped,
# with its envelope) is larger is answered MESSAGE_TOO_LARGE.
PUBLICATION_MAX_SIZE = 1000 * 1000
# Typing indicators are relayed, not stored: they do not count as messages, but a user's are
# dropped beyond this many per second (the seed's client throttles them to one per second).
TYPING_PER_SECOND = 2
# Uploads over the chat socket: announced with upload_file, sent as base64 upload_chunk frames.
UPLOAD_MAX_BYTES = 10 * 1024 * 1024
UPLOAD_CHUNK_SIZE = 256 * 1024  # raw bytes per chunk (base64: a third more, well under 1 MB)
FILES_MAX_BYTES = 64 * 1024 * 1024  # all kept files; the oldest go first
UPLOADS_MAX_BYTES = 64 * 1024 * 1024  # all uploads in progress, by their announced sizes
MESSAGES_KEPT = 10000
ACCESS_TTL, REFRESH_TTL = 3600, 86400
STATUSES = ("online", "away", "busy", "offline")
USERNAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Demo accounts: any username of that shape logs in with this password (a real deployment keeps
# Django's users and checks their passwords).
DEMO_PASSWORD = "demo"

LOCK = threading.RLock()
USERS = {}  # username -> {"id", "username", "avatar"}
USERS_BY_ID = {}
MESSAGES = collections.OrderedDict()  # id -> {"author": id, "room", "content"}
MESSAGE_IDS = itertools.count(1)
NOTIFICATIONS = {}  # id -> {"user": id, "read": bool}
NOTIFICATION_IDS = itertools.count(1)
SENT = collections.defaultdict(collections.deque)  # user id -> times of counted messages
TYPED = collections.defaultdict(collections.deque)  # user id -> times of typing indicators
PRESENCE = {}  # user id -> {"status", "last_seen", "seq"} (seq: the webhook's, per channel)
SEEN_WEBHOOKS = collections.OrderedDict()  # webhook event ids already applied
# client id -> last relay event seq applied (a retried batch comes again); a connection whose
# leave never came (its edge died) is forgotten once 100,000 newer ones are known.
LAST_SEQ = collections.OrderedDict()
CLIENTS_KEPT = 100000
UPLOADS = {}  # upload id -> {"user", "client", "room", "name", "size", "type", "chunks", "got"}
FILES = collections.OrderedDict()  # file id -> {"name", "type", "data"}


# ------------------------------------------------------------------------------------- helpers


def now_iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def api(method, params):
    """Calls Groupcast's HTTP API; returns (result, error)."""
    req = urllib.request.Request(
        f"{GROUPCAST}/api/{method}", data=json.dumps(params).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            out = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"api {method}: {e}", flush=True)
        return None, {"code": 0, "message": str(e)}
    if "error" in out:
        print(f"api {method}: {out['error']}", flush=True)
        return None, out["error"]
    return out.get("result", {}), None


def send_to(client, frame):
    api("relay_send", {"client": client, "text": json.dumps(frame)})


def error_to(client, code, text):
    """The seed's error shape, to one connection."""
    send_to(client, {"type": "error", "error": text, "code": code})


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(user, kind, ttl):
    header = {"alg": "HS256", "typ": "JWT"}
    t = int(time.time())
    claims = {"token_type": kind, "sub": str(user["id"]), "user_id": user["id"],
              "username": user["username"], "iat": t, "exp": t + ttl,
              "jti": secrets.token_hex(16)}
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(TOKEN_SECRET, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def verify_token(token):
    """The access token's user, or None (wrong signature or algorithm, expired, not access)."""
    try:
        h, c, s = token.split(".")
        header = json.loads(b64url_decode(h))
        claims = json.loads(b64url_decode(c))
        sig = b64url_decode(s)
    except (ValueError, TypeError):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return None
    want = hmac.new(TOKEN_SECRET, f"{h}.{c}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(want, sig) or not isinstance(claims, dict):
        return None
    if claims.get("token_type") != "access" or not isinstance(claims.get("exp"), int):
        return None
    if claims["exp"] <= time.time():
        return None
    with LOCK:
        return USERS_BY_ID.get(claims.get("user_id"))


def user_for(username):
    with LOCK:
        user = USERS.get(username)
        if user is None:
            uid = len(USERS) + 1
            user = {"id": uid, "username": username, "avatar": f"/media/avatars/{username}.jpg"}
            USERS[username] = user
            USERS_BY_ID[uid] = user
        return user


def verify_signature(purpose, headers, body):
    """Groupcast's signature (docs/backends.md, Signatures), for our own purpose string, at a
    timestamp within 5 minutes of our clock."""
    ts = headers.get("X-Groupcast-Timestamp", "")
    signed = purpose.encode() + b"." + ts.encode() + b"." + body
    want = "sha256=" + hmac.new(SIGNING_SECRET, signed, hashlib.sha256).hexdigest()
    return (hmac.compare_digest(want, headers.get("X-Groupcast-Signature", ""))
            and ts.isdigit() and abs(time.time() - int(ts)) <= 300)


def allowed(window, user_id, limit, span, t):
    """A rolling window of `span` seconds: True (and counted) when under `limit`."""
    q = window[user_id]
    while q and q[0] <= t - span:
        q.popleft()
    if len(q) >= limit:
        return False
    q.append(t)
    return True


# ------------------------------------------------------------------------ the connect proxy


def connect(req):
    """Who a new connection is, and what it is subscribed to. A bad or missing token is not
    refused here: the connection is bound anonymously, without channels, and its join gets the
    seed's AUTHENTICATION_FAILED error, then a close (4001)."""
    relay = req.get("relay") or {}
    path = relay.get("path", "")
    if path.startswith("/ws/chat/"):
        endpoint, room = "chat", (relay.get("params") or {}).get("room", "")
    elif path == "/ws/notifications/":
        endpoint, room = "notifications", None
    else:
        endpoint, room = "status", None
    token = (relay.get("query") or {}).get("token", "")
    user = verify_token(token) if token else None
    if user is None:
        why = "Invalid or expired token." if token else "Authentication required."
        return {"result": {"target": "django",
                           "meta": {"endpoint": endpoint, "auth_error": why}}}
    uid = str(user["id"])
    # Every connection of a user holds "online:<id>": Groupcast's channel_occupied and
    # channel_vacated webhooks then say when the user's first connection anywhere opens and the
    # last one closes.
    channels = [f"online:{uid}"]
    if endpoint == "chat":
        channels.append(f"chat:{room}")
    elif endpoint == "notifications":
        channels.append(f"notify:#{uid}")
    else:
        channels.append("status:all")
    meta = {"endpoint": endpoint, "user_id": user["id"], "username": user["username"]}
    if room:
        meta["room"] = room
    return {"result": {"user": uid, "target": "django", "meta": meta, "channels": channels}}


# ---------------------------------------------------------------------------- relay events


def on_event(event):
    client, kind = event.get("client"), event.get("type")
    seq = event.get("seq", 0)
    if LAST_SEQ.get(client, -1) >= seq:
        return  # a batch sent again after its answer was lost
    LAST_SEQ[client] = seq
    LAST_SEQ.move_to_end(client)
    while len(LAST_SEQ) > CLIENTS_KEPT:
        LAST_SEQ.popitem(last=False)
    meta = event.get("meta") or {}
    if kind == "leave":
        LAST_SEQ.pop(client, None)
        for uid, up in list(UPLOADS.items()):
            if up["client"] == client:
                del UPLOADS[uid]
        return
    if meta.get("auth_error"):
        if kind == "join":
            error_to(client, "AUTHENTICATION_FAILED", meta["auth_error"])
            api("relay_close", {"client": client, "code": 4001, "reason": "AUTHENTICATION_FAILED"})
        return
    if kind == "join":
        if meta.get("endpoint") == "status":
            # Who is online now; changes follow on the status channel.
            for uid, p in sorted(PRESENCE.items()):
                send_to(client, user_status(uid, p))
        return
    if kind != "message":
        return
    on_frame(client, meta, event)


def user_status(uid, p):
    return {"type": "user_status", "user_id": uid, "status": p["status"],
            "last_seen": p["last_seen"]}


def on_frame(client, meta, event):
    uid = meta["user_id"]
    if event.get("frame") != "text":
        return error_to(client, "INVALID_MESSAGE", "Binary frames are not accepted.")
    text = event.get("data", "")
    t = time.time()
    if len(text.encode()) > WEBSOCKET_MESSAGE_MAX_SIZE:
        return error_to(client, "MESSAGE_TOO_LARGE",
                        f"Message exceeds {WEBSOCKET_MESSAGE_MAX_SIZE} bytes.")
    try:
        frame = json.loads(text)
        kind = frame["type"]
    except (ValueError, KeyError, TypeError):
        frame, kind = None, None
    if kind in ("typing", "typing_indicator"):
        if allowed(TYPED, uid, TYPING_PER_SECOND, 1.0, t):
            typing(client, meta, frame)
        return
    # Upload chunks are bounded by the file size announced (and accepted) in upload_file.
    if kind != "upload_chunk" and not allowed(SENT, uid, WEBSOCKET_RATE_LIMIT, RATE_WINDOW, t):
        return error_to(client, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded. Please slow down.")
    if not isinstance(frame, dict) or not isinstance(kind, str):
        return error_to(client, "INVALID_MESSAGE", "Malformed message.")
    handler = HANDLERS.get((meta.get("endpoint"), kind))
    if handler is None:
        return error_to(client, "INVALID_MESSAGE", f"Unknown message type: {kind[:64]}")
    handler(client, meta, frame)


def author(meta):
    return USERS_BY_ID[meta["user_id"]]


def room_channel(meta):
    return f"chat:{meta['room']}"


def publish(client, channel, data, exclude=None):
    """Publishes to the channel; tells the sender (in the seed's error shape) when it cannot."""
    if len(json.dumps(data).encode()) > PUBLICATION_MAX_SIZE:
        error_to(client, "MESSAGE_TOO_LARGE", "Message is too large once escaped.")
        return False
    params = {"channel": channel, "data": data}
    if exclude:
        params["exclude_client"] = exclude
    _, err = api("publish", params)
    if err:
        error_to(client, "SERVER_ERROR", "The message could not be delivered. Please retry.")
    return err is None


def chat_message(client, meta, frame):
    content = frame.get("message")
    if not isinstance(content, str) or not content.strip():
        return error_to(client, "INVALID_MESSAGE", "message must be non-empty text.")
    reply_to = frame.get("reply_to")
    if reply_to is not None and reply_to not in MESSAGES:
        return error_to(client, "INVALID_MESSAGE", "reply_to is not a message of this room.")
    send_chat(client, meta, html.escape(content), frame.get("channel_id"), reply_to, [])


def send_chat(client, meta, content, channel_id, reply_to, attachments):
    msg_id = next(MESSAGE_IDS)
    message = {"id": msg_id, "content": content, "author": author(meta), "timestamp": now_iso(),
               "channel_id": channel_id if channel_id is not None else meta["room"],
               "reply_to": reply_to, "attachments": attachments}
    if publish(client, room_channel(meta), {"type": "chat_message", "message": message}):
        MESSAGES[msg_id] = {"author": meta["user_id"], "room": meta["room"]}
        while len(MESSAGES) > MESSAGES_KEPT:
            MESSAGES.popitem(last=False)


def own_message(client, meta, frame):
    """The message an edit or delete names, when it is the sender's own in this room."""
    known = MESSAGES.get(frame.get("message_id"))
    if known is None or known["room"] != meta["room"]:
        error_to(client, "INVALID_MESSAGE", "No such message in this room.")
        return None
    if known["author"] != meta["user_id"]:
        error_to(client, "PERMISSION_DENIED", "You can only change your own messages.")
        return None
    return known


def edit_message(client, meta, frame):
    new = frame.get("new_content")
    if not isinstance(new, str) or not new.strip():
        return error_to(client, "INVALID_MESSAGE", "new_content must be non-empty text.")
    if own_message(client, meta, frame) is None:
        return
    publish(client, room_channel(meta), {
        "type": "edit_message", "message_id": frame["message_id"],
        "new_content": html.escape(new), "edited_at": now_iso()})


def delete_message(client, meta, frame):
    if own_message(client, meta, frame) is None:
        return
    if publish(client, room_channel(meta),
               {"type": "delete_message", "message_id": frame["message_id"]}):
        MESSAGES.pop(frame["message_id"], None)


def typing(client, meta, frame):
    data = {"type": "typing", "user_id": meta["user_id"], "username": meta["username"],
            "channel_id": frame.get("channel_id"), "is_typing": bool(frame.get("is_typing"))}
    channel = room_channel(meta) if meta["endpoint"] == "chat" else "status:all"
    publish(client, channel, data, exclude=client)


def status_update(client, meta, frame):
    status = frame.get("status")
    if status not in STATUSES:
        return error_to(client, "INVALID_MESSAGE", f"status must be one of {', '.join(STATUSES)}.")
    uid = meta["user_id"]
    p = PRESENCE.setdefault(uid, {"status": "online", "last_seen": now_iso(), "seq": -1})
    p["status"], p["last_seen"] = status, now_iso()
    publish(client, "status:all", user_status(uid, p))


def mark_read(client, meta, frame):
    note = NOTIFICATIONS.get(frame.get("notification_id"))
    if note is None:
        return error_to(client, "INVALID_MESSAGE", "No such notification.")
    if note["user"] != meta["user_id"]:
        return error_to(client, "PERMISSION_DENIED", "Not your notification.")
    note["read"] = True
    uid = meta["user_id"]
    unread = sum(1 for n in NOTIFICATIONS.values() if n["user"] == uid and not n["read"])
    # To every notification socket of the user (other tabs update their count too).
    publish(client, f"notify:#{uid}", {"type": "notification_read",
                                       "notification_id": frame["notification_id"],
                                       "unread_count": unread})


def upload_file(client, meta, frame):
    name, size = frame.get("file_name"), frame.get("file_size")
    if not isinstance(name, str) or not name or len(name) > 255:
        return error_to(client, "INVALID_MESSAGE", "file_name is required.")
    if not isinstance(size, int) or size <= 0:
        return error_to(client, "INVALID_MESSAGE", "file_size must be a positive integer.")
    if size > UPLOAD_MAX_BYTES:
        return error_to(client, "MESSAGE_TOO_LARGE", f"Files are limited to {UPLOAD_MAX_BYTES} bytes.")
    if sum(1 for u in UPLOADS.values() if u["client"] == client) >= 3:
        return error_to(client, "RATE_LIMIT_EXCEEDED", "Too many uploads at once.")
    if sum(u["size"] for u in UPLOADS.values()) + size > UPLOADS_MAX_BYTES:
        return error_to(client, "RATE_LIMIT_EXCEEDED", "The server is busy with uploads; retry later.")
    upload_id = secrets.token_hex(8)
    UPLOADS[upload_id] = {"user": meta["user_id"], "client": client, "room": meta["room"],
                          "name": name, "size": size,
                          "type": str(frame.get("file_type") or "application/octet-stream")[:100],
                          "channel_id": frame.get("channel_id"), "chunks": {}, "got": 0}
    send_to(client, {"type": "upload_started", "upload_id": upload_id,
                     "chunk_size": UPLOAD_CHUNK_SIZE,
                     "chunks": (size + UPLOAD_CHUNK_SIZE - 1) // UPLOAD_CHUNK_SIZE})


def upload_chunk(client, meta, frame):
    up = UPLOADS.get(frame.get("upload_id"))
    if up is None or up["client"] != client:
        return error_to(client, "INVALID_MESSAGE", "No such upload on this connection.")
    index, chunks = frame.get("chunk_index"), (up["size"] + UPLOAD_CHUNK_SIZE - 1) // UPLOAD_CHUNK_SIZE
    try:
        data = base64.b64decode(frame.get("chunk_data", ""), validate=True)
    except (ValueError, TypeError):
        return error_to(client, "INVALID_MESSAGE", "chunk_data must be base64.")
    want = min(UPLOAD_CHUNK_SIZE, up["size"] - UPLOAD_CHUNK_SIZE * index) \
        if isinstance(index, int) and 0 <= index < chunks else -1
    if want < 0 or len(data) != want or index in up["chunks"]:
        return error_to(client, "INVALID_MESSAGE", "Bad chunk_index or chunk size.")
    up["chunks"][index] = data
    up["got"] += len(data)
    upload_id = frame["upload_id"]
    send_to(client, {"type": "upload_progress", "upload_id": upload_id,
                     "received": up["got"], "file_size": up["size"]})
    if up["got"] < up["size"]:
        return
    del UPLOADS[upload_id]
    file_id = secrets.token_hex(8)
    FILES[file_id] = {"name": up["name"], "type": up["type"],
                      "data": b"".join(up["chunks"][i] for i in range(chunks))}
    while sum(len(f["data"]) for f in FILES.values()) > FILES_MAX_BYTES:
        FILES.popitem(last=False)
    name = urllib.parse.quote(up["name"], safe="")
    attachment = {"id": file_id, "file_name": html.escape(up["name"]), "file_size": up["size"],
                  "file_type": html.escape(up["type"]),
                  "url": f"http://{HOST}:{PORT}/media/{file_id}/{name}"}
    send_to(client, {"type": "upload_complete", "upload_id": upload_id, "attachment": attachment})
    send_chat(client, meta, "", up["channel_id"], None, [attachment])


HANDLERS = {
    ("chat", "chat_message"): chat_message,
    ("chat", "edit_message"): edit_message,
    ("chat", "delete_message"): delete_message,
    ("chat", "upload_file"): upload_file,
    ("chat", "upload_chunk"): upload_chunk,
    ("notifications", "mark_read"): mark_read,
    ("status", "status_update"): status_update,
}


# ----------------------------------------------------------------------------- webhooks


def on_webhook(event):
    """A user's online:<id> channel occupied (first connection anywhere) or vacated (last one
    gone, an edge that died included): their user_status, to everyone on /ws/status/."""
    if event.get("id") in SEEN_WEBHOOKS:
        return
    SEEN_WEBHOOKS[event.get("id")] = True
    while len(SEEN_WEBHOOKS) > 10000:
        SEEN_WEBHOOKS.popitem(last=False)
    channel, kind = event.get("channel", ""), event.get("type")
    if not channel.startswith("online:") or kind not in ("channel_occupied", "channel_vacated"):
        return
    try:
        uid = int(channel.split(":", 1)[1])
    except ValueError:
        return
    p = PRESENCE.get(uid)
    seq = event.get("seq", 0)
    if p is not None and p["seq"] >= seq:
        return  # an older change, from another edge's POST
    status = "online" if kind == "channel_occupied" else "offline"
    p = {"status": status, "last_seen": now_iso(event.get("time_ms", 0) / 1000), "seq": seq}
    PRESENCE[uid] = p
    api("publish", {"channel": "status:all", "data": user_status(uid, p)})


# --------------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=None, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if PAGE_ORIGIN and self.headers.get("Origin") == PAGE_ORIGIN:
            self.send_header("Access-Control-Allow-Origin", PAGE_ORIGIN)
            self.send_header("Vary", "Origin")
        self.end_headers()
        self.wfile.write(data)

    def do_OPTIONS(self):
        self.send_response(204)
        if PAGE_ORIGIN and self.headers.get("Origin") == PAGE_ORIGIN:
            self.send_header("Access-Control-Allow-Origin", PAGE_ORIGIN)
            self.send_header("Access-Control-Allow-Methods", "POST, GET")
            self.send_header("Access-Control-Allow-Headers", "Content-Type, Authorization")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, {"ok": True})
        m = re.match(r"^/media/([0-9a-f]{16})/", self.path)
        with LOCK:
            f = FILES.get(m.group(1)) if m else None
        if f is None:
            return self.answer(404, {"detail": "Not found."})
        self.answer(200, f["data"], "application/octet-stream")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        if length > 64 * 1024 * 1024:
            return self.answer(413, {"detail": "too large"})
        body = self.rfile.read(length)
        if self.path == "/groupcast/events":
            if not verify_signature("relay", self.headers, body):
                return self.answer(401, {"detail": "bad signature"})
            # One batch at a time: each edge sends its next batch after this answer, so a
            # connection's events are handled in order.
            with LOCK:
                for event in json.loads(body).get("events", []):
                    try:
                        on_event(event)
                    except Exception as e:  # one bad event must not cost the batch
                        print(f"event {event.get('type')}: {e!r}", flush=True)
            return self.answer(200)
        if self.path == "/groupcast/webhooks":
            if not verify_signature("webhook", self.headers, body):
                return self.answer(401, {"detail": "bad signature"})
            with LOCK:
                for event in json.loads(body).get("events", []):
                    on_webhook(event)
            return self.answer(200)
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return self.answer(400, {"detail": "JSON parse error."})
        if self.path == "/groupcast/connect":
            return self.answer(200, connect(req))
        if self.path == "/api/token/":
            return self.token(req)
        if self.path == "/api/notifications/":
            return self.notify(req)
        self.answer(404, {"detail": "Not found."})

    def token(self, req):
        username, password = req.get("username"), req.get("password")
        if not isinstance(username, str) or not USERNAME.match(username) or password != DEMO_PASSWORD:
            return self.answer(401, {"detail": "No active account found with the given credentials"})
        user = user_for(username)
        self.answer(200, {"access": mint(user, "access", ACCESS_TTL),
                          "refresh": mint(user, "refresh", REFRESH_TTL)})

    def notify(self, req):
        auth = self.headers.get("Authorization", "")
        sender = verify_token(auth[7:]) if auth.startswith("Bearer ") else None
        if sender is None:
            return self.answer(401, {"detail": "Authentication credentials were not provided."})
        with LOCK:
            to = USERS.get(req.get("to"))
            if to is None:
                return self.answer(404, {"detail": "No such user."})
            note_id = next(NOTIFICATION_IDS)
            NOTIFICATIONS[note_id] = {"user": to["id"], "read": False}
            note = {"id": note_id,
                    "title": html.escape(str(req.get("title", ""))[:200]),
                    "message": html.escape(str(req.get("message", ""))[:2000]),
                    "category": html.escape(str(req.get("category", "task"))[:50]),
                    "url": html.escape(str(req.get("url", ""))[:500]),
                    "created_at": now_iso()}
            _, err = api("publish", {"channel": f"notify:#{to['id']}",
                                     "data": {"type": "notification", "notification": note}})
        if err:
            return self.answer(502, {"detail": err.get("message", "publish failed")})
        self.answer(201, note)


server = ThreadingHTTPServer((HOST, int(PORT)), Handler)
server.daemon_threads = True
print(f"listening {HOST}:{PORT}", flush=True)
server.serve_forever()
