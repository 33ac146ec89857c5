// socket.io-client 4.8 (npm) against Groupcast's Socket.IO server, with a backend on the
// namespace's target (tests/tests/socketio.rs runs it; the backend there joins each socket to
// room "lobby" on connect, answers acks, echoes binary, asks a question with an ack, and
// disconnects a socket that emits "kick").
//
// Usage: node socketio_client.mjs URL API_URL API_KEY TOKEN BAD_TOKEN TRANSPORTS
//   TRANSPORTS: "default" (polling, then the upgrade), "websocket" or "polling".
// Prints {"ok":true,...} at the end; anything else fails with a message.
import { io } from 'socket.io-client';

const [url, apiUrl, apiKey, token, badToken, transportsArg] = process.argv.slice(2);
if (!transportsArg) {
  console.error('usage: node socketio_client.mjs URL API_URL API_KEY TOKEN BAD_TOKEN TRANSPORTS');
  process.exit(2);
}
setTimeout(() => { console.error('timed out'); process.exit(1); }, 40000).unref();
const opts = transportsArg === 'default' ? {} : { transports: [transportsArg] };
const T = 10000;
const api = async (method, body) => {
  const res = await fetch(`${apiUrl}/${method}`, {
    method: 'POST',
    headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return res.json();
};
const once = (socket, event) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no ${event} within ${T} ms`)), T);
  socket.once(event, (...args) => { clearTimeout(timer); resolve(args); });
});
const check = (cond, what) => { if (!cond) throw new Error(what); };
const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const summary = { transports: transportsArg };
const sockets = [];
try {
  // CONNECT_ERROR: a bad token is refused with {message, data}.
  const bad = io(url, { ...opts, auth: { token: badToken }, reconnection: false, forceNew: true });
  sockets.push(bad);
  const [err] = await once(bad, 'connect_error');
  check(/invalid token/.test(err.message) && err.data && err.data.code === 3500,
    `bad token: ${err.message} ${JSON.stringify(err.data)}`);
  // A namespace the server does not serve.
  const nowhere = io(`${url}/nowhere`, { ...opts, auth: { token }, reconnection: false, forceNew: true });
  sockets.push(nowhere);
  const [nsErr] = await once(nowhere, 'connect_error');
  check(nsErr.message === 'Invalid namespace', `unknown namespace: ${nsErr.message}`);

  // Two sockets with a good token; the backend puts them in room "lobby".
  const a = io(url, { ...opts, auth: { token }, forceNew: true });
  const b = io(url, { ...opts, auth: { token }, forceNew: true });
  sockets.push(a, b);
  const joinedA = once(a, 'joined');
  const joinedB = once(b, 'joined');
  await Promise.all([once(a, 'connect'), once(b, 'connect')]);
  const [roomA] = await joinedA;
  await joinedB;
  check(roomA === 'lobby', `joined ${roomA}`);

  // An emit without an ack reaches the backend, which tells the room.
  const chatB = once(b, 'chat');
  a.emit('chat', 'hello', { n: 1 });
  const chat = await chatB;
  check(eq(chat, ['alice', 'hello', { n: 1 }]), `chat: ${JSON.stringify(chat)}`);

  // An emit with an ack: the backend answers it.
  const answer = await a.timeout(T).emitWithAck('add', 2, 3);
  check(answer === 5, `ack: ${JSON.stringify(answer)}`);

  // Binary both ways: a Buffer argument, echoed back reversed in an ack.
  const echoed = await a.timeout(T).emitWithAck('reverse', Buffer.from([1, 2, 3, 250]));
  check(Buffer.isBuffer(echoed) && eq([...echoed], [250, 3, 2, 1]), `binary: ${JSON.stringify(echoed)}`);

  // The server asks, the client acknowledges, the backend hears the answer.
  b.on('question', (q, cb) => cb(`${q}? yes`));
  const answered = once(b, 'answered');
  b.emit('ask-me');
  const [said] = await answered;
  check(said === 'ready? yes', `server ack: ${said}`);

  // The API's sio_emit to the room reaches both sockets as that event.
  const newsA = once(a, 'news');
  const newsB = once(b, 'news');
  const pub = await api('sio_emit', { room: 'lobby', event: 'news', args: [{ title: 'up' }, 7] });
  check(pub.result, `sio_emit: ${JSON.stringify(pub)}`);
  check(eq(await newsA, [{ title: 'up' }, 7]) && eq(await newsB, [{ title: 'up' }, 7]), 'news');

  // A plain publication on the room's channel (a Centrifugo client's, a relay's): the
  // namespace's default event, "message", with the data.
  const msgA = once(a, 'message');
  await api('publish', { channel: 'lobby', data: { text: 'from the API' } });
  check(eq(await msgA, [{ text: 'from the API' }]), 'message');

  // The backend disconnects a socket: "io server disconnect"; the other stays.
  const gone = once(b, 'disconnect');
  b.emit('kick');
  const [reason] = await gone;
  check(reason === 'io server disconnect', `kick: ${reason}`);
  check(a.connected, 'a was disconnected too');
  summary.transport = a.io.engine.transport.name;

  const left = once(a, 'disconnect');
  a.disconnect();
  const [own] = await left;
  check(own === 'io client disconnect', `own: ${own}`);
  console.log(JSON.stringify({ ok: true, ...summary }));
  process.exit(0);
} catch (e) {
  console.error(e.stack || String(e));
  for (const s of sockets) s.close();
  process.exit(1);
}
