// The socket.io-client scenario of issue 20, one module for every place it runs: in Node
// (socketio_client.mjs) and in headless Chromium (socketio_browser.mjs, which serves this file
// to a page that imports it). It imports nothing: what differs between the two is passed in
// `env`, so the two runs cannot drift apart.
//
// The backend of crates/groupcast/tests/socketio.rs answers it: it joins each socket to room
// "lobby" on connect and says so ("joined"), tells the room what a socket says ("chat"),
// answers "add" and "reverse" (bytes, reversed) with acks, asks "question" with an ack after
// "ask-me" and reports the answer ("answered"), ends a socket that emits "kick" (sio_disconnect)
// and the whole session of one that emits "bye" (API disconnect).
//
// env:
//   io(url, opts)        socket.io-client's io
//   url, transports      the server; "default" (polling, then the upgrade), "websocket", "polling"
//   token, badToken      a connection JWT (user "alice"), and a string that is not one
//   api(method, body)    the server API (HTTP); resolves to its JSON answer
//   centrifuge()         a new Centrifugo client (centrifuge-js) of the server, not connected
//   binaries             [{kind, make(bytes)}]: how this runtime sends binary data
//   binaryKind(x)        the kind of a received binary value ("Buffer", "ArrayBuffer", ...), or
//                        null when it is not binary
//   bytesOf(x)           a received binary value as an array of numbers
//   log(line)            optional: where the steps are written as they start
//
// run(env) resolves to a summary of what was seen (the Rust test asserts it) or rejects with an
// Error whose message starts with the step that failed.

const T = 10000;
const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const check = (cond, what) => { if (!cond) throw new Error(what); };
const within = (promise, what, ms = T) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  promise.then((v) => { clearTimeout(timer); resolve(v); }, (e) => { clearTimeout(timer); reject(e); });
});
// The arguments of the next `event` on `emitter` (a socket, or a Centrifugo client).
const once = (emitter, event) => within(new Promise((resolve) => {
  emitter.once(event, (...args) => resolve(args));
}), `no ${event}`);

export async function run(env) {
  const { io, url, token, badToken } = env;
  const opts = env.transports === 'default' ? {} : { transports: [env.transports] };
  const summary = { transports: env.transports };
  const sockets = [];
  const clients = [];
  let current = 'start';
  const step = async (name, body) => {
    current = name;
    env.log?.(`step: ${name}`);
    await body();
  };
  try {
    // CONNECT_ERROR: a bad token is refused with {message, data}.
    await step('bad token', async () => {
      const bad = io(url, { ...opts, auth: { token: badToken }, reconnection: false, forceNew: true });
      sockets.push(bad);
      const [err] = await once(bad, 'connect_error');
      summary.bad_token = { message: err.message, data: err.data ?? null };
      check(/invalid token/.test(err.message) && err.data && err.data.code === 3500,
        `${err.message} ${JSON.stringify(err.data)}`);
      check(!bad.connected, 'connected anyway');
    });
    // A namespace the server does not serve.
    await step('unknown namespace', async () => {
      const nowhere = io(`${url}/nowhere`, { ...opts, auth: { token }, reconnection: false, forceNew: true });
      sockets.push(nowhere);
      const [err] = await once(nowhere, 'connect_error');
      summary.unknown_namespace = { message: err.message, data: err.data ?? null };
      check(err.message === 'Invalid namespace', err.message);
    });

    // Sockets with a good token; the backend puts them in room "lobby".
    let a;
    let b;
    await step('connect with auth', async () => {
      a = io(url, { ...opts, auth: { token }, forceNew: true });
      b = io(url, { ...opts, auth: { token }, forceNew: true });
      sockets.push(a, b);
      const joinedA = once(a, 'joined');
      const joinedB = once(b, 'joined');
      await Promise.all([once(a, 'connect'), once(b, 'connect')]);
      check(a.id && b.id && a.id !== b.id, `socket ids ${a.id} ${b.id}`);
      const [roomA] = await joinedA;
      const [roomB] = await joinedB;
      summary.joined = [roomA, roomB];
      check(roomA === 'lobby' && roomB === 'lobby', `joined ${roomA} ${roomB}`);
    });

    // An emit without an ack reaches the backend, which tells the room.
    await step('emit without ack', async () => {
      const chatB = once(b, 'chat');
      a.emit('chat', 'hello', { n: 1 });
      summary.chat = await chatB;
      check(eq(summary.chat, ['alice', 'hello', { n: 1 }]), JSON.stringify(summary.chat));
    });

    // An emit with an ack: the backend answers it.
    await step('emit with ack', async () => {
      summary.ack = await a.timeout(T).emitWithAck('add', 2, 3);
      check(summary.ack === 5, JSON.stringify(summary.ack));
    });

    // Binary both ways: each way this runtime has of sending bytes, echoed back reversed in an
    // ack.
    await step('binary ack', async () => {
      summary.binary = [];
      for (const { kind, make } of env.binaries) {
        const echoed = await a.timeout(T).emitWithAck('reverse', make([1, 2, 3, 250]));
        const got = { sent: kind, received: env.binaryKind(echoed), bytes: env.bytesOf(echoed) };
        summary.binary.push(got);
        check(got.received && eq(got.bytes, [250, 3, 2, 1]), JSON.stringify(got));
      }
    });

    // The server asks, the client acknowledges, the backend hears the answer.
    await step('server ack', async () => {
      b.on('question', (q, cb) => cb(`${q}? yes`));
      const answered = once(b, 'answered');
      b.emit('ask-me');
      [summary.server_ack] = await answered;
      check(summary.server_ack === 'ready? yes', summary.server_ack);
    });

    // The API's sio_emit to the room reaches both sockets as that event.
    await step('sio_emit to the room', async () => {
      const newsA = once(a, 'news');
      const newsB = once(b, 'news');
      const pub = await env.api('sio_emit', { room: 'lobby', event: 'news', args: [{ title: 'up' }, 7] });
      check(pub.result, `sio_emit: ${JSON.stringify(pub)}`);
      summary.news = [await newsA, await newsB];
      check(summary.news.every((n) => eq(n, [{ title: 'up' }, 7])), JSON.stringify(summary.news));
    });

    // Binary from the API: a {"$binary"} argument arrives as an attachment.
    await step('binary event from the API', async () => {
      const blobs = [once(a, 'blob'), once(b, 'blob')];
      const pub = await env.api('sio_emit', { room: 'lobby', event: 'blob', args: [{ $binary: 'AQID' }, 'tail'] });
      check(pub.result, `sio_emit: ${JSON.stringify(pub)}`);
      summary.binary_event = [];
      for (const [data, tail] of await Promise.all(blobs)) {
        const got = { received: env.binaryKind(data), bytes: env.bytesOf(data), tail };
        summary.binary_event.push(got);
        check(got.received && eq(got.bytes, [1, 2, 3]) && tail === 'tail', JSON.stringify(got));
      }
    });

    // A plain publication on the room's channel: the namespace's default event, "message",
    // with the data. From the API...
    await step('publication from the API', async () => {
      // (Both sockets wait for it: a socket on another edge may get it later than the other,
      // and the next step waits for "message" too.)
      const msgA = once(a, 'message');
      const msgB = once(b, 'message');
      const pub = await env.api('publish', { channel: 'lobby', data: { text: 'from the API' } });
      check(pub.result, `publish: ${JSON.stringify(pub)}`);
      summary.api_publication = [await msgA, await msgB];
      check(summary.api_publication.every((m) => eq(m, [{ text: 'from the API' }])),
        JSON.stringify(summary.api_publication));
    });

    // ...and from a Centrifugo client (centrifuge-js, on /connection/websocket).
    await step('publication from a Centrifugo client', async () => {
      const c = env.centrifuge();
      clients.push(c);
      c.connect();
      await c.ready(T);
      const msgA = once(a, 'message');
      const msgB = once(b, 'message');
      await c.publish('lobby', { text: 'from a Centrifugo client' });
      summary.centrifugo_publication = [await msgA, await msgB];
      check(summary.centrifugo_publication.every((m) => eq(m, [{ text: 'from a Centrifugo client' }])),
        JSON.stringify(summary.centrifugo_publication));
      c.disconnect();
    });

    // The backend ends a socket (sio_disconnect): "io server disconnect"; the other stays.
    await step('sio_disconnect', async () => {
      const gone = once(b, 'disconnect');
      b.emit('kick');
      [summary.kick] = await gone;
      check(summary.kick === 'io server disconnect', summary.kick);
      check(a.connected, 'a was disconnected too');
    });

    // The API ends a whole session (disconnect by client id): its socket gets DISCONNECT
    // first, so "io server disconnect" as well, and does not reconnect. Every reason the
    // socket reports is kept (socket.io-client reports two when DISCONNECT and the close packet
    // come in one polling payload), and the transport it was on.
    await step('API disconnect', async () => {
      const c = io(url, { ...opts, auth: { token }, forceNew: true });
      sockets.push(c);
      const joined = once(c, 'joined');
      await once(c, 'connect');
      await joined;
      const reasons = [];
      c.on('disconnect', (reason) => reasons.push(reason));
      const gone = once(c, 'disconnect');
      summary.session_ended_on = c.io.engine.transport.name;
      c.emit('bye');
      await gone;
      await new Promise((resolve) => setTimeout(resolve, 300));
      summary.session_ended = reasons;
      check(reasons.includes('io server disconnect'), JSON.stringify(reasons));
      // socket.active: whether socket.io-client will reconnect it.
      check(!c.connected && !c.active, `connected ${c.connected}, active ${c.active}`);
      check(a.connected, 'a was disconnected too');
    });

    summary.transport = a.io.engine.transport.name;
    // The client leaves: "io client disconnect".
    await step('client disconnect', async () => {
      const left = once(a, 'disconnect');
      a.disconnect();
      [summary.own] = await left;
      check(summary.own === 'io client disconnect', summary.own);
    });
    summary.ok = true;
    return summary;
  } catch (e) {
    const err = new Error(`${current}: ${e.message}; so far ${JSON.stringify(summary)}`);
    err.stack = `${err.message}\n${e.stack || ''}`;
    throw err;
  } finally {
    for (const s of sockets) s.close();
    for (const c of clients) c.disconnect();
  }
}
