#!/usr/bin/env python3
"""The seed's Python relay client (seed 000), against Groupcast's /ws/relay/.

    python3 test_websocket_relay.py client1        # a named client: says hello, prints what arrives
    python3 test_websocket_relay.py interactive    # sends each line typed, prints what arrives

Options: --url (default ws://localhost:8000/ws/relay/, as in the seed), --seconds (how long a
named client listens, default 10). Needs the `websockets` package (pip install websockets).

Every message is the seed's recommended JSON: {"type": "message", "text", "timestamp"}, plus
"client_id" so the other side can tell who spoke. The relay sends a message to every other
connection, never back to its sender. Each line printed is `received: <JSON>`, so the output can
be read by a program as well as by a person.
"""

import argparse
import asyncio
import datetime
import json
import sys

import websockets


def message(client_id, text):
    return json.dumps(
        {
            "type": "message",
            "text": text,
            "client_id": client_id,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
    )


async def receive(ws):
    async for frame in ws:
        try:
            data = json.loads(frame)
        except ValueError:
            data = {"type": "raw", "text": frame}
        print("received:", json.dumps(data), flush=True)


async def named_client(url, client_id, seconds):
    async with websockets.connect(url) as ws:
        print(f"connected: {client_id}", flush=True)
        await ws.send(message(client_id, f"Hello from {client_id}"))
        try:
            await asyncio.wait_for(receive(ws), timeout=seconds)
        except asyncio.TimeoutError:
            pass
    print(f"closed: {client_id}", flush=True)


async def interactive(url):
    loop = asyncio.get_running_loop()
    async with websockets.connect(url) as ws:
        print("connected: interactive (type a message and Enter; 'quit' or Ctrl-D ends)", flush=True)
        reader = asyncio.create_task(receive(ws))
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                break
            if line.strip():
                await ws.send(message("interactive", line.rstrip("\n")))
        # Let what is already on its way arrive before closing.
        await asyncio.sleep(0.5)
        reader.cancel()
    print("closed: interactive", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client_id", help="a client name, or 'interactive'")
    parser.add_argument("--url", default="ws://localhost:8000/ws/relay/")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    try:
        if args.client_id == "interactive":
            asyncio.run(interactive(args.url))
        else:
            asyncio.run(named_client(args.url, args.client_id, args.seconds))
    except (OSError, websockets.exceptions.WebSocketException) as e:
        print(f"error: {args.url}: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
