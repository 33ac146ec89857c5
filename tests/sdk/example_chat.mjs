// examples/chat (seed 002) as its users run it: the seed's browser code (three plain WebSockets
// on /ws/chat/<room>/, /ws/notifications/ and /ws/status/ with ?token=, the seed's JSON) in
// Chromium pages, one browser context per user, on Groupcast with examples/chat/backend.py.
//
// Usage: node example_chat.mjs PAGE_URL WS_A WS_B WS_C API_URL API_KEY BACKEND_URL
//   PAGE_URL     the page (…/chat/); alice's sockets go to WS_A, bob's to WS_B, carol's to WS_C
//                (two edges of the cluster and nginx, or the one dev server three times)
//   API_URL      Groupcast's API, to wait until connections are subscribed (the backend's
//                connect proxy names the channels once the socket is open)
//   BACKEND_URL  the backend (POST /api/token/)
// Prints {"ok":true} at the end; anything else fails with a message.
import { createHmac } from 'node:crypto';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

const [pageUrl, wsA, wsB, wsC, apiUrl, apiKey, backend] = process.argv.slice(2);
if (!backend) {
  console.error('usage: node example_chat.mjs PAGE_URL WS_A WS_B WS_C API_URL API_KEY BACKEND_URL');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
setTimeout(() => { console.error('timed out'); process.exit(1); }, 150000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T = 20000;
const step = (what) => console.error(`step: ${what}`);
const fail = (what) => { throw new Error(what); };
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const pageOrigin = new URL(pageUrl).origin;

/** Waits (bounded) until CHANNEL has `n` subscribers, cluster-wide. */
async function subscribers(channel, n) {
  const deadline = Date.now() + T;
  for (;;) {
    const res = await fetch(`${apiUrl}/channels`, {
      method: 'POST',
      headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
      body: JSON.stringify({ pattern: channel }),
    });
    const body = await res.json();
    const c = body.result && body.result.channels && body.result.channels[channel];
    if ((c ? c.num_clients : 0) === n) return;
    if (Date.now() > deadline) fail(`not ${n} subscribers on ${channel}: ${JSON.stringify(body)}`);
    await sleep(50);
  }
}

async function token(username) {
  const res = await fetch(`${backend}/api/token/`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password: 'demo' }),
  });
  if (!res.ok) fail(`token for ${username}: ${res.status}`);
  return (await res.json()).access;
}

const b64url = (b) => Buffer.from(b).toString('base64url');
/** A token with the right claims, signed with another key. */
function forged(userId, username) {
  const h = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const now = Math.floor(Date.now() / 1000);
  const c = b64url(JSON.stringify({ token_type: 'access', sub: String(userId), user_id: userId,
    username, iat: now, exp: now + 3600 }));
  const s = createHmac('sha256', 'not the secret').update(`${h}.${c}`).digest('base64url');
  return `${h}.${c}.${s}`;
}

/** A raw upgrade with this Origin: 'open' or the HTTP status that refused it. */
function upgrade(url, origin) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { origin, handshakeTimeout: T });
    ws.on('open', () => { ws.terminate(); resolve('open'); });
    ws.on('unexpected-response', (_req, res) => { resolve(res.statusCode); res.destroy(); });
    ws.on('error', (e) => resolve(`error ${e.message}`));
  });
}

const pageFor = (ws) => `${pageUrl}?ws=${encodeURIComponent(ws)}&api=${encodeURIComponent(backend)}&room=lobby`;

/** A user logging in on the page (their own browser context: the token is in localStorage). */
async function login(browser, name, ws) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(pageFor(ws));
  await page.fill('#username', name);
  await page.fill('#password', 'demo');
  await page.click('#login-button');
  for (const s of ['chat', 'notifications', 'status']) {
    await page.locator(`#${s}-state[data-state="open"]`).waitFor({ timeout: T });
  }
  const id = Number(await page.locator('#me').getAttribute('data-user-id'));
  return { name, context, page, id };
}

const received = (u, endpoint) => u.page.evaluate((e) => window.received[e], endpoint);
const message = (u, text) => u.page.locator('#messages li', { has: u.page.locator('.content', { hasText: text }) });
const sees = (u, text) => message(u, text).first().waitFor({ timeout: T });
const errorShown = (u, code) => u.page.locator(`#errors li[data-code="${code}"]`).first().waitFor({ timeout: T });
async function lastError(u, endpoint, code) {
  const errors = (await received(u, endpoint)).filter((m) => m.type === 'error' && m.code === code);
  if (errors.length === 0) fail(`${u.name}: no ${code} on ${endpoint}`);
  return errors[errors.length - 1];
}

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  step('alice and bob log in, in the same room');
  const alice = await login(browser, 'alice', wsA);
  const bob = await login(browser, 'bob', wsB);
  await subscribers('chat:lobby', 2);
  await subscribers(`notify:#${bob.id}`, 1);
  await subscribers('status:all', 2);
  // Each sees the other online (Groupcast's online:<id> channel occupied, via the webhook).
  await alice.page.locator(`#user-${bob.id}[data-status="online"]`).waitFor({ timeout: T });
  await bob.page.locator(`#user-${alice.id}[data-status="online"]`).waitFor({ timeout: T });

  step('typing, then a message with HTML in it');
  await alice.page.fill('#text', 'hello <b>bob</b> <img src=x onerror="window.pwned=1">');
  await bob.page.locator('#typing', { hasText: 'alice is typing' }).waitFor({ timeout: T });
  await alice.page.click('#send');
  await sees(bob, 'hello <b>bob</b>');
  await sees(alice, 'hello <b>bob</b>');
  // Escaped by the backend: shown as text, no element made of it, no script run.
  const first = message(bob, 'hello <b>bob</b>');
  if ((await first.locator('.content b, .content img').count()) !== 0) fail('the HTML was not escaped');
  if (await bob.page.evaluate(() => window.pwned)) fail('the onerror handler ran');
  const chatFrame = (await received(bob, 'chat')).find((m) => m.type === 'chat_message');
  const m = chatFrame.message;
  if (!(Number.isInteger(m.id) && m.author.username === 'alice' && m.author.id === alice.id
    && typeof m.timestamp === 'string' && m.channel_id === 'lobby' && Array.isArray(m.attachments)
    && m.content.startsWith('hello &lt;b&gt;bob&lt;/b&gt;'))) {
    fail(`chat_message not in the seed's shape: ${JSON.stringify(chatFrame)}`);
  }
  // Typing stops with the message; the typist is never sent their own indicator.
  await bob.page.locator('#typing:empty').waitFor({ timeout: T });
  if ((await received(alice, 'chat')).some((f) => f.type === 'typing')) fail('alice got her own typing indicator');
  await bob.page.fill('#text', 'hi alice');
  await bob.page.click('#send');
  await sees(alice, 'hi alice');

  step('an edit, refused to another user, and a delete');
  const aliceMsg = message(alice, 'hello <b>bob</b>');
  const msgId = Number(await aliceMsg.getAttribute('data-id'));
  alice.page.once('dialog', (d) => d.accept('hello again'));
  await aliceMsg.locator('button.edit').click();
  for (const u of [alice, bob]) {
    await u.page.locator(`#msg-${msgId} .content`, { hasText: 'hello again' }).waitFor({ timeout: T });
    await u.page.locator(`#msg-${msgId} .edited`).waitFor({ timeout: T });
  }
  if ((await bob.page.locator(`#msg-${msgId} button.edit`).count()) !== 0) fail('bob has an edit button on alice\'s message');
  await bob.page.evaluate((id) => window.chatApp.chat.send({ type: 'edit_message', message_id: id, new_content: 'hacked' }), msgId);
  await errorShown(bob, 'PERMISSION_DENIED');
  const denied = await lastError(bob, 'chat', 'PERMISSION_DENIED');
  if (!same(Object.keys(denied).sort(), ['code', 'error', 'type'])) fail(`error shape: ${JSON.stringify(denied)}`);
  await alice.page.fill('#text', 'to be deleted');
  await alice.page.click('#send');
  await sees(bob, 'to be deleted');
  await message(alice, 'to be deleted').locator('button.delete').click();
  for (const u of [alice, bob]) {
    await message(u, 'to be deleted').waitFor({ state: 'detached', timeout: T });
  }
  // bob's refused edit changed nothing.
  if ((await bob.page.locator(`#msg-${msgId} .content`).textContent()) !== 'hello again') fail('the refused edit went through');

  step('a notification reaches only its user; mark_read');
  await alice.page.fill('#notify-to', 'bob');
  await alice.page.fill('#notify-title', 'For bob');
  await alice.page.click('#notify-send');
  await bob.page.locator('#notifications li', { hasText: 'For bob' }).waitFor({ timeout: T });
  await bob.page.locator('#unread', { hasText: '1' }).waitFor({ timeout: T });
  await bob.page.fill('#notify-to', 'alice');
  await bob.page.fill('#notify-title', 'For alice');
  await bob.page.click('#notify-send');
  await alice.page.locator('#notifications li', { hasText: 'For alice' }).waitFor({ timeout: T });
  // Bob's went out first: had it reached alice, it would be in her list before hers.
  const aliceNotes = (await received(alice, 'notifications')).filter((f) => f.type === 'notification');
  if (aliceNotes.length !== 1 || aliceNotes[0].notification.title !== 'For alice') {
    fail(`alice's notifications: ${JSON.stringify(aliceNotes)}`);
  }
  const n = aliceNotes[0].notification;
  if (!(Number.isInteger(n.id) && n.category === 'task' && n.url === '/tasks/123' && typeof n.created_at === 'string')) {
    fail(`notification not in the seed's shape: ${JSON.stringify(aliceNotes[0])}`);
  }
  if ((await bob.page.locator('#notifications li').count()) !== 1) fail('bob got a notification that is not his');
  await bob.page.locator('#notifications li button.mark-read').click();
  await bob.page.locator('#notifications li.read').waitFor({ timeout: T });
  await bob.page.locator('#unread', { hasText: '0' }).waitFor({ timeout: T });
  // Marking alice's notification as read from bob's socket is refused.
  await bob.page.evaluate((id) => window.chatApp.notifications.send({ type: 'mark_read', notification_id: id }), n.id);
  await lastErrorWait(bob, 'notifications', 'PERMISSION_DENIED');

  step('a status set by a user');
  await alice.page.selectOption('#my-status', 'away');
  await bob.page.locator(`#user-${alice.id}[data-status="away"]`).waitFor({ timeout: T });

  step('a file sent over the chat socket');
  const file = Buffer.alloc(300 * 1024);
  for (let i = 0; i < file.length; i++) file[i] = (i * 7 + 3) % 251;
  await alice.page.setInputFiles('#file', { name: 'report.bin', mimeType: 'application/octet-stream', buffer: file });
  const link = bob.page.locator('#messages a.attachment', { hasText: 'report.bin' });
  await link.waitFor({ timeout: T });
  await alice.page.locator('#upload-progress', { hasText: 'uploaded report.bin' }).waitFor({ timeout: T });
  const got = Buffer.from(await (await fetch(await link.getAttribute('href'))).arrayBuffer());
  if (!got.equals(file)) fail(`the file came back different (${got.length} bytes)`);

  step('the rate limit: the 61st message in a minute');
  const carol = await login(browser, 'carol', wsC);
  await subscribers('chat:lobby', 3);
  await carol.page.evaluate(() => { for (let i = 1; i <= 61; i++) window.chatApp.sendChat(`carol says ${i}.`); });
  await errorShown(carol, 'RATE_LIMIT_EXCEEDED');
  const limited = await lastError(carol, 'chat', 'RATE_LIMIT_EXCEEDED');
  if (!same(limited, { type: 'error', error: 'Rate limit exceeded. Please slow down.', code: 'RATE_LIMIT_EXCEEDED' })) {
    fail(`rate limit answer: ${JSON.stringify(limited)}`);
  }
  await sees(bob, 'carol says 60.');
  // Sent after carol's 61st was refused: by the time it reaches bob, the 61st would have too.
  await alice.page.fill('#text', 'after the limit');
  await alice.page.click('#send');
  await sees(bob, 'after the limit');
  const fromCarol = (await received(bob, 'chat')).filter((f) => f.type === 'chat_message' && f.message.author.username === 'carol');
  if (fromCarol.length !== 60 || fromCarol.some((f) => f.message.content === 'carol says 61.')) {
    fail(`bob got ${fromCarol.length} of carol's messages`);
  }

  step('the size limit: over 1 MB');
  await alice.page.evaluate(() => window.chatApp.sendChat('x'.repeat(1024 * 1024)));
  await errorShown(alice, 'MESSAGE_TOO_LARGE');
  const large = await lastError(alice, 'chat', 'MESSAGE_TOO_LARGE');
  if (!same(Object.keys(large).sort(), ['code', 'error', 'type']) || typeof large.error !== 'string') {
    fail(`size limit answer: ${JSON.stringify(large)}`);
  }
  // Answered, not disconnected; and a message just under the limit still goes through.
  if ((await alice.page.locator('#chat-state').getAttribute('data-opens')) !== '1') fail('alice\'s chat socket reconnected');
  // Under 1 MB as a frame, but over it once HTML-escaped: refused too (README: what fits the
  // cluster's nginx and NATS).
  await alice.page.evaluate(() => window.chatApp.sendChat('<'.repeat(300 * 1000)));
  await alice.page.locator('#errors li[data-code="MESSAGE_TOO_LARGE"]').nth(1).waitFor({ timeout: T });
  await alice.page.evaluate(() => window.chatApp.sendChat(`${'y'.repeat(900 * 1000)} end of big`));
  await sees(bob, 'end of big');
  if ((await received(bob, 'chat')).some((f) => f.type === 'chat_message' && f.message.content.startsWith('&lt;&lt;'))) {
    fail('the message over the limit once escaped reached bob');
  }

  step('bad tokens are refused in the seed\'s shape');
  for (const [what, bad] of [['garbage', 'not-a-token'], ['forged', forged(bob.id, 'bob')]]) {
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    await p.goto(pageFor(wsC));
    await p.evaluate((t) => localStorage.setItem('access_token', t), bad);
    await p.reload();
    for (const s of ['chat', 'notifications', 'status']) {
      await p.locator(`#${s}-state[data-close-code="4001"]`).waitFor({ timeout: T });
    }
    const errs = await p.evaluate(() => window.received.chat);
    if (!same(errs, [{ type: 'error', error: 'Invalid or expired token.', code: 'AUTHENTICATION_FAILED' }])) {
      fail(`${what} token: ${JSON.stringify(errs)}`);
    }
    await ctx.close();
  }
  // Never subscribed: still only alice, bob and carol in the room.
  await subscribers('chat:lobby', 3);

  step('a page from another origin is refused');
  const dave = await token('dave');
  const foreign = pageFor(wsC).replace('://127.0.0.1:', '://localhost:');
  const ctx = await browser.newContext();
  const p = await ctx.newPage();
  await p.goto(foreign);
  await p.evaluate((t) => localStorage.setItem('access_token', t), dave);
  await p.reload();
  await p.locator('#chat-state[data-close-code="1006"]').waitFor({ timeout: T });
  if ((await p.locator('#chat-state').getAttribute('data-opens')) !== '0') fail('the foreign page opened a socket');
  await ctx.close();
  const chatUrl = `${wsC}/ws/chat/lobby/?token=${dave}`;
  const foreignUpgrade = await upgrade(chatUrl, 'http://evil.example');
  if (foreignUpgrade !== 403) fail(`another origin's upgrade: ${foreignUpgrade}`);
  const ownUpgrade = await upgrade(chatUrl, pageOrigin);
  if (ownUpgrade !== 'open') fail(`the page origin's upgrade: ${ownUpgrade}`);

  step('bob leaves: his status changes to offline');
  await alice.page.locator(`#user-${bob.id}[data-status="online"]`).waitFor({ timeout: T });
  await bob.context.close();
  await alice.page.locator(`#user-${bob.id}[data-status="offline"]`).waitFor({ timeout: T });
  await subscribers('chat:lobby', 2);
  const offline = (await received(alice, 'status')).filter((f) => f.user_id === bob.id).pop();
  if (!(offline.type === 'user_status' && offline.status === 'offline' && typeof offline.last_seen === 'string')) {
    fail(`user_status not in the seed's shape: ${JSON.stringify(offline)}`);
  }
  console.log(JSON.stringify({ ok: true }));
} finally {
  await browser.close();
}

async function lastErrorWait(u, endpoint, code) {
  const deadline = Date.now() + T;
  for (;;) {
    const errors = (await received(u, endpoint)).filter((m) => m.type === 'error' && m.code === code);
    if (errors.length) return errors.pop();
    if (Date.now() > deadline) fail(`${u.name}: no ${code} on ${endpoint}`);
    await sleep(50);
  }
}
