// socket.io-client 4 with default transports and the JWT in `query: {token}`. Waits for the
// upgrade to websocket, then exchanges events both ways. Prints one JSON result line.
// usage: node sio_client.js BASE_URL TOKEN
'use strict';
const { io } = require('socket.io-client');
const [base, token] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const result = { connected: false };
const done = (extra) => { out(Object.assign(result, extra)); process.exit(0); };
setTimeout(() => done({ error: 'timeout', transport: socket.io.engine && socket.io.engine.transport.name }), 15000);

const socket = io(base, { path: '/socket.io', query: { token, room: 'lobby' }, reconnection: false });
// The engine opens with its first transport (default: polling), then probes and upgrades.
socket.io.on('open', () => {
  result.firstTransport = socket.io.engine.transport.name;
  socket.io.engine.once('upgrade', (t) => { result.upgradedTo = t.name; });
});
socket.on('connect_error', (e) => done({ error: 'connect_error: ' + e.message }));
socket.on('welcome', (w) => { result.welcome = w; });
socket.on('connect', () => {
  result.connected = true;
  const engine = socket.io.engine;
  const afterUpgrade = () => {
    result.transport = socket.io.engine.transport.name;
    socket.timeout(5000).emit('ping-server', 'hi over ws', (err, reply) => {
      if (err) return done({ error: 'no ack' });
      result.reply = reply;
      setTimeout(() => { socket.close(); done({}); }, 100);
    });
  };
  if (engine.transport.name === 'websocket') afterUpgrade();
  else engine.once('upgrade', afterUpgrade);
});
