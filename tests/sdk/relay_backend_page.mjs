// Seed 004's relay flow in a real browser (Debian's Chromium, driven by
// playwright-core): two tabs open a plain `new WebSocket(url)` on a relay
// route whose connections are bound to a backend process on NATS (the
// backend runs in tests/tests/sdk.rs). The backend tracks its clients from
// `join`/`leave` and broadcasts each `say` frame to all of them (the seed's
// "Broadcasting" pattern); on `bye` it closes the sender with
// 4000 "Session ended".
//
// Usage: node relay_backend_page.mjs http://HOST:PORT/ ROUTE_PATH
// Prints one JSON summary line; exits non-zero on failure.
import { chromium } from 'playwright-core';

const [pageUrl, routePath] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
setTimeout(() => { console.error('timed out'); process.exit(1); }, 50000).unref();
if (!pageUrl || !routePath) {
  console.error('usage: node relay_backend_page.mjs PAGE_URL ROUTE_PATH');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// In a tab: open the socket as a page would, keep every frame and the close.
async function tab(context) {
  const page = await context.newPage();
  await page.goto(pageUrl);
  await page.evaluate((path) => new Promise((resolve, reject) => {
    const url = location.origin.replace(/^http/, 'ws') + path;
    // --- what the application's page does ---
    const socket = new WebSocket(url);
    window.received = [];
    window.closeInfo = null;
    socket.onmessage = (event) => window.received.push(JSON.parse(event.data));
    socket.onclose = (event) => { window.closeInfo = { code: event.code, reason: event.reason }; };
    socket.onopen = () => resolve();
    socket.onerror = () => reject(new Error('WebSocket error'));
    window.socket = socket;
  }), routePath);
  return page;
}

const waitFor = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: 10000 });

try {
  const context = await browser.newContext();
  const a = await tab(context);
  const b = await tab(context);
  // Both joined: the backend greets each with its client id.
  await waitFor(a, () => window.received.some((m) => m.event === 'welcome'));
  await waitFor(b, () => window.received.some((m) => m.event === 'welcome'));

  // A says something: the backend broadcasts it to both tabs.
  await a.evaluate(() => window.socket.send(JSON.stringify({ type: 'say', text: 'hello from a' })));
  for (const p of [a, b]) {
    await waitFor(p, () => window.received.some((m) => m.event === 'said' && m.text === 'hello from a'));
  }
  // Binary frames reach the backend too (it answers with their length).
  await b.evaluate(() => window.socket.send(new Uint8Array([1, 2, 3, 4, 5])));
  await waitFor(b, () => window.received.some((m) => m.event === 'bytes' && m.length === 5));

  // B asks to leave: the backend closes it with 4000 "Session ended"; A is
  // told B left (the backend saw `leave`).
  const bId = await b.evaluate(() => window.received.find((m) => m.event === 'welcome').client);
  await b.evaluate(() => window.socket.send(JSON.stringify({ type: 'bye' })));
  await waitFor(b, () => window.closeInfo !== null);
  const closed = await b.evaluate(() => window.closeInfo);
  if (closed.code !== 4000 || closed.reason !== 'Session ended') {
    throw new Error(`close: ${JSON.stringify(closed)}`);
  }
  await waitFor(a, (id) => window.received.some((m) => m.event === 'left' && m.client === id), bId);
  const aReceived = await a.evaluate(() => window.received);
  console.log(JSON.stringify({ ok: true, closed, a_received: aReceived.length }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
