// Backend for tests/paths.rs: reports which route IT dispatched, so the test can compare it
// with the route wsgate chose (each of wsgate's routes has its own upstream port).
//   node paths_backend.js express   express 4 app.use('/admin') + catch-all, express-ws for
//                                   upgrades (app.ws('/admin'), app.ws('/admin/*'), catch-all)
//   node paths_backend.js url       plain Node http + ws: WHATWG URL pathname, then
//                                   decodeURIComponent, then a segment-prefix match
// Listens on two ports (0 = picked by the kernel); prints {"event":"listening","ports":[a,b]}.
// Every answer is JSON {port, route: "admin"|"root", path}; HTTP answers carry X-Backend.
'use strict';
const http = require('http');
const mode = process.argv[2];

function servers(handler) {
  return [http.createServer(handler), http.createServer(handler)];
}

function listen(list) {
  let left = list.length;
  list.forEach((s) => s.listen(0, '127.0.0.1', () => {
    if (--left === 0) {
      process.stdout.write(JSON.stringify({ event: 'listening', ports: list.map((x) => x.address().port) }) + '\n');
    }
  }));
}

if (mode === 'express') {
  const express = require('express');
  const expressWs = require('express-ws');
  const app = express();
  const list = servers(app);
  list.forEach((s) => expressWs(app, s));
  const report = (route) => (req, res) => {
    res.set('X-Backend', 'express');
    res.json({ port: req.socket.localPort, route, path: req.originalUrl });
  };
  const wsReport = (route) => (ws, req) => {
    ws.send(JSON.stringify({ port: req.socket.localPort, route, path: req.originalUrl }));
  };
  // express-ws routes are exact paths: the prefix takes a route for the path and one below it.
  app.ws('/admin', wsReport('admin'));
  app.ws('/admin/*', wsReport('admin'));
  app.ws('*', wsReport('root'));
  app.use('/admin', report('admin'));
  app.use(report('root'));
  listen(list);
} else if (mode === 'url') {
  const { WebSocketServer } = require('ws');
  const dispatch = (url) => {
    let p;
    try {
      p = decodeURIComponent(new URL(url, 'http://backend.test').pathname);
    } catch (e) {
      return null;
    }
    return p === '/admin' || p.startsWith('/admin/') ? 'admin' : 'root';
  };
  const list = servers((req, res) => {
    const route = dispatch(req.url);
    if (!route) {
      res.writeHead(400);
      res.end('undecodable');
      return;
    }
    const body = JSON.stringify({ port: req.socket.localPort, route, path: req.url });
    res.writeHead(200, {
      'X-Backend': 'url', 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
  });
  const wss = new WebSocketServer({ noServer: true });
  list.forEach((s) => s.on('upgrade', (req, socket, head) => {
    const route = dispatch(req.url);
    if (!route) {
      socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send(JSON.stringify({ port: req.socket.localPort, route, path: req.url }));
    });
  }));
  listen(list);
} else {
  process.stderr.write('usage: node paths_backend.js express|url\n');
  process.exit(2);
}
