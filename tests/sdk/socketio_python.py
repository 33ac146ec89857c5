"""python-socketio's client against Groupcast's Socket.IO server, with the backend of
crates/groupcast/tests/socketio.rs (it joins each socket to room "lobby", answers "add" and
"reverse" with acks, asks "question" with an ack, disconnects a socket that emits "kick").

    python socketio_python.py URL TOKEN TRANSPORTS      # TRANSPORTS: polling or websocket

Prints {"ok": true, ...} last; anything else fails with a message.
"""

import json
import sys
import threading

import socketio

url, token, transport = sys.argv[1:4]
T = 10


def check(cond, what):
    if not cond:
        raise SystemExit(f"failed: {what}")


# A bad token: a connection error, with the server's message and code in its data.
bad = socketio.Client(reconnection=False)
refusals = []
bad.on("connect_error", lambda data: refusals.append(data))
try:
    bad.connect(url, auth={"token": "not-a-token"}, transports=[transport], wait_timeout=T)
    check(False, "a bad token connected")
except socketio.exceptions.ConnectionError:
    pass
check(len(refusals) == 1 and "invalid token" in refusals[0]["message"], f"bad token: {refusals}")
check(refusals[0]["data"] == {"code": 3500}, f"bad token data: {refusals}")

sio = socketio.Client(reconnection=False)
joined = threading.Event()
questions = []
answered = threading.Event()
gone = []


@sio.on("joined")
def on_joined(room):
    check(room == "lobby", f"joined {room}")
    joined.set()


@sio.on("question")
def on_question(q):
    questions.append(q)
    return f"{q}? yes"


@sio.on("answered")
def on_answered(said):
    check(said == "ready? yes", f"answered {said}")
    answered.set()


@sio.on("disconnect")
def on_disconnect(reason=None):
    gone.append(str(reason))


sio.connect(url, auth={"token": token}, transports=[transport], wait_timeout=T)
check(sio.transport() == transport, f"transport {sio.transport()}")
check(joined.wait(T), "no joined event")
check(sio.call("add", (20, 22), timeout=T) == 42, "ack of add")
back = sio.call("reverse", b"\x01\x02\x03", timeout=T)
check(back == b"\x03\x02\x01", f"binary ack: {back!r}")
sio.emit("ask-me")
check(answered.wait(T), "no answer reported")
check(questions == ["ready"], f"questions {questions}")
sio.emit("kick")
sio.sleep(1)
deadline = 0
while sio.connected and deadline < 100:
    sio.sleep(0.1)
    deadline += 1
check(not sio.connected, "still connected after kick")
print(json.dumps({"ok": True, "transport": transport, "disconnect": gone}))
