// examples/backend-relay (seed 004) as its users run it: the page's plain WebSocket in Chromium
// tabs, bound by a relay route to backend processes (examples/backend-relay/backend.py) that
// get join / message / heartbeat / leave with the session's metadata and act by client id.
//
// Usage: node example_backend_relay.mjs PAGE_URL WS_A WS_B GATEWAY_URL
//   PAGE_URL     the page (http://127.0.0.1:PORT/); tab "alice" connects to WS_A, "bob" to WS_B
//                (…/ws/ on two edges of the cluster, or the dev server twice)
//   GATEWAY_URL  the gateway (GET /processes: the processes' pids)
// Prints {"ok":true} at the end; anything else fails with a message.
import { chromium } from 'playwright-core';

const [pageUrl, wsA, wsB, gatewayUrl] = process.argv.slice(2);
if (!gatewayUrl) {
  console.error('usage: node example_backend_relay.mjs PAGE_URL WS_A WS_B GATEWAY_URL');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
setTimeout(() => { console.error('timed out'); process.exit(1); }, 100000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = 20000;

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function open(context, user, ws, base = pageUrl) {
  const page = await context.newPage();
  const q = user === null ? '' : `user_id=${encodeURIComponent(user)}&`;
  await page.goto(`${base}?${q}ws=${encodeURIComponent(ws)}`);
  return page;
}

/** The events a tab has shown, parsed. */
const events = (page) => page.$$eval('#events li', (lis) => lis.map((li) => JSON.parse(li.textContent)));

/** Waits until the tab has shown an event matching `pred`; returns it. */
async function waitEvent(page, what, pred) {
  const deadline = Date.now() + T;
  for (;;) {
    const found = (await events(page)).find(pred);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`${what}: not seen in ${JSON.stringify(await events(page))}`);
    await sleep(50);
  }
}

async function closedWith(page, code) {
  await page.locator(`#status[data-code="${code}"]`).waitFor({ timeout: T }).catch(async () => {
    throw new Error(`expected close ${code}, status is ${await page.textContent('#status')}`);
  });
  return page.textContent('#status');
}

async function pids() {
  const res = await fetch(`${gatewayUrl}/processes`);
  return res.json();
}

try {
  const context = await browser.newContext();
  const alice = await open(context, 'alice', wsA);
  const hiA = await waitEvent(alice, 'alice welcome', (e) => e.event === 'welcome');
  const bob = await open(context, 'bob', wsB);
  const hiB = await waitEvent(bob, 'bob welcome', (e) => e.event === 'welcome');
  // Each connection is bound to the process the gateway named, with the seed's metadata.
  for (const [hi, user] of [[hiA, 'alice'], [hiB, 'bob']]) {
    if (hi.process !== 'lobby' || hi.metadata.user_id !== user) throw new Error(`welcome ${JSON.stringify(hi)}`);
  }
  if (wsA !== wsB && hiA.node === hiB.node) throw new Error(`both tabs on one edge: ${hiA.node}`);
  await waitEvent(alice, 'alice told bob joined', (e) => e.event === 'joined' && e.user_id === 'bob');

  // Broadcast to the clients the process tracks.
  await alice.fill('#text', 'hello everyone');
  await alice.click('#say');
  for (const page of [alice, bob]) {
    await waitEvent(page, 'said', (e) => e.event === 'said' && e.user_id === 'alice' && e.text === 'hello everyone');
  }
  // An answer to one client by id.
  await bob.click('#whoami');
  const you = await waitEvent(bob, 'whoami', (e) => e.event === 'you');
  if (you.client !== hiB.client || you.metadata.user_id !== 'bob') throw new Error(`you ${JSON.stringify(you)}`);
  // Heartbeats (every 5 s) carry the connection's uptime and message count.
  const beat = await waitEvent(alice, 'heartbeat', (e) => e.event === 'heartbeat' && e.message_count >= 1);
  if (!(beat.uptime_ms > 0)) throw new Error(`heartbeat ${JSON.stringify(beat)}`);

  // A transfer: bob's connection moves to the games process, keeping its metadata; the lobby
  // sees him leave with code 0 "transferred".
  await bob.click('#transfer');
  const hiGames = await waitEvent(bob, 'welcome from games', (e) => e.event === 'welcome' && e.process === 'games');
  if (hiGames.client !== hiB.client || hiGames.metadata.user_id !== 'bob') throw new Error(`games welcome ${JSON.stringify(hiGames)}`);
  await waitEvent(alice, 'bob left the lobby', (e) => e.event === 'left' && e.user_id === 'bob' && e.code === 0 && e.reason === 'transferred');
  await bob.fill('#text', 'in games');
  await bob.click('#say');
  await waitEvent(bob, 'said in games', (e) => e.event === 'said' && e.process === 'games' && e.text === 'in games');
  await alice.fill('#text', 'still in the lobby');
  await alice.click('#say');
  await waitEvent(alice, 'own say', (e) => e.text === 'still in the lobby');
  if ((await events(alice)).some((e) => e.text === 'in games')) throw new Error('the lobby got a games broadcast');

  // The process exits: its connections close (3015, the gateway declared it gone), and the
  // gateway starts it again.
  const before = await pids();
  process.kill(before.games, 'SIGKILL');
  const gone = await closedWith(bob, 3015);
  if (!gone.includes('backend target gone')) throw new Error(`bob closed: ${gone}`);
  if ((await alice.textContent('#status')) !== 'open') throw new Error('alice closed with the games process');
  const deadline = Date.now() + T;
  while (!((await pids()).games > 0 && (await pids()).games !== before.games)) {
    if (Date.now() > deadline) throw new Error(`games not restarted: ${JSON.stringify(await pids())}`);
    await sleep(100);
  }

  // The process closes a session by id.
  await alice.click('#bye');
  const bye = await closedWith(alice, 1000);
  if (!bye.includes('Session ended')) throw new Error(`alice closed: ${bye}`);

  // No user_id: the gateway refuses the session (3507 with its message and code).
  const nobody = await open(context, '', wsA);
  const refused = await closedWith(nobody, 3507);
  if (!refused.includes('user_id required (1001)')) throw new Error(`no user_id: ${refused}`);

  // Another origin (the same page from http://localhost:PORT) is refused before the upgrade.
  const other = pageUrl.replace('127.0.0.1', 'localhost');
  const eve = await open(context, 'eve', wsA, other);
  await closedWith(eve, 1006);
  if ((await events(eve)).length !== 0) throw new Error('a page from another origin got events');
  console.log(JSON.stringify({ ok: true }));
} finally {
  await browser.close();
}
