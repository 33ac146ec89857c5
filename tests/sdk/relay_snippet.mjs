// The JavaScript relay snippet from the Django Channels write-up
// (shared/seeds/000_*.txt), run against Groupcast with a browser-style
// WebSocket (Node's built-in one, `node --experimental-websocket`).
//
// Usage: node --experimental-websocket relay_snippet.mjs ws://HOST:PORT/ws/relay/relay
//
// The snippet's code is used as written, with one exception that a browser
// forces too: it calls socket.send() right after `new WebSocket(...)`, which
// throws "InvalidStateError" while the socket is still connecting, so the
// send is made from onopen. Two "tabs" run it; each must receive the other's
// message, parsed with JSON.parse, and never its own.

const url = process.argv[2];
if (!url) {
  console.error('usage: relay_snippet.mjs WS_URL');
  process.exit(2);
}
setTimeout(() => { console.error('timed out'); process.exit(1); }, 10000).unref();

function tab(name, log) {
  return new Promise((resolve) => {
    // --- the snippet ---
    const socket = new WebSocket(url);

    socket.onopen = function(e) {
        log.push(['open']);
        resolve(socket);
    };

    socket.onmessage = function(e) {
        const data = JSON.parse(e.data);
        log.push(['received', data]);
    };
    // --- end of snippet ---
  });
}

function send(socket, text) {
  // The snippet's message, exactly.
  socket.send(JSON.stringify({
      type: 'message',
      text: text,
      timestamp: new Date().toISOString()
  }));
}

const logA = [];
const logB = [];
const a = await tab('A', logA);
const b = await tab('B', logB);
send(a, 'Hello from client A');
send(b, 'Hello from client B');

const deadline = Date.now() + 5000;
while (Date.now() < deadline) {
  const gotA = logA.filter((e) => e[0] === 'received');
  const gotB = logB.filter((e) => e[0] === 'received');
  if (gotA.length >= 1 && gotB.length >= 1) break;
  await new Promise((r) => setTimeout(r, 20));
}
// Give any (wrong) echo a moment to arrive.
await new Promise((r) => setTimeout(r, 200));
const gotA = logA.filter((e) => e[0] === 'received').map((e) => e[1]);
const gotB = logB.filter((e) => e[0] === 'received').map((e) => e[1]);
const ok = gotA.length === 1 && gotA[0].type === 'message' && gotA[0].text === 'Hello from client B'
  && gotB.length === 1 && gotB[0].text === 'Hello from client A';
a.close();
b.close();
if (!ok) {
  console.error(JSON.stringify({ ok: false, tabA: gotA, tabB: gotB }));
  process.exit(1);
}
console.log(JSON.stringify({ ok: true, tabA: gotA.map((m) => m.text), tabB: gotB.map((m) => m.text) }));
process.exit(0);
