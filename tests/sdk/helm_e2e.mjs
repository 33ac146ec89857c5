// Clients and a publisher for the Kubernetes end-to-end test
// (helm/test/e2e.sh): real centrifuge-js clients connect through the edge
// Service, subscribe to one history channel with recovery, and every
// publication made through the server API (one every 100 ms, retried with
// its idempotency key until answered) must reach every client exactly once
// and in order, through edge pods being deleted and a `helm upgrade` that
// rolls every edge.
//
// Usage: node helm_e2e.mjs BASE_URL API_KEY TOKEN_HMAC_SECRET [CLIENTS]
//   BASE_URL: http://HOST:PORT of the edge Service.
// Control on stdin, one command per line (the script's progress on stdout):
//   presence   check API presence equals the connected clients and that
//              they are spread over at least two edges (API info)
//   phase NAME log a marker
//   stop       stop publishing, wait for every client to hold everything,
//              print a JSON summary, exit 0 (or 1 with the reason)
// Prints READY when every client is subscribed.

import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

const [base, apiKey, secret, nArg] = process.argv.slice(2);
if (!base || !apiKey || !secret) {
  console.error('usage: node helm_e2e.mjs BASE_URL API_KEY TOKEN_HMAC_SECRET [CLIENTS]');
  process.exit(2);
}
const N = Number(nArg || 40);
const CHANNEL = `e2e-${Date.now()}`;
const started = Date.now();
const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);
function fail(why) {
  console.error(`FAIL: ${why}`);
  process.exit(1);
}
process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${e && e.stack ? e.stack : e}`));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function token(user) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

async function api(method, body) {
  const res = await fetch(`${base}/api/${method}`, {
    method: 'POST',
    headers: { Authorization: `apikey ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(6000),
  });
  const v = await res.json();
  if (res.status !== 200 || v.error) throw new Error(`API ${method}: ${res.status} ${JSON.stringify(v)}`);
  return v.result || {};
}

// ------------------------------------------------------------ clients
const clients = [];
for (let i = 0; i < N; i++) {
  const c = {
    user: `u${i}`,
    got: [],
    problems: [],
    reconnects: 0,
    subscribed: false,
    recoveries: 0,
  };
  c.centrifuge = new Centrifuge(`${base.replace(/^http/, 'ws')}/connection/websocket`, {
    websocket: WebSocket,
    token: token(c.user),
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
  });
  c.centrifuge.on('disconnected', (ctx) => c.problems.push(`disconnected ${ctx.code} ${ctx.reason}`));
  c.centrifuge.on('connecting', (ctx) => {
    if (c.subscribed) c.reconnects++;
  });
  const sub = c.centrifuge.newSubscription(CHANNEL);
  sub.on('subscribed', (ctx) => {
    if (ctx.wasRecovering) {
      c.recoveries++;
      if (!ctx.recovered) c.problems.push('resubscribed without recovery');
    }
    c.subscribed = true;
  });
  sub.on('publication', (ctx) => {
    const n = ctx.data.n;
    const last = c.got.length ? c.got[c.got.length - 1] : 0;
    if (n !== last + 1) c.problems.push(`got ${n} after ${last}`);
    c.got.push(n);
  });
  sub.on('error', (ctx) => c.problems.push(`subscription error ${JSON.stringify(ctx.error)}`));
  sub.subscribe();
  c.centrifuge.connect();
  clients.push(c);
}
const deadline = Date.now() + 30000;
while (!clients.every((c) => c.subscribed)) {
  if (Date.now() > deadline) fail(`${clients.filter((c) => !c.subscribed).length} clients not subscribed after 30 s`);
  await sleep(50);
}
log(`READY ${N} clients subscribed to ${CHANNEL}`);

// ------------------------------------------------------------ publisher
let published = 0;
let publishing = true;
let longestPublishMs = 0;
const publisher = (async () => {
  while (publishing) {
    const n = published + 1;
    const t0 = Date.now();
    for (let attempt = 1; ; attempt++) {
      try {
        await api('publish', { channel: CHANNEL, data: { n }, idempotency_key: `e2e-${n}` });
        break;
      } catch (e) {
        if (Date.now() - t0 > 30000) fail(`publish ${n} failed for 30 s: ${e}`);
        await sleep(100);
      }
    }
    longestPublishMs = Math.max(longestPublishMs, Date.now() - t0);
    published = n;
    await sleep(100);
  }
})();

// ------------------------------------------------------------ control
// Presence lists every client, on two edges or more: polled (bounded) until
// it does, since clients reconnect and edges report on their own time.
async function presence() {
  const deadline = Date.now() + 60000;
  for (;;) {
    let p;
    let info;
    try {
      p = await api('presence', { channel: CHANNEL });
      info = await api('info', {});
    } catch (e) {
      if (Date.now() > deadline) fail(`presence: ${e}`);
      await sleep(500);
      continue;
    }
    const users = new Set(Object.values(p.presence || {}).map((e) => e.user));
    const connected = clients.filter((c) => c.centrifuge.state === 'connected').length;
    const withClients = (info.nodes || []).filter((n) => (n.num_clients || 0) > 0);
    if (users.size === N && withClients.length >= 2) {
      log(`presence: ${users.size} users, clients on ${withClients.length} edges (${withClients.map((n) => `${n.name}=${n.num_clients}`).join(', ')})`);
      return;
    }
    if (Date.now() > deadline) {
      if (users.size !== N) fail(`presence lists ${users.size} users, ${N} clients (${connected} connected)`);
      fail(`clients on ${withClients.length} edge(s), want 2 or more: ${JSON.stringify(info.nodes)}`);
    }
    await sleep(500);
  }
}

async function stop() {
  publishing = false;
  await publisher;
  const until = Date.now() + 60000;
  while (!clients.every((c) => c.got.length >= published)) {
    if (Date.now() > until) break;
    await sleep(100);
  }
  const bad = clients.filter((c) => c.problems.length || c.got.length !== published);
  const summary = {
    clients: N,
    published,
    longest_publish_ms: longestPublishMs,
    reconnects: clients.reduce((s, c) => s + c.reconnects, 0),
    recoveries: clients.reduce((s, c) => s + c.recoveries, 0),
    clients_with_problems: bad.length,
  };
  console.log(JSON.stringify(summary));
  if (bad.length) {
    for (const c of bad.slice(0, 5)) console.error(`${c.user}: ${c.got.length}/${published} received; ${c.problems.slice(0, 5).join('; ')}`);
    fail(`${bad.length} clients lost, repeated or reordered publications`);
  }
  for (const c of clients) c.centrifuge.disconnect();
  process.exit(0);
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  const [cmd, ...rest] = line.trim().split(/\s+/);
  if (cmd === 'presence') await presence();
  else if (cmd === 'phase') log(`phase ${rest.join(' ')} (published so far: ${published})`);
  else if (cmd === 'stop') await stop();
  else if (cmd) fail(`unknown command ${cmd}`);
}
await stop();
