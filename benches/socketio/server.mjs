// The reference server of benches/socketio.sh: the npm `socket.io` 4.8 server
// (Engine.IO on its default `ws` engine), WebSocket transport, as little
// application code as the scenarios need:
//
//   * a socket joins the room named in its CONNECT payload (`auth.room`), as a
//     Groupcast socket joins the room named in its token's `channels` claim;
//   * `POST /api/sio_emit` with Groupcast's body `{"room", "event", "args"}`
//     and header `X-API-Key` does `io.to(room).emit(event, ...args)` and
//     answers `{"result":{}}`, as Groupcast's API method of that name does.
//
//   node server.mjs PORT API_KEY
import http from 'node:http';
import { Server } from 'socket.io';

const [port, apiKey] = process.argv.slice(2);
if (!port || !apiKey) {
  console.error('usage: node server.mjs PORT API_KEY');
  process.exit(2);
}

function answer(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const httpServer = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/api/sio_emit') return answer(res, 404, '');
  if (req.headers['x-api-key'] !== apiKey) return answer(res, 401, '');
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let p;
    try {
      p = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      return answer(res, 400, 'Bad Request');
    }
    if (typeof p.room !== 'string' || typeof p.event !== 'string') return answer(res, 400, 'Bad Request');
    io.to(p.room).emit(p.event, ...(Array.isArray(p.args) ? p.args : []));
    answer(res, 200, '{"result":{}}');
  });
});

const io = new Server(httpServer, { transports: ['websocket'], serveClient: false });
io.on('connection', (socket) => {
  const room = socket.handshake.auth && socket.handshake.auth.room;
  if (typeof room === 'string' && room !== '') socket.join(room);
});

httpServer.listen(Number(port), '127.0.0.1', () => console.log(`socket.io ${port} listening`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
