// The load generator of benches/socketio.sh: one scenario against one server,
// Groupcast or the socket.io reference (server.mjs), with the same code. It
// forks worker.mjs processes that hold the sockets (socket.io-client,
// WebSocket only), publishes through `POST /api/sio_emit` (Groupcast's API
// method; server.mjs serves the same call), and reads the server's memory and
// CPU time from /proc. Prints one line `RESULT {json}`.
//
//   node load.mjs --url http://127.0.0.1:PORT --key KEY --pid SERVER_PID \
//     --scenario fanout|rooms|idle [--label NAME] [--tokens FILE]
//     [--sockets N] [--rooms N] [--rate N | --window N] [--secs S]
//     [--size BYTES] [--workers N] [--settle S]
//
// fanout: --sockets sockets in one room; --rate publications/s for --secs.
// rooms:  --rooms rooms of (--sockets / --rooms) sockets; publications go to
//         the rooms in turn, at --rate per second, or with --window requests
//         in flight as fast as the server answers them.
// idle:   --sockets sockets spread over --rooms rooms; the server's RSS before
//         and --settle seconds after they are all connected.
// --tokens: a file of `room token` lines; a socket sends its room's token in
// its CONNECT payload (`auth.token`, for Groupcast) next to `auth.room` (for
// server.mjs). Each server ignores the other's field.
import http from 'node:http';
import { fork, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BUCKETS, bucketOf, nowUs, quantileMs } from './hist.mjs';

const defaults = {
  url: '', key: '', pid: 0, scenario: '', label: '', tokens: '',
  sockets: 0, rooms: 0, rate: 0, window: 0, secs: 10, size: 100, workers: 4, settle: 5,
};
const opt = { ...defaults };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const name = argv[i].replace(/^--/, '');
  if (!(name in defaults)) throw new Error(`unknown option ${argv[i]}`);
  opt[name] = typeof defaults[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
}
if (!opt.url || !opt.pid || !opt.scenario) throw new Error('--url, --pid and --scenario are required');
const log = (...a) => console.error(`[${opt.label || opt.scenario}]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- the server process, from /proc

const clkTck = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
function rssKiB() {
  const m = readFileSync(`/proc/${opt.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]);
}
function cpuSecs() {
  const stat = readFileSync(`/proc/${opt.pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / clkTck; // utime + stime
}

const ownCpuUs = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

// ---- workers

const workerPath = fileURLToPath(new URL('./worker.mjs', import.meta.url));
const workers = [];
function ask(w, msg, type) {
  return new Promise((resolve) => {
    const onMsg = (m) => {
      if (m.type === type) {
        w.off('message', onMsg);
        resolve(m);
      }
    };
    w.on('message', onMsg);
    w.send(msg);
  });
}
const askAll = (msg, type) => Promise.all(workers.map((w) => ask(w, msg, type)));
function closeWorkers() {
  for (const w of workers) {
    try {
      w.send({ cmd: 'close' });
    } catch {}
  }
}
process.on('exit', () => {
  for (const w of workers) w.kill();
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(1));

const tokens = new Map();
if (opt.tokens) {
  for (const line of readFileSync(opt.tokens, 'utf8').split('\n')) {
    const [room, token] = line.trim().split(/\s+/);
    if (room && token) tokens.set(room, token);
  }
}

// Socket k joins room `prefix + (k % rooms)`. Returns the sockets opened per room.
async function openSockets(count, rooms, prefix) {
  const perWorker = Array.from({ length: opt.workers }, () => []);
  for (let k = 0; k < count; k++) {
    const room = `${prefix}${k % rooms}`;
    perWorker[k % opt.workers].push({ room, token: tokens.get(room) });
  }
  // Each worker its own loopback source address (a fresh /24 each run), so
  // repeated runs do not wait for ports in TIME_WAIT.
  const net = 1 + (process.pid % 250);
  for (let i = 0; i < opt.workers; i++) workers.push(fork(workerPath, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  const t0 = Date.now();
  const opened = await Promise.all(
    workers.map((w, i) =>
      ask(w, { cmd: 'open', url: opt.url, sockets: perWorker[i], localAddress: `127.0.${net}.${10 + i}`, concurrency: 20 }, 'opened'),
    ),
  );
  const ok = opened.reduce((a, o) => a + o.ok, 0);
  const failed = opened.reduce((a, o) => a + o.failed, 0);
  log(`${ok} sockets connected in ${((Date.now() - t0) / 1000).toFixed(1)} s, ${failed} failed${failed ? ` (${opened.find((o) => o.error).error})` : ''}`);
  return { ok, failed };
}

// ---- publishing: Groupcast's API call, served the same by server.mjs

const target = new URL(opt.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const apiHist = new Float64Array(BUCKETS); // publish call round trips
function emit(room, data) {
  const t0 = nowUs();
  const body = JSON.stringify({ room, event: 'm', args: [data] });
  return new Promise((resolve) => {
    const req = http.request(
      {
        host: target.hostname, port: target.port, path: '/api/sio_emit', method: 'POST', agent,
        headers: { 'X-API-Key': opt.key, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => {
          apiHist[bucketOf(nowUs() - t0)] += 1;
          resolve(res.statusCode === 200 && text.startsWith('{"result"'));
        });
      },
    );
    req.on('error', () => resolve(false));
    req.end(body);
  });
}

// Warm-up: emit {w: 1} to every room until every socket has received one (a
// socket is in its room once it has), so no measured event is lost to a join
// that was not yet done.
async function barrier(roomNames, expected) {
  const deadline = Date.now() + 30000;
  for (;;) {
    await Promise.all(roomNames.map((r) => emit(r, { w: 1 })));
    await sleep(300);
    const ready = (await askAll({ cmd: 'ready' }, 'ready')).reduce((a, r) => a + r.ready, 0);
    if (ready >= expected) return;
    if (Date.now() > deadline) throw new Error(`only ${ready} of ${expected} sockets got the warm-up event in 30 s`);
  }
}

async function publishPhase(roomNames) {
  const pad = 'x'.repeat(opt.size);
  let seq = 0;
  let ok = 0;
  let failed = 0;
  const okPerRoom = new Map();
  const pending = new Set();
  const one = () => {
    const room = roomNames[seq % roomNames.length];
    const p = emit(room, { t: nowUs(), s: seq++, p: pad }).then((good) => {
      if (good) {
        ok += 1;
        okPerRoom.set(room, (okPerRoom.get(room) || 0) + 1);
      } else failed += 1;
      pending.delete(p);
    });
    pending.add(p);
    return p;
  };
  const t0 = performance.now();
  const end = t0 + opt.secs * 1000;
  if (opt.window > 0) {
    await Promise.all(
      Array.from({ length: opt.window }, async () => {
        while (performance.now() < end) await one();
      }),
    );
  } else {
    while (performance.now() < end) {
      const due = Math.floor(((performance.now() - t0) / 1000) * opt.rate);
      while (seq < due) one();
      await sleep(1);
    }
  }
  const secs = (performance.now() - t0) / 1000;
  await Promise.all(pending);
  return { ok, failed, okPerRoom, secs };
}

// Waits until the workers have received `expected` events, or the count has
// not moved for 3 s (loss), at most 30 s.
async function drain(expected) {
  let last = -1;
  let still = Date.now();
  const deadline = Date.now() + 30000;
  for (;;) {
    const stats = await askAll({ cmd: 'stats' }, 'stats');
    const received = stats.reduce((a, s) => a + s.received, 0);
    if (received >= expected || Date.now() > deadline || (received === last && Date.now() - still > 3000)) return stats;
    if (received !== last) {
      last = received;
      still = Date.now();
    }
    await sleep(100);
  }
}

async function main() {
  const result = { label: opt.label, scenario: opt.scenario };
  if (opt.scenario === 'idle') {
    await sleep(1000);
    const before = rssKiB();
    const { ok, failed } = await openSockets(opt.sockets, opt.rooms || 1, 'i');
    await sleep(opt.settle * 1000);
    const after = rssKiB();
    Object.assign(result, {
      sockets: ok, failed, rss_before_kib: before, rss_after_kib: after,
      bytes_per_socket: ok ? ((after - before) * 1024) / ok : NaN,
    });
  } else {
    const rooms = opt.scenario === 'fanout' ? 1 : opt.rooms;
    const prefix = opt.scenario === 'fanout' ? 'f' : 'r';
    const roomNames = Array.from({ length: rooms }, (_, i) => `${prefix}${i}`);
    const { ok: opened, failed } = await openSockets(opt.sockets, rooms, prefix);
    const members = new Map(roomNames.map((r, i) => [r, Math.floor(opt.sockets / rooms) + (i < opt.sockets % rooms ? 1 : 0)]));
    await barrier(roomNames, opened);
    await askAll({ cmd: 'reset' }, 'reset');
    apiHist.fill(0);
    const clientCpu0 = (await askAll({ cmd: 'stats' }, 'stats')).reduce((a, s) => a + s.cpu_us, 0) + ownCpuUs();
    const cpu0 = cpuSecs();
    const pub = await publishPhase(roomNames);
    let expected = 0;
    for (const [room, n] of pub.okPerRoom) expected += n * members.get(room);
    const stats = await drain(expected);
    const cpu = cpuSecs() - cpu0;
    const delivered = stats.reduce((a, s) => a + s.received, 0);
    const hist = new Float64Array(BUCKETS);
    for (const s of stats) s.hist.forEach((n, i) => (hist[i] += n));
    Object.assign(result, {
      sockets: opened, failed, rooms, rate: opt.rate, window: opt.window, secs: pub.secs,
      published: pub.ok, publish_failed: pub.failed, published_per_s: pub.ok / pub.secs,
      expected, delivered, delivered_pct: expected ? (100 * delivered) / expected : NaN,
      delivered_per_s: delivered / pub.secs,
      p50_ms: quantileMs(hist, 0.5), p99_ms: quantileMs(hist, 0.99),
      // The distribution's shape, for the notes in docs/benchmarks.md.
      p01_ms: quantileMs(hist, 0.01), p10_ms: quantileMs(hist, 0.1), p25_ms: quantileMs(hist, 0.25),
      p75_ms: quantileMs(hist, 0.75), p90_ms: quantileMs(hist, 0.9),
      api_p50_ms: quantileMs(apiHist, 0.5), api_p99_ms: quantileMs(apiHist, 0.99),
      server_cpu_s: cpu,
      client_cpu_s: (stats.reduce((a, s) => a + s.cpu_us, 0) + ownCpuUs() - clientCpu0) / 1e6,
      disconnects: stats.reduce((a, s) => a + s.disconnects, 0),
    });
  }
  console.log(`RESULT ${JSON.stringify(result)}`);
  closeWorkers();
  setTimeout(() => process.exit(0), 500);
}

main().catch((e) => {
  log(`failed: ${e.message}`);
  console.log(`RESULT ${JSON.stringify({ label: opt.label, scenario: opt.scenario, error: e.message })}`);
  process.exit(1);
});
