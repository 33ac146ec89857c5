// examples/event-daemon (seed 001) as LQDOJ runs it: its pages (socket.io-client in Chromium)
// and its Django poster (python-socketio, examples/event-daemon/event_poster.py), on
// Groupcast's Socket.IO server with the daemon's logic in daemon.py.
//
// Usage: node example_event_daemon.mjs PAGE_URL URL PYTHON EXAMPLE_DIR KEY DAEMON_URL MODE
//   URL   the Socket.IO entry (EVENT_DAEMON_PUBLIC_URL): groupcast dev, or nginx
//   DAEMON_URL  the daemon (GET /: how many browsers it counts)
//   MODE  dev: a page's reconnect is forced (its transport closed), and the daemon runs with
//         EVENT_DAEMON_MAX_CLIENTS=3 (its capacity is checked); cluster=CMD: the edge holding
//         the page's session is killed with `CMD kill <edge>` (the daemon does not hear that
//         the sockets of a dead edge are gone, so capacity is not checked there).
// Prints {"ok":true,...}.
import { spawn, execFileSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [pageUrl, url, python, exampleDir, key, daemonUrl, mode] = process.argv.slice(2);
if (!mode) {
  console.error('usage: node example_event_daemon.mjs PAGE_URL URL PYTHON EXAMPLE_DIR KEY DAEMON_URL MODE');
  process.exit(2);
}
setTimeout(() => { console.error('timed out'); process.exit(1); }, 150000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const check = (cond, what) => { if (!cond) throw new Error(what); };
const T = 20000;

async function until(what, pred, ms = T) {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(50);
  }
}

/** The poster's code (EventPoster) in a Python child, one call per line of JSON. */
function poster() {
  const code = `
import json, sys
sys.path.insert(0, ${JSON.stringify(exampleDir)})
from event_poster import EventPoster
p = EventPoster(sys.argv[1], sys.argv[2])
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "post":
        print(json.dumps(p.post(cmd["channel"], cmd["message"])), flush=True)
    elif cmd["op"] == "last":
        print(json.dumps(p.last()), flush=True)
    elif cmd["op"] == "key":
        p.close(); p = EventPoster(sys.argv[1], cmd["key"]); print("0", flush=True)
    elif cmd["op"] == "reset":
        p.close(); print("0", flush=True)
`;
  const child = spawn(python, ['-c', code, url, key], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const waiting = [];
  lines.on('line', (l) => waiting.shift()(JSON.parse(l)));
  const ask = (cmd) => new Promise((resolve) => { waiting.push(resolve); child.stdin.write(`${JSON.stringify(cmd)}\n`); });
  return {
    child,
    post: (channel, message) => ask({ op: 'post', channel, message }),
    last: () => ask({ op: 'last' }),
    withKey: (k) => ask({ op: 'key', key: k }),
    reset: () => ask({ op: 'reset' }),
  };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const post = poster();
try {
  const open = async (channels) => {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${pageUrl}?channels=${channels}&url=${encodeURIComponent(url)}`);
    return page;
  };
  const state = (page) => page.evaluate(() => window.eventClient.state);
  const a = await open('submissions,contest_1');
  const b = await open('contest_2');
  for (const p of [a, b]) await until('status success', async () => (await state(p)).statuses >= 1);

  // The poster: acks with ids, rising across channels; the last id.
  const ids = {};
  for (const [channel, n] of [['submissions', 3], ['contest_1', 2], ['contest_2', 2], ['elsewhere', 1]]) {
    ids[channel] = [];
    for (let i = 0; i < n; i++) ids[channel].push(await post.post(channel, { n: i, channel }));
  }
  const all = Object.values(ids).flat();
  check(all.every((id) => id > 0), `a post failed: ${JSON.stringify(ids)}`);
  check(all.every((id, i) => i === 0 || id > all[i - 1]), `ids not rising: ${all}`);
  check(await post.last() === all[all.length - 1], 'last-msg');
  check(await post.post('bad channel!', 'x') === 0, 'an invalid channel was posted');
  check(await post.post('x'.repeat(101), 'x') === 0, 'a 101-character channel was posted');
  check(await post.post('submissions', 'x'.repeat(11000)) === 0, 'a payload over 10 KB was posted');
  await post.withKey('not the key');
  check(await post.post('submissions', 'x') === 0, 'a wrong key posted');
  await post.withKey(key);

  // Each page got its channels' messages, in order, and nothing else.
  const got = async (page) => (await state(page)).received.map((m) => m.id);
  const want = (...chs) => chs.flatMap((c) => ids[c]).sort((x, y) => x - y);
  await until('page a', async () => (await got(a)).length >= 5);
  await until('page b', async () => (await got(b)).length >= 2);
  check(JSON.stringify(await got(a)) === JSON.stringify(want('submissions', 'contest_1')), `a: ${await got(a)}`);
  check(JSON.stringify(await got(b)) === JSON.stringify(want('contest_2')), `b: ${await got(b)}`);

  // Errors, each with its code.
  const errs = async (page) => (await state(page)).errors;
  await a.evaluate(() => window.eventClient.setFilter('submissions'));
  await until('invalid-filter', async () => (await errs(a)).includes('invalid-filter'));
  await a.evaluate(() => window.eventClient.setFilter(Array.from({ length: 11 }, (_, i) => `c${i}`)));
  await until('too-many-subscriptions', async () => (await errs(a)).includes('too-many-subscriptions'));
  await a.evaluate(() => window.eventClient.setFilter(['submissions', 'no spaces']));
  await until('invalid-channel', async () => (await errs(a)).includes('invalid-channel'));

  // Capacity: 3 pages; a 4th gets server-capacity, then is disconnected by the server.
  if (mode === 'dev') {
    const c = await open('submissions');
    await until('page c', async () => (await state(c)).statuses >= 1);
    const d = await open('submissions');
    await until('server-capacity', async () => (await errs(d)).includes('server-capacity'));
    await until('d disconnected', async () => (await state(d)).disconnects.includes('io server disconnect'));
    // Leave as a page does when it navigates away: the socket says goodbye (a page closed while
    // long-polling would be noticed only at its next missed ping).
    await c.evaluate(() => window.eventClient.socket.disconnect());
    const counted = async () => (await (await fetch(`${daemonUrl}/`)).json()).clients;
    await until('the daemon counts 2 pages', async () => (await counted()) === 2);
    await c.close();
    await d.close();
  }

  // A new channel: its messages newer than the page's start come again (the catch-up).
  await a.evaluate(() => window.eventClient.setFilter(['submissions', 'contest_1', 'contest_2']));
  await until('catch-up of contest_2', async () => (await got(a)).length >= 7);

  // A reconnect: the page's transport goes away; what is posted meanwhile arrives after it
  // reconnects, through the load balancer, exactly once.
  let killed = null;
  if (mode === 'dev') {
    await a.evaluate(() => window.eventClient.socket.io.engine.close());
  } else {
    const sid = await a.evaluate(() => window.eventClient.socket.io.engine.id);
    killed = Buffer.from(sid.split('.')[1], 'base64url').toString();
    execFileSync(mode.slice('cluster='.length), ['kill', killed], { stdio: 'inherit' });
    await post.reset();
  }
  const during = [];
  for (let i = 0; i < 3; i++) during.push(await post.post('submissions', { during: i }));
  check(during.every((id) => id > 0), `posts while the page was away: ${during}`);
  ids.submissions.push(...during);
  await until('reconnected', async () => (await state(a)).connects >= 2, 60000);
  const expect = want('submissions', 'contest_1', 'contest_2');
  try {
    await until('caught up', async () => (await got(a)).length >= expect.length, 30000);
  } catch (e) {
    throw new Error(`${e.message}: want ${expect}, page a ${JSON.stringify(await state(a))}`);
  }
  await sleep(500);
  const final = await got(a);
  check(JSON.stringify([...final].sort((x, y) => x - y)) === JSON.stringify(expect),
    `after the reconnect: ${final} want ${expect}`);
  const s = await state(a);
  // repeats: messages that came twice (live and in the catch-up) and the page dropped.
  console.log(JSON.stringify({ ok: true, posted: all.length + during.length, killed,
    disconnects: s.disconnects, repeats: s.repeats }));
} finally {
  post.child.kill();
  await browser.close();
}
