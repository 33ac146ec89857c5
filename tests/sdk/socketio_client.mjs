// socket.io-client 4.8 (npm) in Node against Groupcast's Socket.IO server, with a backend on
// the namespace's target: the scenario of socketio_scenario.mjs, which socketio_browser.mjs
// runs in Chromium (crates/groupcast/tests/socketio.rs runs both and checks their summaries).
//
// Usage: node socketio_client.mjs URL API_URL API_KEY TOKEN BAD_TOKEN TRANSPORTS
//   TRANSPORTS: "default" (polling, then the upgrade), "websocket" or "polling".
// Prints {"ok":true,...} at the end; anything else fails with a message.
import { io } from 'socket.io-client';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { run } from './socketio_scenario.mjs';

const [url, apiUrl, apiKey, token, badToken, transports] = process.argv.slice(2);
if (!transports) {
  console.error('usage: node socketio_client.mjs URL API_URL API_KEY TOKEN BAD_TOKEN TRANSPORTS');
  process.exit(2);
}
setTimeout(() => { console.error('timed out'); process.exit(1); }, 50000).unref();

const env = {
  io,
  url,
  transports,
  token,
  badToken,
  api: async (method, body) => {
    const res = await fetch(`${apiUrl}/${method}`, {
      method: 'POST',
      headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    return res.json();
  },
  centrifuge: () => new Centrifuge(`${url.replace(/^http/, 'ws')}/connection/websocket`,
    { token, websocket: WebSocket }),
  binaries: [{ kind: 'Buffer', make: (bytes) => Buffer.from(bytes) }],
  binaryKind: (x) => (Buffer.isBuffer(x) ? 'Buffer' : null),
  bytesOf: (x) => (Buffer.isBuffer(x) ? [...x] : null),
};

try {
  const summary = await run(env);
  console.log(JSON.stringify(summary));
  process.exit(0);
} catch (e) {
  console.error(e.stack || String(e));
  process.exit(1);
}
