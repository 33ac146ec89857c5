// examples/relay (seed 000) as its users run it: the seed's test page in two Chromium tabs
// (playwright-core, Debian's Chromium) and the seed's Python client, named and interactive, all
// on Groupcast's /ws/relay/. Every message reaches every other connection, never its sender.
//
// Usage: node example_relay.mjs PAGE_URL WS_A WS_B WS_PY API_URL API_KEY PYTHON CLIENT_PY
//   PAGE_URL  the test page (…/websocket-relay-test/); tab A connects to WS_A, tab B to WS_B
//             (two edges of the cluster, or the one dev server), the Python clients to WS_PY.
//   API_URL   the server API, to wait until the connections have joined the channel (a relay
//             connection joins on the server's own time after it opens).
// Prints {"ok":true} at the end; anything else fails with a message.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [pageUrl, wsA, wsB, wsPy, apiUrl, apiKey, python, clientPy] = process.argv.slice(2);
if (!clientPy) {
  console.error('usage: node example_relay.mjs PAGE_URL WS_A WS_B WS_PY API_URL API_KEY PYTHON CLIENT_PY');
  process.exit(2);
}
const CHANNEL = 'relay_broadcast';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
setTimeout(() => { console.error('timed out'); process.exit(1); }, 100000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) until the relay channel has `n` subscribers, cluster-wide. */
async function subscribers(n) {
  const deadline = Date.now() + 30000;
  for (;;) {
    const res = await fetch(`${apiUrl}/channels`, {
      method: 'POST',
      headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
      body: JSON.stringify({ pattern: CHANNEL }),
    });
    const body = await res.json();
    const c = body.result && body.result.channels && body.result.channels[CHANNEL];
    if (c && c.num_clients === n) return;
    if (Date.now() > deadline) throw new Error(`not ${n} subscribers on ${CHANNEL}: ${JSON.stringify(body)}`);
    await sleep(50);
  }
}

/** The seed's Python client as a child process; its output lines are kept and awaited. */
function pythonClient(args) {
  const child = spawn(python, [clientPy, '--url', wsPy, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = [];
  const waiters = [];
  createInterface({ input: child.stdout }).on('line', (line) => {
    lines.push(line);
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    lines,
    exited,
    async waitFor(pred, what) {
      const deadline = Date.now() + 20000;
      while (!lines.some(pred)) {
        if (Date.now() > deadline) throw new Error(`python client: no ${what} in ${JSON.stringify(lines)}`);
        await new Promise((r) => { waiters.push(r); setTimeout(r, 200); });
      }
    },
  };
}

const received = (text) => (line) => line.startsWith('received: ') && JSON.parse(line.slice(10)).text === text;

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const children = [];
try {
  const context = await browser.newContext();
  const a = await context.newPage();
  const b = await context.newPage();
  for (const [page, ws] of [[a, wsA], [b, wsB]]) {
    await page.goto(`${pageUrl}?ws=${encodeURIComponent(ws)}`);
    await page.locator('#status.connected').waitFor({ timeout: 20000 });
  }
  await subscribers(2);

  // Tab to tab.
  const send = async (page, text) => {
    await page.fill('#text', text);
    await page.click('#send');
  };
  const sees = (page, text) => page.locator('#messages li.received', { hasText: text }).waitFor({ timeout: 20000 });
  await send(a, 'hello from tab A');
  await sees(b, 'hello from tab A');
  await send(b, 'and back from tab B');
  await sees(a, 'and back from tab B');
  // B's answer was sent after A's message reached B, so it came after it on the channel: an echo
  // of A's own message would be in A by now.
  const echoes = await a.locator('#messages li.received', { hasText: 'hello from tab A' }).count();
  if (echoes !== 0) throw new Error(`tab A received its own message ${echoes} time(s)`);

  // A named Python client: its hello reaches both tabs, a tab's message reaches it.
  const named = pythonClient(['client1', '--seconds', '60']);
  children.push(named.child);
  await named.waitFor((l) => l === 'connected: client1', 'connected line');
  await subscribers(3);
  await sees(a, 'client1: Hello from client1');
  await sees(b, 'client1: Hello from client1');
  await send(a, 'tab A to client1');
  await named.waitFor(received('tab A to client1'), 'message from tab A');
  if (named.lines.some(received('Hello from client1'))) throw new Error('client1 received its own hello');
  named.child.kill('SIGTERM');
  await named.exited;
  await subscribers(2);

  // Interactive mode: each line typed is sent; 'quit' ends it.
  const typed = pythonClient(['interactive']);
  children.push(typed.child);
  await typed.waitFor((l) => l.startsWith('connected: interactive'), 'connected line');
  await subscribers(3);
  typed.child.stdin.write('typed in interactive mode\n');
  await sees(a, 'interactive: typed in interactive mode');
  await sees(b, 'interactive: typed in interactive mode');
  await send(b, 'tab B to the terminal');
  await typed.waitFor(received('tab B to the terminal'), 'message from tab B');
  typed.child.stdin.write('quit\n');
  const code = await typed.exited;
  if (code !== 0) throw new Error(`interactive client exited with ${code}`);
  console.log(JSON.stringify({ ok: true }));
} finally {
  for (const c of children) c.kill('SIGKILL');
  await browser.close();
}
