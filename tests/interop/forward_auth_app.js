// An express 4 app with a real login (express-session, MemoryStore) acting as wsgate's
// forward-auth service, plus a `ws` echo server on the same port for the WebSocket leg.
//   GET  /app/            a page for the browser test
//   POST /app/login       {"user": "..."} (JSON or form) → session cookie
//   POST /app/logout      destroys the session
//   GET  /app/auth        200 + X-User / X-Auth-Roles when logged in, else 401 (wsgate asks here)
//   ws   /ws/...          greets with what it saw, then echoes
// JSON lines on stdout.  usage: node forward_auth_app.js PORT
'use strict';
const http = require('http');
const express = require('express');
const session = require('express-session');
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const app = express();
app.use(session({
  name: 'sid', secret: 'forward-auth-interop-secret', resave: false, saveUninitialized: false,
  cookie: { httpOnly: true, sameSite: 'lax', path: '/' },
}));
app.use(express.json());
app.use(express.urlencoded({ extended: false }));

app.get('/app/', (req, res) => {
  res.type('html').send('<!doctype html><title>forward auth</title><p>app</p>');
});
app.post('/app/login', (req, res) => {
  const user = (req.body && req.body.user) || '';
  if (!user) return res.status(400).json({ error: 'user required' });
  req.session.regenerate((err) => {
    if (err) return res.status(500).end();
    req.session.user = user;
    out({ event: 'login', user });
    res.json({ user });
  });
});
app.post('/app/logout', (req, res) => {
  const user = req.session.user || null;
  req.session.destroy(() => { out({ event: 'logout', user }); res.json({ ok: true }); });
});
app.get('/app/auth', (req, res) => {
  const user = req.session.user || null;
  out({ event: 'auth', user, method: req.method, uri: req.headers['x-forwarded-uri'] || null,
    fmethod: req.headers['x-forwarded-method'] || null, host: req.headers['x-forwarded-host'] || null,
    proto: req.headers['x-forwarded-proto'] || null });
  if (!user) {
    res.set('WWW-Authenticate', 'Session realm="app"');
    return res.status(401).send('log in first');
  }
  res.set('X-User', user).set('X-Auth-Roles', 'chat').status(204).end();
});

const server = http.createServer(app);
const wss = new WebSocketServer({ server, path: undefined });
wss.on('connection', (ws, req) => {
  const seen = { event: 'connection', url: req.url, xUser: req.headers['x-user'] || null,
    authUser: req.headers['x-auth-user'] || null, roles: req.headers['x-auth-roles'] || null,
    hasCookie: /(^|;\s*)sid=/.test(req.headers.cookie || '') };
  out(seen);
  ws.send(JSON.stringify(seen));
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
server.listen(port, '127.0.0.1', () => out({ event: 'listening', port }));
