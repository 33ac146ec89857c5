// The operator dashboard (GET /dashboard) in a real browser: Debian's
// Chromium, driven by playwright-core. A wrong API key is refused on the
// page; the right one shows the edges and a channel with subscribers, and
// the page talks to nothing but its own origin.
//
// Usage: node dashboard_page.mjs http://HOST:PORT/dashboard API_KEY CHANNEL [EDGES]
//   CHANNEL: a channel that has subscribers (it must appear in the top channels)
//   EDGES:   how many edges the table must list (default 1)
// With DASHBOARD_SCREENSHOT=path.png, a full-page screenshot is written once
// the second refresh has rates in it.
import { chromium } from 'playwright-core';

const [url, key, channel, edgesArg] = process.argv.slice(2);
const edges = Number(edgesArg || 1);
const shot = process.env.DASHBOARD_SCREENSHOT;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
setTimeout(() => { console.error('timed out'); process.exit(1); }, 50000).unref();
if (!url || !key || !channel) {
  console.error('usage: node dashboard_page.mjs URL API_KEY CHANNEL [EDGES]');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  const origin = new URL(url).origin;
  const foreign = [];
  page.on('request', (r) => { if (!r.url().startsWith(origin)) foreign.push(r.url()); });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));

  await page.goto(url);
  // A wrong key: refused, said so, and the form is back.
  await page.fill('#key', 'not-the-key');
  await page.click('#open');
  await page.locator('#login-error', { hasText: 'refused' }).waitFor({ timeout: 10000 });
  await page.locator('#status.error').waitFor({ timeout: 10000 });
  if (await page.locator('#board').isVisible()) throw new Error('the board is shown after a wrong key');

  // The right key: the tables fill in.
  await page.fill('#key', key);
  await page.click('#open');
  await page.locator('#status.ok').waitFor({ timeout: 10000 });
  await page.waitForFunction((n) => document.querySelectorAll('#edges tbody tr[data-edge]').length >= n,
    edges, { timeout: 10000 });
  const row = page.locator('#channels tbody tr', { has: page.locator('td', { hasText: channel }) });
  await row.first().waitFor({ timeout: 10000 });
  const subscribers = Number((await row.first().locator('td').nth(1).innerText()).replace(/[^0-9]/g, ''));
  if (!(subscribers > 0)) throw new Error(`channel ${channel} shows ${subscribers} subscribers`);
  const edgeNames = await page.locator('#edges tbody tr[data-edge]').evaluateAll(
    (rows) => rows.map((r) => r.dataset.edge));
  // The key stays in this tab's sessionStorage, never in the URL.
  if (page.url().includes(key)) throw new Error('the key is in the URL');
  const stored = await page.evaluate(() => sessionStorage.getItem('groupcast-dashboard-key'));
  if (stored !== key) throw new Error('the key is not kept in sessionStorage');

  if (shot) {
    // The second refresh has the rates.
    await page.waitForFunction(() => document.getElementById('c-in').textContent !== '–', null,
      { timeout: 20000 });
    await page.screenshot({ path: shot, fullPage: true });
  }
  if (foreign.length) throw new Error('requests to other origins: ' + foreign.join(', '));
  if (pageErrors.length) throw new Error('page errors: ' + pageErrors.join('; '));
  console.log(JSON.stringify({ ok: true, edges: edgeNames, channel, subscribers }));
} finally {
  await browser.close();
}
