// Prints the table of benches/socketio.sh from its `RESULT {json}` lines:
// every run, then the median of each figure per server and the ratio
// Groupcast / socket.io.
//
//   node summary.mjs RESULTS_FILE
import { readFileSync } from 'node:fs';

const runs = readFileSync(process.argv[2], 'utf8')
  .split('\n')
  .filter((l) => l.startsWith('RESULT '))
  .map((l) => JSON.parse(l.slice(7)));

const SERVERS = ['groupcast', 'socket.io'];
// scenario label, figure name, field, lower is better (null: not compared), digits
const FIGURES = [
  ['fanout', 'delivered, % of expected', 'delivered_pct', false, 2],
  ['fanout', 'latency p50, ms', 'p50_ms', true, 2],
  ['fanout', 'latency p99, ms', 'p99_ms', true, 2],
  ['fanout', 'server CPU, s', 'server_cpu_s', true, 2],
  ['fanout-100', 'delivered, % of expected', 'delivered_pct', false, 2],
  ['fanout-100', 'latency p50, ms', 'p50_ms', true, 2],
  ['fanout-100', 'latency p99, ms', 'p99_ms', true, 2],
  ['fanout-100', 'server CPU, s', 'server_cpu_s', true, 2],
  ['rooms', 'delivered, % of expected', 'delivered_pct', false, 2],
  ['rooms', 'latency p50, ms', 'p50_ms', true, 2],
  ['rooms', 'latency p99, ms', 'p99_ms', true, 2],
  ['rooms', 'server CPU, s', 'server_cpu_s', true, 2],
  ['rooms-max', 'publications/s', 'published_per_s', false, 0],
  ['rooms-max', 'deliveries/s', 'delivered_per_s', false, 0],
  ['rooms-max', 'delivered, % of expected', 'delivered_pct', false, 2],
  // At saturation the latency is the load generator's backlog: socket.io answers the API
  // call after its emit, Groupcast once the publication is queued (docs/benchmarks.md).
  ['rooms-max', 'latency p50, ms', 'p50_ms', null, 2],
  ['rooms-max', 'latency p99, ms', 'p99_ms', null, 2],
  ['rooms-max', 'server CPU per 1,000 deliveries, ms', 'cpu_ms_per_1k', true, 3],
  ['idle', 'RSS per idle socket, bytes', 'bytes_per_socket', true, 0],
  ['idle', 'RSS with all sockets, MiB', 'rss_after_mib', true, 1],
];

for (const r of runs) {
  if (r.delivered) r.cpu_ms_per_1k = (1e6 * r.server_cpu_s) / r.delivered;
  if (r.rss_after_kib) r.rss_after_mib = r.rss_after_kib / 1024;
}

const fmt = (v, d) =>
  Number.isFinite(v) ? v.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }) : 'n/a';
function median(xs) {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

console.log('Every run:');
for (const r of runs) {
  const { label, scenario, ...rest } = r;
  const shown = Object.entries(rest)
    .filter(([k]) => !['rate', 'window', 'expected', 'rss_before_kib', 'rss_after_kib'].includes(k) || rest[k])
    .map(([k, v]) => `${k}=${typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : v}`)
    .join(' ');
  console.log(`  ${label.padEnd(9)} ${scenario.padEnd(9)} ${shown}`);
}

console.log('\nMedians:\n');
console.log('| Scenario | Figure | Groupcast | socket.io 4.8 | Groupcast / socket.io | Groupcast at or ahead |');
console.log('|---|---|---|---|---|---|');
for (const [scenario, name, field, lowerBetter, digits] of FIGURES) {
  const [g, s] = SERVERS.map((srv) =>
    median(runs.filter((r) => r.label === srv && r.scenario === scenario).map((r) => r[field])),
  );
  if (!Number.isFinite(g) && !Number.isFinite(s)) continue;
  const n = runs.filter((r) => r.label === 'groupcast' && r.scenario === scenario).length;
  const ratio = s ? g / s : NaN;
  const ahead =
    lowerBetter === null
      ? 'not compared'
      : !Number.isFinite(g) || !Number.isFinite(s)
        ? 'n/a'
        : (lowerBetter ? g <= s : g >= s)
          ? 'yes'
          : '**no**';
  console.log(`| ${scenario} (${n} runs) | ${name} | ${fmt(g, digits)} | ${fmt(s, digits)} | ${fmt(ratio, 2)} | ${ahead} |`);
}
const errors = runs.filter((r) => r.error);
if (errors.length) console.log(`\n${errors.length} run(s) failed: ${errors.map((r) => `${r.label} ${r.scenario}: ${r.error}`).join('; ')}`);
