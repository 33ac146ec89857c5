// One load-generator process of benches/socketio.sh, forked by load.mjs: holds
// its share of socket.io-client sockets (WebSocket transport only) and counts
// what they receive. The same code drives Groupcast and the socket.io server.
//
// Messages from the parent (IPC):
//   {cmd: 'open', url, sockets: [{room, token}], localAddress, concurrency}
//       -> {type: 'opened', ok, failed, error}
//   {cmd: 'ready'} -> {type: 'ready', ready}   sockets that got a warm-up message
//   {cmd: 'stats'} -> {type: 'stats', received, hist, disconnects, cpu_us}  (cpu_us: this process's CPU time)
//   {cmd: 'reset'} -> {type: 'reset'}          zero the counters
//   {cmd: 'close'}                             close every socket and exit
//
// Each measured event `m` carries {t, s}: `t` is the send time in microseconds
// on the monotonic clock (process.hrtime, the same clock in every process of
// this machine); the latency is receive time minus `t`. Warm-up events carry
// {w: 1} and are not counted.
import { io } from 'socket.io-client';
import { BUCKETS, bucketOf, nowUs } from './hist.mjs';

const sockets = [];
const cpuUs = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};
let received = 0;
let disconnects = 0;
let ready = 0;
let hist = new Float64Array(BUCKETS);

function onEvent(state, d) {
  if (d && d.w) {
    if (!state.ready) {
      state.ready = true;
      ready += 1;
    }
    return;
  }
  received += 1;
  hist[bucketOf(nowUs() - d.t)] += 1;
}

function openOne(url, spec, localAddress) {
  return new Promise((resolve) => {
    const state = { ready: false, connected: false };
    const socket = io(url, {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      timeout: 60000,
      auth: spec.token ? { room: spec.room, token: spec.token } : { room: spec.room },
      localAddress,
    });
    socket.on('m', (d) => onEvent(state, d));
    socket.on('connect', () => {
      state.connected = true;
      sockets.push(socket);
      resolve(null);
    });
    socket.on('connect_error', (err) => {
      socket.close();
      resolve(String(err && err.message));
    });
    socket.on('disconnect', () => {
      if (state.connected) disconnects += 1;
    });
  });
}

async function open({ url, sockets: specs, localAddress, concurrency }) {
  let next = 0;
  let ok = 0;
  let failed = 0;
  let error = null;
  async function lane() {
    while (next < specs.length) {
      const spec = specs[next++];
      const err = await openOne(url, spec, localAddress);
      if (err === null) ok += 1;
      else {
        failed += 1;
        error = error || err;
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency || 20 }, lane));
  process.send({ type: 'opened', ok, failed, error });
}

process.on('message', (msg) => {
  switch (msg.cmd) {
    case 'open':
      open(msg);
      break;
    case 'ready':
      process.send({ type: 'ready', ready });
      break;
    case 'stats':
      process.send({ type: 'stats', received, hist: Array.from(hist), disconnects, cpu_us: cpuUs() });
      break;
    case 'reset':
      received = 0;
      hist = new Float64Array(BUCKETS);
      process.send({ type: 'reset' });
      break;
    case 'close':
      for (const s of sockets) s.close();
      setTimeout(() => process.exit(0), 200);
      break;
  }
});
process.on('disconnect', () => process.exit(0));
