// Delta compression with the real centrifuge-js SDK (JSON or its protobuf
// build): a subscription with `delta: 'fossil'` receives large, slowly
// changing publications (seed 003's world state) as Fossil deltas, decodes
// every one to exactly what was published, recovers after a reconnect, and
// goes on with deltas.
//
// Usage: node centrifuge_delta.mjs WS_URL API_URL API_KEY TOKEN [json|protobuf]
// One JSON summary line on success (exit 0); the SDK's delta statistics are
// in it.
import WebSocket from 'ws';

const [wsUrl, apiUrl, apiKey, token, encoding = 'json'] = process.argv.slice(2);
const protobuf = encoding === 'protobuf';
const { Centrifuge } = await import(protobuf ? 'centrifuge/build/protobuf' : 'centrifuge');
const decode = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);
const CHANNEL = 'world';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fail = (m) => { console.error(`FAIL: ${m}`); process.exit(1); };
// Bounds for what merely has to happen (generous: a busy machine is slow,
// not wrong); the script's own bound stays under the Rust test's 60 s.
setTimeout(() => fail('did not finish within 55 s'), 55000).unref();

async function until(cond, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

// A world state of 100 entities; each tick moves one of them.
function world(tick) {
  const entities = [];
  for (let i = 0; i < 100; i++) {
    const moved = i === tick % 100 ? tick : 0;
    entities.push({ id: i, name: `entity-${i}`, x: i * 10 + moved, y: i * 5, hp: 100 });
  }
  return { tick, entities };
}

async function publish(tick) {
  const res = await fetch(`${apiUrl}/publish`, {
    method: 'POST',
    headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel: CHANNEL, data: world(tick) }),
  });
  const body = await res.json();
  if (!body.result) fail(`publish ${tick}: ${JSON.stringify(body)}`);
}

const client = new Centrifuge(wsUrl, { websocket: WebSocket, token, minReconnectDelay: 50, maxReconnectDelay: 200 });
const got = [];
const errors = [];
const subscribed = [];
const sub = client.newSubscription(CHANNEL, { delta: 'fossil' });
sub.on('publication', (ctx) => got.push(decode(ctx.data)));
sub.on('subscribed', (ctx) => subscribed.push(ctx));
sub.on('error', (ctx) => errors.push(ctx.error));
client.on('error', (ctx) => errors.push(ctx.error));
client.connect();
sub.subscribe();
await until(() => subscribed.length === 1, 'subscribed');

// Live: ticks 1..20.
for (let t = 1; t <= 20; t++) await publish(t);
await until(() => got.length === 20, '20 live publications');

// Reconnect, miss ticks 21..25, recover them, then live again 26..40.
client.disconnect();
for (let t = 21; t <= 25; t++) await publish(t);
client.connect();
await until(() => subscribed.length === 2, 'resubscribed');
if (!subscribed[1].recovered) fail(`not recovered: ${JSON.stringify(subscribed[1])}`);
for (let t = 26; t <= 40; t++) await publish(t);
await until(() => got.length === 40, '40 publications');

// Key order is not part of JSON's meaning (the API may reorder keys).
const canonical = (v) => JSON.stringify(v, (_, x) => (x && typeof x === 'object' && !Array.isArray(x)
  ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, x[k]]))
  : x));
for (let t = 1; t <= 40; t++) {
  if (canonical(got[t - 1]) !== canonical(world(t))) {
    fail(`publication ${t} decoded to ${JSON.stringify(got[t - 1]).slice(0, 200)}`);
  }
}
if (errors.length) fail(`SDK errors: ${JSON.stringify(errors)}`);
const stats = sub.deltaStats();
if (!(stats.numDeltaPayloads > 0)) fail(`no delta payloads: ${JSON.stringify(stats)}`);
client.disconnect();
console.log(JSON.stringify({ ok: true, encoding, publications: got.length, stats }));
process.exit(0);
