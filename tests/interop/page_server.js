// A tiny HTTP server that serves a blank HTML page on every GET, plus a `ws` echo server on the
// same port (greeting on connection). JSON lines on stdout.  usage: node page_server.js PORT
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const server = http.createServer((req, res) => {
  out({ event: 'http', url: req.url, user: req.headers['x-auth-user'] || null });
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end('<!doctype html><title>wsgate interop</title><p>wsgate interop page</p>');
});
const wss = new WebSocketServer({ server });
wss.on('connection', (ws, req) => {
  out({ event: 'connection', url: req.url, user: req.headers['x-auth-user'] || null,
    authorization: req.headers.authorization || null, origin: req.headers.origin || null,
    xff: req.headers['x-forwarded-for'] || null, proto: req.headers['x-forwarded-proto'] || null,
    protocols: req.headers['sec-websocket-protocol'] || null });
  ws.send('hello from page server');
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
server.listen(port, '127.0.0.1', () => out({ event: 'listening', port }));
