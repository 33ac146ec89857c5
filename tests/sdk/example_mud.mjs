// examples/mud (seed 003) as its players run it: the game page in Chromium, and bot players
// running the page's own client module (examples/mud/page/mud-client.js) over plain WebSockets
// (the `ws` package), all through the entry address (nginx on the cluster).
//
// Usage: node example_mud.mjs PAGE_URL WS_ENTRY GAME_URL BOTS SECONDS [KILL_COMMAND]
//   WS_ENTRY      ws://HOST:PORT that players connect to (…/ws/game/<room>/ is added)
//   GAME_URL      the game loop (GET /state: the world as it holds it)
//   BOTS, SECONDS how many bot players, and how long they play (moving every 0.3 to 1 s)
//   KILL_COMMAND  run with bash halfway through (e.g. cluster.sh kill edge-2)
//
// Then every bot stops, and once all are connected and in step, each one's room, as it built it
// from the room description and the ticks' deltas since, must equal the game loop's, and each
// must be in its own room. With KILL_COMMAND, bots must have reconnected. Prints {"ok":true,...}.
import { execFileSync } from 'node:child_process';
import { isDeepStrictEqual } from 'node:util';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

const [pageUrl, wsEntry, gameUrl, botsArg, secondsArg, killCommand] = process.argv.slice(2);
if (!secondsArg) {
  console.error('usage: node example_mud.mjs PAGE_URL WS_ENTRY GAME_URL BOTS SECONDS [KILL_COMMAND]');
  process.exit(2);
}
const BOTS = Number(botsArg);
const SECONDS = Number(secondsArg);
const ROOMS = ['room1', 'room2', 'room3', 'room4'];
const DIRECTIONS = ['north', 'south', 'east', 'west'];
setTimeout(() => { console.error('timed out'); process.exit(1); }, (SECONDS + 150) * 1000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const { MudClient } = await import(new URL('../../examples/mud/page/mud-client.js', import.meta.url));

async function until(what, pred, ms = 30000) {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(100);
  }
}

const state = async () => (await fetch(`${gameUrl}/state`)).json();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const bots = [];
try {
  // Bots: the page's client, with the `ws` package's WebSocket.
  for (let i = 0; i < BOTS; i++) {
    const room = ROOMS[i % ROOMS.length];
    const bot = new MudClient(`${wsEntry}/ws/game/${room}/`, `bot-${i}`, { WebSocket });
    bot.assigned = room;
    bot.said = [];
    bot.onSay = (d) => bot.said.push(d);
    bot.errors = [];
    bot.onError = (m) => bot.errors.push(m);
    bots.push(bot);
    bot.connect();
    if (i % 20 === 19) await sleep(50);
  }
  await until('every bot in its room', () => bots.every((b) => b.synced && b.room === b.assigned));

  // A person in Chromium: the page shows the room, moves, talks (the bots in room1 hear it) and
  // gets the map as a binary frame.
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${pageUrl}?player=hero&room=room1&ws=${encodeURIComponent(wsEntry)}`);
  await page.locator('#room', { hasText: 'room1' }).waitFor({ timeout: 20000 });
  await page.locator('#description', { hasText: 'dungeon entrance' }).waitFor({ timeout: 20000 });
  const start = await page.evaluate(() => window.mud.players.hero);
  const dir = start.x < 9 ? 'east' : 'west';
  await page.click(`button[data-dir="${dir}"]`);
  await until('the hero moved', async () => {
    const now = await page.evaluate(() => window.mud.players.hero);
    return now.x === start.x + (dir === 'east' ? 1 : -1) && now.y === start.y;
  });
  await page.fill('#text', 'hello <b>adventurers</b>');
  await page.press('#text', 'Enter');
  await page.locator('#log li.say', { hasText: 'hero says: hello &lt;b&gt;adventurers&lt;/b&gt;' }).waitFor({ timeout: 20000 });
  await until('room1 bots heard the hero', () => bots.filter((b) => b.assigned === 'room1')
    .every((b) => b.said.some((d) => d.player_name === 'hero')));
  if (bots.some((b) => b.assigned !== 'room1' && b.said.length)) throw new Error('a bot outside room1 heard the hero');
  await page.click('#map');
  await page.locator('#log li.map', { hasText: 'bytes' }).waitFor({ timeout: 20000 });
  const mapLine = await page.textContent('#log li.map');
  const players = Number(/(\d+) players/.exec(mapLine)[1]);
  const inRoom1 = bots.filter((b) => b.assigned === 'room1').length + 1;
  if (players !== inRoom1) throw new Error(`map: ${mapLine}, expected ${inRoom1} players`);

  // Play.
  let playing = true;
  const play = async (bot) => {
    while (playing) {
      await sleep(300 + Math.random() * 700);
      if (playing && bot.synced) bot.move(DIRECTIONS[Math.floor(Math.random() * 4)]);
    }
  };
  const loops = bots.map(play);
  const started = Date.now();
  let killedAt = null;
  if (killCommand) {
    await sleep((SECONDS * 1000) / 2);
    execFileSync('bash', ['-c', killCommand], { stdio: 'inherit' });
    killedAt = Date.now() - started;
  }
  await sleep(Math.max(0, SECONDS * 1000 - (Date.now() - started)));
  playing = false;
  await Promise.all(loops);

  // Every bot back, in step, and its room as the game loop has it.
  await until('every bot connected and in step', () => bots.every((b) => b.open && b.synced && b.room === b.assigned), 60000);
  const settle = Math.max(...bots.map((b) => b.tick)) + 15; // 1.5 s of ticks with nothing moving
  await until('the bots past the quiet ticks', () => bots.every((b) => b.tick >= settle), 60000);
  const world = await state();
  const inconsistent = [];
  for (const b of bots) {
    const mine = world.rooms[b.assigned];
    if (!mine[b.playerId] || !mine[b.playerId].online) inconsistent.push(`${b.playerId}: not online in ${b.assigned}`);
    else if (!isDeepStrictEqual(b.players, mine)) inconsistent.push(`${b.playerId}: view differs`);
  }
  if (inconsistent.length) throw new Error(`${inconsistent.length} bots inconsistent: ${inconsistent.slice(0, 5).join('; ')}`);
  const reconnected = bots.filter((b) => b.connects > 1).length;
  if (killCommand && reconnected === 0) throw new Error('an edge was killed, yet no bot reconnected');
  const errors = bots.flatMap((b) => b.errors);
  if (errors.length) throw new Error(`errors: ${errors.slice(0, 5).join('; ')}`);
  const moves = bots.reduce((n, b) => n + b.seq, 0);
  console.log(JSON.stringify({
    ok: true, bots: BOTS, seconds: SECONDS, moves, reconnected, killedAt,
    looks: bots.reduce((n, b) => n + b.looks, 0),
    ticksAppliedMin: Math.min(...bots.map((b) => b.ticksApplied)),
    closeCodes: [...new Set(bots.flatMap((b) => b.closes))],
  }));
} finally {
  for (const b of bots) b.close();
  await browser.close();
}
