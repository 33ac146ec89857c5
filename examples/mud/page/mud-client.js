// The MUD's client (seed 003): a plain WebSocket to ws://HOST/ws/game/<room>/, speaking the
// seed's JSON. The page (index.html) and the test's bots (tests/sdk/example_mud.mjs) both use
// this module; give it a WebSocket constructor where there is no global one.
//
// State: the room as the last `room_description` gave it, with every world tick after it
// applied (ticks are deltas: the players that changed, and those gone). A tick that is not the
// next one means some were missed (a reconnect, a slow start): the client asks "look" and
// applies, after the new description, the ticks that came meanwhile. When the socket closes
// (an edge died, the network dropped), it reconnects after a short random wait and sends
// "join" again; the game loop keeps the player, so the room comes back as it is.

export class MudClient {
  constructor(url, playerId, { WebSocket: WS = globalThis.WebSocket, reconnect = true } = {}) {
    this.url = url;
    this.playerId = playerId;
    this.WS = WS;
    this.reconnect = reconnect;
    this.room = null;
    this.players = {};
    this.tick = 0;
    this.synced = false;
    this.pending = [];
    this.seq = 0;
    this.acked = null; // {x, y, seq} of the last move the game loop confirmed
    this.connects = 0;
    this.closes = [];
    this.looks = 0;
    this.ticksApplied = 0;
    this.socket = null;
    this.stopped = false;
    // Hooks the page or the bot sets.
    this.onChange = () => {};
    this.onSay = () => {};
    this.onError = () => {};
    this.onMap = () => {};
    this.onStatus = () => {};
  }

  connect() {
    const socket = new this.WS(this.url);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    socket.onopen = () => {
      this.connects += 1;
      this.onStatus('connected');
      // The seed's snippet: join on open.
      socket.send(JSON.stringify({ action: 'join', player_id: this.playerId }));
    };
    socket.onmessage = (event) => {
      if (typeof event.data === 'string') this.handle(JSON.parse(event.data));
      else this.onMap(new Uint8Array(event.data));
    };
    socket.onclose = (event) => {
      this.closes.push(event.code);
      this.synced = false;
      this.pending = [];
      this.onStatus(`disconnected (${event.code})`);
      if (this.reconnect && !this.stopped && this.socket === socket) {
        setTimeout(() => this.connect(), 200 + Math.random() * 800);
      }
    };
    socket.onerror = () => {};
  }

  get open() {
    return this.socket !== null && this.socket.readyState === 1;
  }

  send(obj) {
    if (this.open) this.socket.send(JSON.stringify(obj));
  }

  command(action, fields = {}) {
    this.send({ type: 'command', action, player_id: this.playerId, timestamp: Date.now(), ...fields });
  }

  move(direction) {
    this.seq += 1;
    this.command('move', { direction, seq: this.seq });
  }

  say(message) { this.command('say', { message }); }

  look() {
    this.looks += 1;
    this.command('look');
  }

  map() { this.command('map'); }

  close() {
    this.stopped = true;
    if (this.socket) this.socket.close(1000, 'bye');
  }

  handle(msg) {
    if (msg.type === 'update' && msg.event === 'room_description') {
      const d = msg.data;
      this.room = d.room_id;
      this.description = d;
      this.players = structuredClone(d.players);
      this.tick = d.tick;
      this.synced = true;
      const later = this.pending.filter((t) => t.tick > this.tick).sort((a, b) => a.tick - b.tick);
      this.pending = [];
      for (const t of later) this.onTick(t);
      this.onChange();
    } else if (msg.type === 'update' && msg.event === 'tick') {
      this.onTick(msg.data);
    } else if (msg.type === 'update' && msg.event === 'moved') {
      this.acked = msg.data;
    } else if (msg.type === 'broadcast') {
      this.onSay(msg.data);
    } else if (msg.type === 'error') {
      this.onError(msg.message);
    }
  }

  onTick(t) {
    if (!this.synced) {
      this.pending.push(t);
      return;
    }
    if (t.tick <= this.tick) return;
    if (t.tick !== this.tick + 1) {
      // Missed some: ask for the room again, keep what comes meanwhile.
      this.synced = false;
      this.pending.push(t);
      this.look();
      return;
    }
    for (const [id, s] of Object.entries(t.changed)) this.players[id] = s;
    for (const id of t.gone) delete this.players[id];
    this.tick = t.tick;
    this.ticksApplied += 1;
    this.onChange();
  }
}
