"""The real `cent` package (Centrifugo's Python API client) against a running
Groupcast server: every API method cent offers that Groupcast implements.

Usage: python cent_api.py API_URL API_KEY TOKEN WS_URL

TOKEN is a connection token; WS_URL the client WebSocket endpoint. A minimal
standard-library WebSocket client connects with that token so that presence,
channels, info and the per-user methods (subscribe, unsubscribe, refresh,
disconnect) act on a live connection.

Exit code 0 and a summary line only when every check passes.
Run by tests/tests/sdk.rs (cargo test -p groupcast-tests --test sdk).
"""

import base64
import json
import os
import socket
import struct
import sys
import time
import traceback
from urllib.parse import urlparse

from cent import (
    BatchRequest,
    BatchResult,
    BroadcastRequest,
    BroadcastResult,
    ChannelsRequest,
    ChannelsResult,
    Client,
    ClientInfo,
    Disconnect,
    DisconnectRequest,
    DisconnectResult,
    HistoryRemoveRequest,
    HistoryRemoveResult,
    HistoryRequest,
    HistoryResult,
    InfoRequest,
    InfoResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PublishResult,
    RefreshRequest,
    RefreshResult,
    StreamPosition,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
    UnsubscribeResult,
)
from cent.exceptions import CentApiResponseError, CentUnauthorizedError

STEP_TIMEOUT = 5.0


class CheckFailed(Exception):
    pass


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def expect_type(value, cls, what):
    check(isinstance(value, cls), f"{what}: got {type(value).__name__} {value!r}, want {cls.__name__}")
    return value


# ---------------------------------------------------------------------------
# Minimal WebSocket client (RFC 6455, text frames, client-side masking) so the
# test needs no package beyond cent.


class MiniWs:
    def __init__(self, url):
        u = urlparse(url)
        check(u.scheme == "ws", f"ws url must be ws://, got {url}")
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=STEP_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            check(chunk, "WebSocket handshake: connection closed")
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode()
        check(" 101 " in status + " ", f"WebSocket handshake failed: {status}")
        self.pending = []  # decoded JSON messages not consumed yet
        self.close_frame = None  # (code, reason) once the server closed

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("socket closed")
            buf += chunk
        return buf

    def _send_frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, obj):
        self._send_frame(0x1, json.dumps(obj).encode())

    def _read_frame(self):
        b0, b1 = self._recv_exact(2)
        opcode = b0 & 0x0F
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._recv_exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._recv_exact(8))[0]
        mask = self._recv_exact(4) if b1 & 0x80 else None
        payload = self._recv_exact(n)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return opcode, payload

    def _pump(self, deadline):
        """Read one frame before `deadline`; queue its JSON messages."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        opcode, payload = self._read_frame()
        if opcode == 0x1:
            for line in payload.decode().split("\n"):
                if not line.strip():
                    continue
                msg = json.loads(line)
                if msg == {}:
                    self.send({})  # pong to the server ping
                    continue
                self.pending.append(msg)
        elif opcode == 0x8:
            code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
            self.close_frame = (code, payload[2:].decode(errors="replace"))
            raise ConnectionError(f"server closed the WebSocket: {self.close_frame}")
        elif opcode == 0x9:
            self._send_frame(0xA, payload)

    def wait_for(self, pred, what, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.pending):
                if pred(msg):
                    return self.pending.pop(i)
            if time.monotonic() > deadline:
                raise CheckFailed(f"timed out waiting for {what}; unconsumed messages: {self.pending}")
            try:
                self._pump(deadline)
            except socket.timeout:
                pass

    def call(self, cmd_id, cmd):
        self.send({"id": cmd_id, **cmd})
        reply = self.wait_for(lambda m: m.get("id") == cmd_id, f"reply to command {cmd_id} {cmd}")
        check("error" not in reply, f"command {cmd} failed: {reply}")
        return reply

    def wait_close(self, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while self.close_frame is None:
            check(time.monotonic() < deadline, "timed out waiting for the server to close the WebSocket")
            try:
                self._pump(deadline)
            except socket.timeout:
                pass
            except ConnectionError:
                if self.close_frame is None:
                    raise CheckFailed("WebSocket dropped without a close frame")
        return self.close_frame

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def token_user(token):
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))["sub"]


# ---------------------------------------------------------------------------


class Run:
    """Runs independent steps, records failures and goes on with the next."""

    def __init__(self):
        self.passed = []
        self.failed = []

    def step(self, name, fn):
        try:
            fn()
        except CheckFailed as e:
            self.failed.append(name)
            print(f"FAIL: {name}: {e}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - cent errors and the like fail the step
            self.failed.append(name)
            print(f"FAIL: {name}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc()
        else:
            self.passed.append(name)
            print(f"ok: {name}", file=sys.stderr)


def offsets(h):
    return [p.offset for p in h.publications]


def main():
    if len(sys.argv) != 5:
        print("usage: python cent_api.py API_URL API_KEY TOKEN WS_URL", file=sys.stderr)
        return 2
    api_url, api_key, token, ws_url = sys.argv[1:]
    user = token_user(token)
    client = Client(api_url, api_key, timeout=STEP_TIMEOUT)
    run = Run()

    def publish():
        r1 = expect_type(client.publish(PublishRequest(channel="pub", data={"n": 1})), PublishResult, "publish")
        check(r1.offset >= 1, f"offset {r1.offset}, want >= 1")
        check(r1.epoch != "", "empty epoch")
        r2 = client.publish(PublishRequest(channel="pub", data={"n": 2}, tags={"k": "v"}))
        check(r2.offset == r1.offset + 1, f"second publish: offset {r2.offset}, want {r1.offset + 1}")
        check(r2.epoch == r1.epoch, f"second publish: epoch {r2.epoch!r} != {r1.epoch!r}")

    def publish_unknown_namespace():
        try:
            client.publish(PublishRequest(channel="unknown:chan", data={"n": 1}))
        except CentApiResponseError as e:
            check(e.code == 102, f"error code {e.code} ({e.message}), want 102")
        else:
            raise CheckFailed("publish to unknown:chan did not raise CentApiResponseError")

    def broadcast():
        b = expect_type(
            client.broadcast(BroadcastRequest(channels=["bca", "bcb"], data={"b": 1})), BroadcastResult, "broadcast"
        )
        check(len(b.responses) == 2, f"{len(b.responses)} responses, want 2")
        for ch, resp in zip(["bca", "bcb"], b.responses):
            check(resp.error is None, f"broadcast to {ch}: error {resp.error}")
            check(resp.result is not None and resp.result.offset == 1, f"broadcast to {ch}: result {resp.result}")
            check(resp.result.epoch != "", f"broadcast to {ch}: empty epoch")
        b = client.broadcast(BroadcastRequest(channels=["bca", "unknown:x"], data={"b": 2}))
        check(len(b.responses) == 2, f"with a bad channel: {len(b.responses)} responses, want 2")
        r0 = b.responses[0]
        check(r0.result is not None and r0.result.offset == 2, f"bca: {r0}")
        r1 = b.responses[1]
        check(r1.error is not None and r1.error.code == 102, f"unknown:x: {r1}, want error 102")

    hist = {}

    def history():
        offs = [client.publish(PublishRequest(channel="hist", data={"h": i})).offset for i in range(1, 4)]
        check(offs == [1, 2, 3], f"publish offsets {offs}, want [1, 2, 3]")
        h = expect_type(client.history(HistoryRequest(channel="hist")), HistoryResult, "history")
        check(h.publications == [], f"without limit: {len(h.publications)} publications, want none")
        check(h.offset == 3 and h.epoch != "", f"without limit: position {h.offset}/{h.epoch!r}")
        hist["epoch"] = epoch = h.epoch
        h = client.history(HistoryRequest(channel="hist", limit=10))
        check([p.data for p in h.publications] == [{"h": 1}, {"h": 2}, {"h": 3}], f"limit=10: {h.publications}")
        check(offsets(h) == [1, 2, 3], f"limit=10: offsets {offsets(h)}")
        h = client.history(HistoryRequest(channel="hist", limit=2))
        check(offsets(h) == [1, 2], f"limit=2: offsets {offsets(h)}, want [1, 2]")
        h = client.history(HistoryRequest(channel="hist", limit=2, reverse=True))
        check(offsets(h) == [3, 2], f"limit=2 reverse: offsets {offsets(h)}, want [3, 2]")
        h = client.history(HistoryRequest(channel="hist", limit=10, since=StreamPosition(offset=1, epoch=epoch)))
        check(offsets(h) == [2, 3], f"since offset 1: offsets {offsets(h)}, want [2, 3]")
        try:
            client.history(HistoryRequest(channel="hist", limit=10, since=StreamPosition(offset=1, epoch="wrong")))
        except CentApiResponseError as e:
            check(e.code == 112, f"since a wrong epoch: error code {e.code} ({e.message}), want 112")
        else:
            raise CheckFailed("since a wrong epoch did not raise")

    def history_since_reverse():
        # Centrifugo (memory and Redis brokers): with reverse, `since` is an
        # upper bound: the publications before since.offset, newest first.
        h = client.history(
            HistoryRequest(
                channel="hist", limit=10, since=StreamPosition(offset=3, epoch=hist["epoch"]), reverse=True
            )
        )
        check(
            offsets(h) == [2, 1],
            f"since offset 3 reverse: offsets {offsets(h)}, want [2, 1] "
            "(Centrifugo returns the publications before since.offset, newest first)",
        )

    def history_remove():
        expect_type(
            client.history_remove(HistoryRemoveRequest(channel="hist")), HistoryRemoveResult, "history_remove"
        )
        h = client.history(HistoryRequest(channel="hist", limit=10))
        check(h.publications == [], f"history after history_remove: {len(h.publications)} publications")
        check(h.offset == 3 and h.epoch == hist["epoch"], f"history_remove changed the position: {h.offset}/{h.epoch!r}")

    def per_user_calls_without_connections():
        nobody = "nobody"
        expect_type(client.subscribe(SubscribeRequest(user=nobody, channel="room")), SubscribeResult, "subscribe")
        expect_type(
            client.unsubscribe(UnsubscribeRequest(user=nobody, channel="room")), UnsubscribeResult, "unsubscribe"
        )
        expect_type(client.refresh(RefreshRequest(user=nobody)), RefreshResult, "refresh")
        expect_type(client.disconnect(DisconnectRequest(user=nobody)), DisconnectResult, "disconnect")

    def disconnect_application_code():
        # Centrifugo passes any code and the given reason through (apps use 4000-4999).
        r = client.disconnect(DisconnectRequest(user="nobody", disconnect=Disconnect(code=4001, reason="bye")))
        expect_type(r, DisconnectResult, "disconnect with code 4001")

    def batch():
        br = expect_type(
            client.batch(
                BatchRequest(
                    requests=[
                        PublishRequest(channel="batch", data={"x": 1}),
                        PublishRequest(channel="batch", data={"x": 2}),
                    ]
                )
            ),
            BatchResult,
            "batch",
        )
        check(len(br.replies) == 2, f"{len(br.replies)} replies, want 2")
        for k, rep in enumerate(br.replies):
            expect_type(rep, PublishResult, f"reply {k}")
        check([rep.offset for rep in br.replies] == [1, 2], f"offsets {[rep.offset for rep in br.replies]}")
        br = client.batch(
            BatchRequest(
                requests=[PresenceStatsRequest(channel="empty"), HistoryRequest(channel="batch", limit=10)],
                parallel=True,
            )
        )
        check(len(br.replies) == 2, f"parallel batch: {len(br.replies)} replies, want 2")
        check(expect_type(br.replies[0], PresenceStatsResult, "batch presence_stats").num_clients == 0, f"{br}")
        check(len(expect_type(br.replies[1], HistoryResult, "batch history").publications) == 2, f"{br}")

    def wrong_api_key():
        bad = Client(api_url, api_key + "-wrong", timeout=STEP_TIMEOUT)
        try:
            bad.publish(PublishRequest(channel="pub", data={"n": 1}))
        except CentUnauthorizedError:
            pass
        else:
            raise CheckFailed("publish with a wrong API key did not raise CentUnauthorizedError")

    run.step("publish", publish)
    run.step("publish to an unknown namespace: error 102", publish_unknown_namespace)
    run.step("broadcast", broadcast)
    run.step("history (limit, reverse, since, wrong epoch)", history)
    if "epoch" in hist:
        run.step("history since + reverse", history_since_reverse)
        run.step("history_remove", history_remove)
    run.step("subscribe/unsubscribe/refresh/disconnect for a user without connections",
             per_user_calls_without_connections)
    run.step("disconnect with an application code (4001)", disconnect_application_code)
    run.step("batch", batch)
    run.step("wrong API key: unauthorized", wrong_api_key)

    # --- a live connection: presence, channels, info, per-user calls ------
    ws = None
    live = {}

    def connect():
        nonlocal ws
        ws = MiniWs(ws_url)
        rep = ws.call(1, {"connect": {"token": token, "name": "cent_api.py"}})
        live["client"] = rep["connect"]["client"]
        ws.call(2, {"subscribe": {"channel": "room"}})

    def presence():
        client_id = live["client"]
        p = expect_type(client.presence(PresenceRequest(channel="room")), PresenceResult, "presence")
        expect_type(p.presence, dict, "presence.presence")
        check(list(p.presence) == [client_id], f"presence keys {list(p.presence)}, want [{client_id}]")
        info = expect_type(p.presence[client_id], ClientInfo, "presence entry")
        check(info.user == user and info.client == client_id, f"presence entry {info}")
        p = client.presence(PresenceRequest(channel="empty"))
        check(p.presence == {}, f"presence of an empty channel: {p.presence}, want {{}}")
        s = expect_type(
            client.presence_stats(PresenceStatsRequest(channel="room")), PresenceStatsResult, "presence_stats"
        )
        check((s.num_clients, s.num_users) == (1, 1), f"presence_stats: {s}, want 1 client, 1 user")
        s = client.presence_stats(PresenceStatsRequest(channel="empty"))
        check((s.num_clients, s.num_users) == (0, 0), f"presence_stats of an empty channel: {s}")

    def channels():
        c = expect_type(client.channels(ChannelsRequest()), ChannelsResult, "channels")
        check("room" in c.channels, f"{c.channels}, want room in it")
        check(c.channels["room"].num_clients == 1, f"room has {c.channels['room'].num_clients} clients, want 1")
        c = client.channels(ChannelsRequest(pattern="ro*"))
        check(list(c.channels) == ["room"], f"pattern ro*: {list(c.channels)}")
        c = client.channels(ChannelsRequest(pattern="nothing*"))
        check(c.channels == {}, f"pattern nothing*: {c.channels}, want {{}}")

    def info():
        i = expect_type(client.info(InfoRequest()), InfoResult, "info")
        check(len(i.nodes) == 1, f"{len(i.nodes)} nodes, want 1")
        node = i.nodes[0]
        check(node.uid != "" and node.name != "", f"node without uid/name: {node}")
        check(node.num_clients == 1 and node.num_users == 1, f"node counts: {node}")
        check(node.num_channels >= 1 and node.num_subs >= 1, f"node channels/subs: {node}")

    def per_user_calls_live():
        client.subscribe(SubscribeRequest(user=user, channel="srv", data={"hello": 1}))
        push = ws.wait_for(
            lambda m: m.get("push", {}).get("channel") == "srv" and "subscribe" in m["push"],
            "the subscribe push for srv after API subscribe",
        )
        check(push["push"]["subscribe"].get("data") == {"hello": 1}, f"subscribe push data: {push}")
        c = client.channels(ChannelsRequest(pattern="srv"))
        check(list(c.channels) == ["srv"], f"channels after API subscribe: {c.channels}")
        client.unsubscribe(UnsubscribeRequest(user=user, channel="srv"))
        push = ws.wait_for(
            lambda m: m.get("push", {}).get("channel") == "srv" and "unsubscribe" in m["push"],
            "the unsubscribe push for srv after API unsubscribe",
        )
        check(push["push"]["unsubscribe"].get("code") == 2000, f"unsubscribe push: {push}, want code 2000")
        client.refresh(RefreshRequest(user=user, expire_at=int(time.time()) + 3600))
        ws.call(3, {"presence_stats": {"channel": "room"}})  # still usable after the refresh

    def disconnect_live():
        # Centrifugo closes with the code and the reason given in the request.
        client.disconnect(DisconnectRequest(user=user, disconnect=Disconnect(code=3503, reason="bye")))
        code, reason = ws.wait_close()
        check(code == 3503, f"close code after API disconnect: {code} {reason!r}, want 3503")
        check(reason == "bye", f"close reason after API disconnect: {reason!r}, want the requested 'bye'")

    run.step("connect a WebSocket client and subscribe to room", connect)
    if "client" in live:
        run.step("presence, presence_stats", presence)
        run.step("channels", channels)
        run.step("info", info)
        run.step("subscribe/unsubscribe/refresh for a connected user", per_user_calls_live)
        run.step("disconnect a connected user", disconnect_live)
    if ws is not None:
        ws.close()

    if run.failed:
        print(f"FAIL: {len(run.failed)} of {len(run.passed) + len(run.failed)} checks failed: {run.failed}",
              file=sys.stderr)
        return 1
    print(json.dumps({"ok": True, "sdk": "cent", "passed": len(run.passed), "checks": run.passed}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception:  # noqa: BLE001 - any other error is a failure too
        print("FAIL: unexpected exception", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
