// The relay demo page (GET /) in a real browser: Debian's Chromium, driven by
// playwright-core. Two tabs open the page; a message typed in one appears in
// the other, and not twice in the sender.
//
// Usage: node demo_page.mjs http://HOST:PORT/ [screenshot.png]
import { chromium } from 'playwright-core';

const url = process.argv[2];
const shot = process.argv[3];
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
setTimeout(() => { console.error('timed out'); process.exit(1); }, 45000).unref();

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
    await page.locator('#log .sys', { hasText: 'connected' }).waitFor({ timeout: 10000 });
  }
  await a.fill('#text', 'hello from tab A');
  await a.click('button');
  await b.locator('#log .peer', { hasText: 'hello from tab A' }).waitFor({ timeout: 10000 });
  await b.fill('#text', 'and back from tab B');
  await b.press('#text', 'Enter');
  await a.locator('#log .peer', { hasText: 'and back from tab B' }).waitFor({ timeout: 10000 });
  // The sender's own message is shown once (as "me"), never echoed back.
  await a.waitForTimeout(300);
  const echoes = await a.locator('#log .peer', { hasText: 'hello from tab A' }).count();
  if (echoes !== 0) throw new Error(`tab A received its own message ${echoes} time(s)`);
  if (shot) await b.screenshot({ path: shot });
  console.log(JSON.stringify({ ok: true }));
} finally {
  await browser.close();
}
