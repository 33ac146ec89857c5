// socket.io-client 4.8 in headless Chromium against Groupcast's Socket.IO server: the scenario
// of socketio_scenario.mjs (the one socketio_client.mjs runs in Node), imported by a page.
//
// A small HTTP server on a loopback port (another origin than the Socket.IO server's, as an
// application's page would be) serves the page, socket.io-client's browser bundle, centrifuge-js'
// browser bundle and the scenario module, all from tests/sdk (no network). The API key stays in
// Node: the page calls the API through a function exposed to it.
//
// Usage: node socketio_browser.mjs URL API_URL API_KEY TOKEN BAD_TOKEN TRANSPORTS
//   TRANSPORTS: "default" (polling, then the upgrade), "websocket" or "polling".
// Prints the scenario's summary, {"ok":true,...}, last. Fails (exit 1) when the scenario fails,
// or when the page throws or logs an error (but one, below), with the step that failed, what
// the page logged and every Engine.IO request it made with the server's answer. The browser is
// closed in every case (and Chromium, on a pipe to this process, ends if this process is killed).
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [url, apiUrl, apiKey, token, badToken, transports] = process.argv.slice(2);
if (!transports) {
  console.error('usage: node socketio_browser.mjs URL API_URL API_KEY TOKEN BAD_TOKEN TRANSPORTS');
  process.exit(2);
}

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const files = {
  '/': ['text/html; charset=utf-8', null],
  '/socket.io.js': ['text/javascript', here('node_modules/socket.io-client/dist/socket.io.js')],
  '/centrifuge.js': ['text/javascript', here('node_modules/centrifuge/dist/centrifuge.js')],
  '/socketio_scenario.mjs': ['text/javascript', here('socketio_scenario.mjs')],
};
const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>socket.io-client in Chromium</title>
<link rel="icon" href="data:,">
<script src="/socket.io.js"></script>
<script src="/centrifuge.js"></script>
</head><body></body></html>
`;
const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const file = files[path];
  if (req.method !== 'GET' || !file) {
    res.writeHead(404).end();
    return;
  }
  const body = file[1] ? await readFile(file[1]) : page;
  res.writeHead(200, { 'Content-Type': file[0], 'Cache-Control': 'no-store' }).end(body);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/`;

// What the page said and did, printed when the run fails. An error it logs fails the run, with
// one exception (below).
const said = { errors: [], log: [], failedRequests: [], trace: [] };
// Engine.IO sessions the page ended itself (a close packet, "1", in a POST): a poll of one of
// them that was on its way as the close went may find the session gone (400, code 1 "Session
// ID unknown"), which Chromium logs as an error; those are counted, not failed.
const closedByPage = new Set();
const refused = new Map();
const reading = [];
let browser;
const timer = setTimeout(() => {
  console.error(`timed out; the page said ${JSON.stringify(said, null, 1)}`);
  // Close the browser before leaving (Playwright kills it on exit too).
  Promise.resolve(browser?.close()).finally(() => process.exit(1));
}, 50000);
let code = 1;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext();
  const tab = await context.newPage();
  const t0 = Date.now();
  const at = () => `${String(Date.now() - t0).padStart(5)} ms`;
  const eio = (r) => r.url().includes('/socket.io/');
  tab.on('console', (m) => {
    const { url: where } = m.location();
    const line = `${at()} ${m.type()}: ${m.text()}${where ? ` (${where})` : ''}`;
    if (m.type() === 'error') said.errors.push({ line, url: where, text: m.text() });
    else said.log.push(line);
  });
  tab.on('pageerror', (e) => said.errors.push({ line: `${at()} page error: ${e.stack || e.message}` }));
  tab.on('crash', () => said.errors.push({ line: `${at()} the page crashed` }));
  tab.on('request', (r) => {
    if (!eio(r)) return;
    const body = r.postData() ?? '';
    said.trace.push(`${at()} > ${r.method()} ${r.url().split('?')[1]} ${JSON.stringify(body.slice(0, 200))}`);
    if (r.method() === 'POST' && body.split('\x1e').includes('1')) {
      closedByPage.add(new URL(r.url()).searchParams.get('sid'));
    }
  });
  tab.on('response', (r) => {
    if (!eio(r) && r.status() < 400) return;
    reading.push(r.text().catch((e) => `(no body: ${e.message})`).then((body) => {
      said.trace.push(`${at()} < ${r.request().method()} ${r.url().split('?')[1]} ${r.status()} ${JSON.stringify(body.slice(0, 200))}`);
      if (r.status() >= 400) refused.set(r.url(), body);
    }));
  });
  // Aborted requests are normal (a long poll when the transport upgrades, a closed socket).
  tab.on('requestfailed', (r) => said.failedRequests.push(`${at()} ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  await tab.exposeFunction('groupcastApi', async (method, body) => {
    const res = await fetch(`${apiUrl}/${method}`, {
      method: 'POST',
      headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    return res.json();
  });
  await tab.goto(pageUrl);
  const summary = await tab.evaluate(async (cfg) => {
    const { run } = await import('/socketio_scenario.mjs');
    const kind = (x) => {
      if (x instanceof ArrayBuffer) return 'ArrayBuffer';
      if (ArrayBuffer.isView(x)) return x.constructor.name;
      if (x instanceof Blob) return 'Blob';
      return null;
    };
    const summary = await run({
      io: window.io,
      url: cfg.url,
      transports: cfg.transports,
      token: cfg.token,
      badToken: cfg.badToken,
      api: window.groupcastApi,
      centrifuge: () => new window.Centrifuge(`${cfg.url.replace(/^http/, 'ws')}/connection/websocket`,
        { token: cfg.token }),
      binaries: [
        { kind: 'Uint8Array', make: (bytes) => Uint8Array.from(bytes) },
        { kind: 'ArrayBuffer', make: (bytes) => Uint8Array.from(bytes).buffer },
        { kind: 'Blob', make: (bytes) => new Blob([Uint8Array.from(bytes)]) },
      ],
      binaryKind: kind,
      log: (line) => console.log(line),
      bytesOf: (x) => {
        if (x instanceof ArrayBuffer) return [...new Uint8Array(x)];
        if (ArrayBuffer.isView(x)) return [...new Uint8Array(x.buffer, x.byteOffset, x.byteLength)];
        return null;
      },
    });
    summary.user_agent = navigator.userAgent;
    return summary;
  }, { url, transports, token, badToken });
  await Promise.all(reading);
  const late = (e) => {
    if (!e.url || !/status of 400/.test(e.text)) return false;
    const sid = new URL(e.url).searchParams.get('sid');
    return closedByPage.has(sid) && /"code":1\b/.test(refused.get(e.url) ?? '');
  };
  summary.late_polls = said.errors.filter(late).length;
  const errors = said.errors.filter((e) => !late(e)).map((e) => e.line);
  if (errors.length) {
    throw new Error(`the page logged errors: ${JSON.stringify(errors, null, 1)}`);
  }
  console.log(JSON.stringify(summary));
  code = 0;
} catch (e) {
  console.error(e.stack || String(e));
  await Promise.all(reading);
  said.errors = said.errors.map((e) => e.line);
  console.error(`the page said: ${JSON.stringify(said, null, 1)}`);
} finally {
  clearTimeout(timer);
  await browser?.close();
  server.close();
}
process.exit(code);
