#!/usr/bin/env python3
"""The Django side's event poster (LQDOJ's judge/event_poster_ws.py, in shape), unchanged in
what it does: a python-socketio client that connects as the sender and posts events.

    from event_poster import EventPoster
    poster = EventPoster("http://127.0.0.1:8000", "the EVENT_DAEMON_KEY")
    msg_id = poster.post("submissions", {"type": "update", "id": 42})   # 0 when it failed
    poster.last()                                                        # the last id, or 0

The connection and each call get 0.5 s: slower, and the call returns 0 (the web request that
posts must not wait on the event system). Run as a script for a quick try:

    python3 event_poster.py URL KEY CHANNEL MESSAGE      # prints the new id
    python3 event_poster.py URL KEY --last               # prints the last id
"""

import sys

import socketio

TIMEOUT = 0.5


class EventPoster:
    def __init__(self, url, key):
        self.url = url
        self.key = key
        self.sio = None

    def _connected(self):
        if self.sio is not None and self.sio.connected:
            return self.sio
        sio = socketio.Client(reconnection=False, request_timeout=TIMEOUT)
        sio.connect(
            self.url,
            auth={"role": "sender", "token": self.key},
            wait_timeout=TIMEOUT,
        )
        self.sio = sio
        return sio

    def _call(self, event, data=None):
        try:
            sio = self._connected()
            if data is None:
                reply = sio.call(event, timeout=TIMEOUT)
            else:
                reply = sio.call(event, data, timeout=TIMEOUT)
        except (socketio.exceptions.SocketIOError, OSError, ValueError):
            self.close()
            return 0
        if isinstance(reply, dict) and reply.get("status") == "success":
            return reply.get("id", 0)
        return 0

    def post(self, channel, message):
        return self._call("post", {"channel": channel, "message": message})

    def last(self):
        return self._call("last-msg")

    def close(self):
        if self.sio is not None:
            try:
                self.sio.disconnect()
            except Exception:
                pass
            self.sio = None


def main():
    if len(sys.argv) == 4 and sys.argv[3] == "--last":
        poster = EventPoster(sys.argv[1], sys.argv[2])
        print(poster.last())
    elif len(sys.argv) == 5:
        poster = EventPoster(sys.argv[1], sys.argv[2])
        print(poster.post(sys.argv[3], sys.argv[4]))
    else:
        print(__doc__)
        sys.exit(2)
    poster.close()


if __name__ == "__main__":
    main()
