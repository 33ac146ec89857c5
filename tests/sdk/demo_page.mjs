// The relay demo page (GET /) in a real browser: Debian's Chromium, driven by
// playwright-core. Two tabs open the page; a message typed in one appears in
// the other, and not twice in the sender.
//
// Usage: node demo_page.mjs http://HOST:PORT/ API_KEY [screenshot.png]
// (The API key: a tab's relay connection joins its channel once open, on
// the server's own time; the first message is typed once the server API
// counts both tabs on it.)
import { chromium } from 'playwright-core';

const [url, apiKey, shot] = process.argv.slice(2);
if (!url || !apiKey) {
  console.error('usage: node demo_page.mjs URL API_KEY [screenshot.png]');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
setTimeout(() => { console.error('timed out'); process.exit(1); }, 55000).unref();

/** Waits (bounded) until the page's channel, `relay`, has `n` subscribers. */
async function subscribers(n) {
  const deadline = Date.now() + 30000;
  for (;;) {
    const res = await fetch(new URL('/api/channels', url), {
      method: 'POST',
      headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
      body: JSON.stringify({ pattern: 'relay' }),
    });
    const body = await res.json();
    const c = body.result && body.result.channels && body.result.channels.relay;
    if (c && c.num_clients === n) return;
    if (Date.now() > deadline) throw new Error(`not ${n} subscribers on relay: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext();
  const a = await context.newPage();
  const b = await context.newPage();
  for (const page of [a, b]) {
    await page.goto(url);
    await page.locator('#log .sys', { hasText: 'connected' }).waitFor({ timeout: 20000 });
  }
  await subscribers(2);
  await a.fill('#text', 'hello from tab A');
  await a.click('button');
  await b.locator('#log .peer', { hasText: 'hello from tab A' }).waitFor({ timeout: 20000 });
  await b.fill('#text', 'and back from tab B');
  await b.press('#text', 'Enter');
  await a.locator('#log .peer', { hasText: 'and back from tab B' }).waitFor({ timeout: 20000 });
  // The sender's own message is shown once (as "me"), never echoed back:
  // B's answer, sent after A's message reached B, came after it on the
  // channel, so an echo would be here by now.
  const echoes = await a.locator('#log .peer', { hasText: 'hello from tab A' }).count();
  if (echoes !== 0) throw new Error(`tab A received its own message ${echoes} time(s)`);
  if (shot) await b.screenshot({ path: shot });
  console.log(JSON.stringify({ ok: true }));
} finally {
  await browser.close();
}
