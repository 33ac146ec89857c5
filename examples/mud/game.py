#!/usr/bin/env python3
"""The MUD's game loop (seed 003) behind Groupcast (Python standard library only).

    game.py --port 9100 --api http://HOST:PORT/api --api-key KEY --secret S [--rooms room1,room2]

Players open `ws://HOST/ws/game/<room>/` (a relay route, examples/mud/groupcast.toml). The route
binds every connection to this process, an HTTP target: it receives each connection's `join`,
`message` and `leave` as signed POSTs, and the route subscribes the connection to the room's
channel `game:<room>`, whose publications reach it as plain text frames.

The seed's messages, both ways:

* client -> server: {"action": "join", "player_id"} when the socket opens (the seed's
  Django snippet), then commands {"type": "command", "action": "move", "direction":
  "north"|"south"|"east"|"west", "player_id", "seq", "timestamp"}, {"type": "command", "action":
  "say", "message"}, {"type": "command", "action": "look"} and {"type": "command", "action": "map"}.
* server -> one client (relay_send): {"type": "update", "event": "room_description", "data":
  {room_id, description, exits, items, players: {id: {x, y, online}}, tick}, "timestamp"} after a
  join and on look; {"type": "update", "event": "moved", "data": {player_id, x, y, seq}} for each
  move; {"type": "error", ...} for a bad command; the room's map as one **binary** frame for "map"
  (10 x 10 tile bytes, then per player: x, y, and the id's length and bytes).
* server -> the room (a publication on game:<room>): 10 world ticks a second, each a **delta**,
  {"type": "update", "event": "tick", "data": {"tick", "changed": {id: {x, y, online}}, "gone":
  [ids]}}; what a player says, {"type": "broadcast", "event": "player_action", "data":
  {"player_name", "action": "says", "message"}}.

State belongs to the player, not to the connection: a player who reconnects (another edge, after
one died) sends "join" again and gets the room back as it is, at their position. A client applies
the ticks after its room_description's `tick` and asks "look" when it sees a tick missing.
"""

import argparse
import base64
import hashlib
import html
import http.client
import json
import pathlib
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # examples/
from groupcast_backend import Api, log, verified  # noqa: E402

SIZE = 10  # rooms are SIZE x SIZE tiles
TICK = 0.1  # seconds: 10 ticks a second
MOVES = {"north": (0, -1), "south": (0, 1), "east": (1, 0), "west": (-1, 0)}
ROOMS = {
    "room1": ("The dungeon entrance. Torches flicker on damp stone.", ["north", "east"], ["torch", "sword"]),
    "room2": ("A vaulted hall, its floor cracked by old roots.", ["south", "east"], ["shield"]),
    "room3": ("An underground lake, black and still.", ["west"], ["rope"]),
    "room4": ("The armoury, long since looted.", ["north", "west"], []),
}


def send(client, obj):
    return {"relay_send": {"client": client, "text": json.dumps(obj)}}


def now_ms():
    return int(time.time() * 1000)


class World:
    def __init__(self, rooms):
        self.lock = threading.Lock()
        self.tick = 0
        self.rooms = {r: {} for r in rooms}  # room -> player id -> {x, y, online}
        self.where = {}  # player id -> room
        self.clients = {}  # client id -> {"room", "player"}
        self.changed = {r: set() for r in rooms}
        self.gone = {r: set() for r in rooms}
        self.last_seq = {}  # client id -> seq of its last event handled (a batch can come twice)

    def description(self, room):
        text, exits, items = ROOMS.get(room, ("An unremarkable room.", [], []))
        players = {p: dict(s) for p, s in self.rooms[room].items()}
        return {"type": "update", "event": "room_description", "timestamp": now_ms(),
                "data": {"room_id": room, "description": text, "exits": exits, "items": items,
                         "players": players, "tick": self.tick}}

    def spawn(self, player):
        h = hashlib.sha256(player.encode()).digest()
        return {"x": h[0] % SIZE, "y": h[1] % SIZE, "online": True}

    # Each handler returns the API commands to run once the lock is released.

    def on_join_action(self, client, player):
        c = self.clients.get(client)
        if c is None or not player or len(player) > 64:
            return [send(client, {"type": "error", "message": "join needs a player_id (1-64 characters)"})]
        room = c["room"]
        old = self.where.get(player)
        if old is not None and old != room:
            state = self.rooms[old].pop(player)
            self.gone[old].add(player)
            self.changed[old].discard(player)
        else:
            state = self.rooms[room].get(player) or self.spawn(player)
        state["online"] = True
        self.rooms[room][player] = state
        self.where[player] = room
        self.changed[room].add(player)
        self.gone[room].discard(player)
        c["player"] = player
        return [send(client, self.description(room))]

    def on_command(self, client, msg):
        c = self.clients.get(client)
        if c is None or c["player"] is None:
            return [send(client, {"type": "error", "message": "send {\"action\": \"join\", \"player_id\"} first"})]
        room, player = c["room"], c["player"]
        action = msg.get("action")
        if action == "move" and msg.get("direction") in MOVES:
            dx, dy = MOVES[msg["direction"]]
            state = self.rooms[room][player]
            state["x"] = min(SIZE - 1, max(0, state["x"] + dx))
            state["y"] = min(SIZE - 1, max(0, state["y"] + dy))
            self.changed[room].add(player)
            return [send(client, {"type": "update", "event": "moved", "timestamp": now_ms(),
                                  "data": {"player_id": player, "x": state["x"], "y": state["y"],
                                           "seq": msg.get("seq")}})]
        if action in ("look", "sync"):
            return [send(client, self.description(room))]
        if action == "say":
            text = html.escape(str(msg.get("message", ""))[:500])
            data = {"type": "broadcast", "event": "player_action",
                    "data": {"player_name": player, "action": "says", "message": text}}
            return [{"publish": {"channel": f"game:{room}", "data": data}}]
        if action == "map":
            return [{"relay_send": {"client": client, "b64data": self.map_bytes(room)}}]
        return [send(client, {"type": "error", "message": f"unknown action {action!r}"})]

    def map_bytes(self, room):
        tiles = bytearray(SIZE * SIZE)
        for i in range(SIZE):
            tiles[i] = tiles[SIZE * (SIZE - 1) + i] = 1  # walls north and south
        out = bytearray(tiles)
        for p, s in sorted(self.rooms[room].items()):
            raw = p.encode()
            out += bytes([s["x"], s["y"], len(raw)]) + raw
        return base64.b64encode(bytes(out)).decode()

    def on_event(self, e):
        client = e["client"]
        if e["seq"] <= self.last_seq.get(client, -1):
            return []
        self.last_seq[client] = e["seq"]
        if e["type"] == "join":
            room = (e.get("params") or {}).get("room", "")
            if room not in self.rooms:
                return [{"relay_close": {"client": client, "code": 4404, "reason": "no such room"}}]
            self.clients[client] = {"room": room, "player": None}
            return []
        if e["type"] == "leave":
            self.last_seq.pop(client, None)
            c = self.clients.pop(client, None)
            if c and c["player"] and not any(o["player"] == c["player"] for o in self.clients.values()):
                state = self.rooms[c["room"]].get(c["player"])
                if state is not None:
                    state["online"] = False
                    self.changed[c["room"]].add(c["player"])
            return []
        if e["type"] != "message":
            return []
        try:
            msg = json.loads(e.get("data") or "")
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            return [send(client, {"type": "error", "message": "commands are JSON objects"})]
        if msg.get("action") == "join":
            return self.on_join_action(client, str(msg.get("player_id", "")))
        return self.on_command(client, msg)

    def next_tick(self):
        self.tick += 1
        out = []
        for room, players in self.rooms.items():
            changed = {p: dict(players[p]) for p in self.changed[room] if p in players}
            gone = sorted(self.gone[room])
            self.changed[room].clear()
            self.gone[room].clear()
            data = {"type": "update", "event": "tick",
                    "data": {"tick": self.tick, "changed": changed, "gone": gone}}
            out.append({"publish": {"channel": f"game:{room}", "data": data}})
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--secret", required=True, help="the HTTP target's signing secret")
    p.add_argument("--rooms", default=",".join(ROOMS))
    args = p.parse_args()
    api = Api(args.api, args.api_key)
    world = World(args.rooms.split(","))
    secret = args.secret.encode()
    stop = threading.Event()

    class Events(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = 200
            if self.path != "/events":
                status = 404
            elif not verified(secret, self.headers, body):
                status = 401
            else:
                commands = []
                with world.lock:
                    for e in json.loads(body)["events"]:
                        commands += world.on_event(e)
                try:
                    api.batch(commands)
                except (OSError, http.client.HTTPException) as err:
                    log(f"api: {err!r}")
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            # GET /state: the world as the game loop holds it (for operators and tests).
            with world.lock:
                body = json.dumps({"tick": world.tick, "rooms": world.rooms}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *a):
            pass

    def loop():
        next_at = time.monotonic()
        while not stop.is_set():
            next_at += TICK
            with world.lock:
                commands = world.next_tick()
            try:
                api.batch(commands)
            except (OSError, http.client.HTTPException) as err:
                log(f"tick: {err!r}")
            stop.wait(max(0.0, next_at - time.monotonic()))

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Events)
    threading.Thread(target=loop, daemon=True).start()

    def shutdown(*_):
        stop.set()
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log(f"game loop on 127.0.0.1:{args.port}, rooms {', '.join(world.rooms)}, {int(1 / TICK)} ticks/s")
    server.serve_forever()


if __name__ == "__main__":
    main()
