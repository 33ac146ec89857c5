// Latency histogram shared by the load generator's processes: logarithmic
// buckets, 40 per factor e (2.5 % wide), from 1 us to about 60 s.
export const BUCKETS = 720;
const PER_E = 40;

export function nowUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

export function bucketOf(us) {
  if (!(us > 1)) return 0;
  return Math.min(BUCKETS - 1, Math.floor(Math.log(us) * PER_E));
}

// The value at quantile q (0..1) in milliseconds: the middle of its bucket.
export function quantileMs(hist, q) {
  let total = 0;
  for (const n of hist) total += n;
  if (total === 0) return NaN;
  const want = q * total;
  let seen = 0;
  for (let i = 0; i < hist.length; i++) {
    seen += hist[i];
    if (seen >= want && hist[i] > 0) return Math.exp((i + 0.5) / PER_E) / 1000;
  }
  return NaN;
}
