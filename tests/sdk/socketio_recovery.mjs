// Many socket.io-client 4.8 sockets with connection-state recovery, for
// crates/groupcast/tests/socketio_recovery.rs.
//
// stdin, first line: {"url": ..., "sockets": [{"token", "transports"}]}. Each socket connects
// with `auth: {token}` (its token's `channels` claim names its room) and records the `n` of
// every "message" event it gets. Then, one command per line:
//   "status" -> {"status": {"connected", "disconnects", "reconnects", "recovered", "received"}}
//   "report" -> {"report": [{"got": [n...], "connects", "recovered", "reasons"}]}, then exits.
// Prints {"ready": N} once every socket has connected.

import { io } from "socket.io-client";
import readline from "node:readline";

const rl = readline.createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
const config = JSON.parse((await lines.next()).value);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const sockets = config.sockets.map((s) => {
  const state = { got: [], connects: 0, recovered: 0, reasons: [], offsets: 0 };
  const opts = {
    auth: { token: s.token },
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    // Each socket its own Engine.IO session.
    forceNew: true,
  };
  if (s.transports !== "default") opts.transports = [s.transports];
  const socket = io(config.url, opts);
  socket.on("connect", () => {
    state.connects += 1;
    if (state.connects > 1 && socket.recovered) state.recovered += 1;
  });
  socket.on("disconnect", (reason) => state.reasons.push(reason));
  socket.on("message", (data, offset) => {
    state.got.push(data.n);
    if (typeof offset === "string") state.offsets += 1;
  });
  return { socket, state };
});

const connected = () => sockets.filter((s) => s.socket.connected).length;
const deadline = Date.now() + 60_000;
while (connected() < sockets.length) {
  if (Date.now() > deadline) {
    say({ error: `only ${connected()} of ${sockets.length} sockets connected in 60 s` });
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 50));
}
say({ ready: sockets.length });

for await (const line of lines) {
  const cmd = line.trim();
  if (cmd === "status") {
    const sum = (f) => sockets.reduce((a, s) => a + f(s.state), 0);
    say({
      status: {
        connected: connected(),
        disconnects: sum((s) => s.reasons.length),
        reconnects: sum((s) => s.connects - 1),
        recovered: sum((s) => s.recovered),
        received: sum((s) => s.got.length),
      },
    });
  } else if (cmd === "report") {
    say({ report: sockets.map((s) => s.state) });
    for (const s of sockets) s.socket.close();
    process.exit(0);
  }
}
