// Socket.IO 4 server (default transports: polling, then upgrade to websocket). JSON lines.
// usage: node sio_server.js PORT [NAME]
'use strict';
const http = require('http');
const { Server } = require('socket.io');
const port = Number(process.argv[2]);
const name = process.argv[3] || 'sio';
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const server = http.createServer();
const io = new Server(server, { path: '/socket.io' });
// What the websocket upgrade request looked like (engine.io handles it; this only logs).
server.on('upgrade', (req) => out({ event: 'upgrade-request', name, url: req.url,
  user: req.headers['x-auth-user'] || null, xff: req.headers['x-forwarded-for'] || null }));
io.on('connection', (socket) => {
  const h = socket.handshake;
  out({ event: 'connection', name, id: socket.id, query: h.query, user: h.headers['x-auth-user'] || null,
    xff: h.headers['x-forwarded-for'] || null, transport: socket.conn.transport.name });
  socket.conn.on('upgrade', (t) => out({ event: 'upgrade', name, id: socket.id, transport: t.name }));
  socket.emit('welcome', { name, user: h.headers['x-auth-user'] || null });
  socket.on('ping-server', (payload, ack) => {
    out({ event: 'ping-server', name, payload, transport: socket.conn.transport.name });
    ack({ pong: payload, name, transport: socket.conn.transport.name });
  });
});
server.listen(port, '127.0.0.1', () => out({ event: 'listening', port }));
