// Real centrifuge-js SDK against a running Groupcast server: connect,
// subscribe, live publications, recovery after a client-side reconnect and
// after a server-forced reconnect (disconnect code 3011), a client publish.
//
// Usage: node centrifuge_recovery.mjs WS_URL API_URL API_KEY TOKEN [json|protobuf] [TRANSPORT]
// `protobuf` runs the SDK's protobuf build (centrifuge/build/protobuf, the
// `centrifuge-protobuf` subprotocol); publication data then arrives as bytes
// (the JSON text), and the client publishes bytes.
// TRANSPORT: `websocket` (the default), or only `http_stream` or only `sse`
// (JSON), at WS_URL's host with the emulation endpoint there (`/emulation`);
// `sse` needs Node's EventSource (`node --experimental-eventsource`).
// Exit code 0 and a one-line JSON summary on stdout only on full success.
// Run by tests/tests/sdk.rs (cargo test -p groupcast-tests --test sdk).

import WebSocket from 'ws';

const [wsUrl, apiUrl, apiKey, token, encoding = 'json', transport = 'websocket'] = process.argv.slice(2);
const protobuf = encoding === 'protobuf';
const { Centrifuge } = await import(protobuf ? 'centrifuge/build/protobuf' : 'centrifuge');
// Publication data as the script compares it: objects in both encodings.
const decode = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);
const encode = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
if (!wsUrl || !apiUrl || !apiKey || !token) {
  console.error('usage: node centrifuge_recovery.mjs WS_URL API_URL API_KEY TOKEN');
  process.exit(2);
}

const CHANNEL = 'news';
// Bounds for what merely has to happen (generous: a busy machine is slow,
// not wrong); the script's own bound stays under the Rust test's 60 s.
const STEP_TIMEOUT_MS = 15000;
const SCRIPT_TIMEOUT_MS = 55000;

const started = Date.now();
const trace = [];
function note(what, detail) {
  trace.push(`${Date.now() - started}ms ${what}${detail === undefined ? '' : ' ' + JSON.stringify(detail)}`);
}

let client = null;
function fail(message) {
  console.error(`FAIL: ${message}`);
  console.error('event trace:');
  for (const line of trace) console.error(`  ${line}`);
  try {
    if (client) client.disconnect();
  } catch (_) {
    // exiting anyway
  }
  process.exit(1);
}

const watchdog = setTimeout(() => fail(`script did not finish within ${SCRIPT_TIMEOUT_MS} ms`), SCRIPT_TIMEOUT_MS);

process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${e && e.stack ? e.stack : JSON.stringify(e)}`));
process.on('uncaughtException', (e) => fail(`uncaught exception: ${e && e.stack ? e.stack : e}`));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `cond` until it returns a truthy value; fail with `what` after `ms`. */
async function until(cond, what, ms = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > deadline) fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

function userFromToken(jwt) {
  const parts = jwt.split('.');
  if (parts.length !== 3) fail('connection token is not a JWT');
  const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  if (typeof claims.sub !== 'string' || claims.sub === '') fail('connection token has no sub claim');
  return claims.sub;
}

async function api(method, body) {
  let res;
  try {
    res = await fetch(`${apiUrl}/${method}`, {
      method: 'POST',
      headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
    });
  } catch (e) {
    fail(`API ${method} request failed: ${e}`);
  }
  const text = await res.text();
  if (res.status !== 200) fail(`API ${method} answered HTTP ${res.status}: ${text}`);
  let json;
  try {
    json = JSON.parse(text);
  } catch (_) {
    fail(`API ${method} answered non-JSON body: ${text}`);
  }
  if (json.error) fail(`API ${method} answered error: ${text}`);
  if (!json.result || typeof json.result !== 'object') fail(`API ${method} answered no result: ${text}`);
  note(`api ${method}`, { body, reply: json });
  return json.result;
}

async function publish(n) {
  const r = await api('publish', { channel: CHANNEL, data: { n } });
  if (typeof r.offset !== 'number' || r.offset <= 0 || typeof r.epoch !== 'string' || r.epoch === '') {
    fail(`API publish n=${n} result has no offset/epoch: ${JSON.stringify(r)}`);
  }
  return r;
}

const user = userFromToken(token);

// ---- state recorded from SDK events ----
const pubs = []; // { n, offset, data }
const subscribed = []; // SubscribedContext
const connected = []; // ConnectedContext
const connecting = []; // ConnectingContext
const disconnected = []; // DisconnectedContext
const errors = [];

// The HTTP transports: that one only (no WebSocket to fall back on).
const base = wsUrl.replace(/^ws/, 'http').replace(/\/connection\/websocket$/, '');
const endpoint = transport === 'websocket'
  ? wsUrl
  : [{ transport, endpoint: `${base}/connection/${transport}` }];
if (transport === 'sse' && typeof EventSource === 'undefined') fail('no EventSource: run node --experimental-eventsource');
client = new Centrifuge(endpoint, {
  websocket: WebSocket,
  emulationEndpoint: `${base}/emulation`,
  eventsource: transport === 'sse' ? EventSource : null,
  token,
  timeout: 10000,
  minReconnectDelay: 100,
  maxReconnectDelay: 1000,
});
client.on('state', (ctx) => note('state', ctx));
client.on('connecting', (ctx) => { note('connecting', ctx); connecting.push(ctx); });
client.on('connected', (ctx) => { note('connected', ctx); connected.push(ctx); });
client.on('disconnected', (ctx) => { note('disconnected', ctx); disconnected.push(ctx); });
client.on('error', (ctx) => {
  const e = { type: ctx.type, error: ctx.error && { code: ctx.error.code, message: ctx.error.message } };
  note('client error', e);
  errors.push(e);
});

// a. connect
client.connect();
const conn1 = await until(() => connected[0], "the 'connected' event");
if (typeof conn1.client !== 'string' || conn1.client === '') {
  fail(`connected context has no client id: ${JSON.stringify(conn1)}`);
}
if (conn1.transport !== transport) fail(`connected over ${conn1.transport}, want ${transport}`);

// b. subscribe
const sub = client.newSubscription(CHANNEL);
sub.on('subscribing', (ctx) => note('subscribing', ctx));
sub.on('subscribed', (ctx) => { note('subscribed', ctx); subscribed.push(ctx); });
sub.on('unsubscribed', (ctx) => note('unsubscribed', ctx));
sub.on('error', (ctx) => {
  const e = { type: ctx.type, error: ctx.error && { code: ctx.error.code, message: ctx.error.message } };
  note('subscription error', e);
  errors.push(e);
});
sub.on('publication', (ctx) => {
  const data = decode(ctx.data);
  note('publication', { data, offset: ctx.offset });
  pubs.push({ n: data && data.n, offset: ctx.offset, data });
});
sub.subscribe();
const sub1 = await until(() => subscribed[0], `the 'subscribed' event for ${CHANNEL}`);
if (sub1.recoverable !== true) fail(`first subscribe: ctx.recoverable is ${sub1.recoverable}, want true`);
if (!sub1.streamPosition || typeof sub1.streamPosition.epoch !== 'string' || sub1.streamPosition.epoch === '') {
  fail(`first subscribe: ctx.streamPosition has no epoch: ${JSON.stringify(sub1.streamPosition)}`);
}
if (sub1.wasRecovering) fail('first subscribe: ctx.wasRecovering is true on a fresh subscription');

const received = (n) => pubs.filter((p) => p.n === n);

// c. live publication from the server API
const p1 = await publish(1);
const got1 = await until(() => received(1)[0], "publication n=1 (live)");
if (typeof got1.offset !== 'number' || got1.offset <= 0) fail(`publication n=1 has no offset: ${JSON.stringify(got1)}`);
if (got1.offset !== p1.offset) fail(`publication n=1 offset ${got1.offset} != API publish offset ${p1.offset}`);
if (p1.epoch !== sub1.streamPosition.epoch) {
  fail(`API publish epoch ${p1.epoch} != subscribe epoch ${sub1.streamPosition.epoch}`);
}

// d. client-side reconnect with recovery
const pubsBeforeD = pubs.length;
client.disconnect();
await until(() => client.state === 'disconnected', "client state 'disconnected' after disconnect()");
await publish(2);
await publish(3);
client.connect();
await until(() => connected.length >= 2, "the 'connected' event after connect()");
const sub2 = await until(() => subscribed[1], "the second 'subscribed' event (after reconnect)");
if (sub2.wasRecovering !== true) fail(`resubscribe: ctx.wasRecovering is ${sub2.wasRecovering}, want true`);
if (sub2.recovered !== true) fail(`resubscribe: ctx.recovered is ${sub2.recovered}, want true`);
if (sub2.hasRecoveredPublications !== true) {
  fail('resubscribe: ctx.hasRecoveredPublications is not true: n=2 and n=3 were not in the subscribe reply');
}
await until(() => received(2).length && received(3).length, 'recovered publications n=2 and n=3');

// e. live again after recovery; n=4 comes after anything recovered (the
// channel keeps its order), so by then a repeat of 2 or 3 would be here.
await publish(4);
await until(() => received(4).length, 'publication n=4 (live after recovery)');
const recoveredNs = pubs.slice(pubsBeforeD).map((p) => p.n);
if (JSON.stringify(recoveredNs) !== JSON.stringify([2, 3, 4])) {
  fail(`after reconnect got publications ${JSON.stringify(recoveredNs)}, want exactly [2,3] then 4`);
}

// f. server-forced reconnect (3011 is a reconnect code)
const connectedBeforeF = connected.length;
const subscribedBeforeF = subscribed.length;
await api('disconnect', { user, disconnect: { code: 3011, reason: 'force reconnect' } });
await publish(5);
const forced = await until(
  () => connecting.find((c) => c.code === 3011),
  "a 'connecting' event with code 3011 after the API disconnect",
);
await until(() => connected.length > connectedBeforeF, "the 'connected' event after the forced reconnect");
const sub3 = await until(() => subscribed[subscribedBeforeF], "the 'subscribed' event after the forced reconnect");
if (sub3.wasRecovering !== true) fail(`resubscribe after 3011: ctx.wasRecovering is ${sub3.wasRecovering}, want true`);
if (sub3.recovered !== true) fail(`resubscribe after 3011: ctx.recovered is ${sub3.recovered}, want true`);
await until(() => received(5).length, 'publication n=5 (recovered or live) after the forced reconnect');

// g. the client publishes; it comes back on its own subscription, after
// everything before it on the channel: the checks below run once it is
// here (a repeat of 1..5 or a second disconnect would have come first).
await sub.publish(encode({ n: 6 }));
await until(() => received(6).length, 'publication n=6 (published by the client)');
if (client.state !== 'connected') fail(`client state is ${client.state} after the forced reconnect, want connected`);
if (disconnected.length !== 1) {
  fail(`expected only the one 'disconnected' event from disconnect(), got ${JSON.stringify(disconnected)}`);
}

// Every publication exactly once, in order, with consecutive offsets.
const ns = pubs.map((p) => p.n);
if (JSON.stringify(ns) !== JSON.stringify([1, 2, 3, 4, 5, 6])) {
  fail(`publications received ${JSON.stringify(ns)}, want exactly [1,2,3,4,5,6]`);
}
for (let i = 1; i < pubs.length; i++) {
  if (pubs[i].offset !== pubs[0].offset + i) {
    fail(`offsets not consecutive: ${JSON.stringify(pubs.map((p) => p.offset))}`);
  }
}
if (errors.length) fail(`SDK reported errors: ${JSON.stringify(errors)}`);

// h. done
client.disconnect();
clearTimeout(watchdog);
console.log(JSON.stringify({
  ok: true,
  sdk: 'centrifuge-js',
  encoding,
  transport: conn1.transport,
  client: conn1.client,
  user,
  epoch: sub1.streamPosition.epoch,
  offsets: pubs.map((p) => p.offset),
  publications: pubs.map((p) => p.n),
  recovered_after_disconnect: sub2.recovered,
  forced_reconnect: { code: forced.code, reason: forced.reason, recovered: sub3.recovered },
  elapsed_ms: Date.now() - started,
}));
process.exit(0);
