// The JavaScript relay snippet from the Django Channels write-up
// (shared/seeds/000_*.txt), run against Groupcast with a browser-style
// WebSocket (Node's built-in one, `node --experimental-websocket`).
//
// Usage: node --experimental-websocket relay_snippet.mjs ws://HOST:PORT/ws/relay/relay API_URL API_KEY
//
// The snippet's code is used as written, with one exception that a browser
// forces too: it calls socket.send() right after `new WebSocket(...)`, which
// throws "InvalidStateError" while the socket is still connecting, so the
// send is made from onopen. Two "tabs" run it; each must receive the other's
// message, parsed with JSON.parse, and never its own.
//
// A relay connection joins its channel once open, on the server's own time:
// the tabs send once the server API counts both on the channel. Then each
// tab answers the other's message with a second one; the answer comes after
// (the channel keeps its order), so a tab that got the other's answer would
// have got its own message back before it.

const [url, apiUrl, apiKey] = process.argv.slice(2);
if (!url || !apiUrl || !apiKey) {
  console.error('usage: relay_snippet.mjs WS_URL API_URL API_KEY');
  process.exit(2);
}
const channel = decodeURIComponent(new URL(url).pathname.split('/').pop());
setTimeout(() => { console.error('timed out'); process.exit(1); }, 45000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function subscribers() {
  const res = await fetch(`${apiUrl}/channels`, {
    method: 'POST',
    headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
    body: JSON.stringify({ pattern: channel }),
  });
  const body = await res.json();
  const c = body.result && body.result.channels && body.result.channels[channel];
  return c ? c.num_clients : 0;
}

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
const received = (log) => log.filter((e) => e[0] === 'received').map((e) => e[1]);
const deadline = Date.now() + 30000;
function timedOut(what) {
  if (Date.now() <= deadline) return;
  console.error(JSON.stringify({ ok: false, waiting_for: what, tabA: received(logA), tabB: received(logB) }));
  process.exit(1);
}

while ((await subscribers()) !== 2) {
  timedOut('both tabs on the channel');
  await sleep(20);
}
send(a, 'Hello from client A');
send(b, 'Hello from client B');
const hasText = (log, text) => received(log).some((m) => m.text === text);
while (!(hasText(logA, 'Hello from client B') && hasText(logB, 'Hello from client A'))) {
  timedOut("each tab's message in the other");
  await sleep(20);
}
send(a, 'Got it, A');
send(b, 'Got it, B');
while (!(hasText(logA, 'Got it, B') && hasText(logB, 'Got it, A'))) {
  timedOut("each tab's answer in the other");
  await sleep(20);
}
const gotA = received(logA);
const gotB = received(logB);
const ok = gotA.length === 2 && gotA[0].type === 'message' && gotA[0].text === 'Hello from client B'
  && gotA[1].text === 'Got it, B'
  && gotB.length === 2 && gotB[0].text === 'Hello from client A' && gotB[1].text === 'Got it, A';
a.close();
b.close();
if (!ok) {
  console.error(JSON.stringify({ ok: false, tabA: gotA, tabB: gotB }));
  process.exit(1);
}
console.log(JSON.stringify({ ok: true, tabA: gotA.map((m) => m.text), tabB: gotB.map((m) => m.text) }));
process.exit(0);
