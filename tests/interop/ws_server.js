// The textbook Node `ws` server: greeting on connection, echo everything, one JSON line on
// stdout per event so tests/interop.rs can see what the backend saw.
// usage: node ws_server.js PORT [NAME]
'use strict';
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2]);
const name = process.argv[3] || 'ws';
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const wss = new WebSocketServer({ port, host: '127.0.0.1', maxPayload: 64 * 1024 * 1024 });
wss.on('listening', () => out({ event: 'listening', port }));
wss.on('connection', (ws, req) => {
  out({
    event: 'connection',
    remoteAddress: req.socket.remoteAddress,
    url: req.url,
    headers: req.headers,
    protocol: ws.protocol,
  });
  ws.send(`hello from ${name}`);
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('close', (code, reason) => out({ event: 'close', url: req.url, code, reason: reason.toString() }));
});
