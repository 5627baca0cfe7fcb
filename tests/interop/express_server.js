// express-ws 5: app.ws('/test-ws') plus a router mounted at /websocket with router.ws('/test-ws'),
// and plain HTTP routes on the same app and port. JSON lines on stdout.
// usage: node express_server.js PORT
'use strict';
const express = require('express');
const expressWs = require('express-ws');
const port = Number(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const app = express();
expressWs(app);
const seen = (where, req) => ({
  where, path: req.path, query: req.query, user: req.headers['x-auth-user'] || null,
  xff: req.headers['x-forwarded-for'] || null, authorization: req.headers.authorization || null,
});
const echo = (where) => (ws, req) => {
  const s = seen(where, req);
  out(Object.assign({ event: 'connection' }, s));
  ws.send(JSON.stringify(s));
  // express-ws 5 bundles ws 7: text arrives as a string, binary as a Buffer (no isBinary).
  ws.on('message', (data) => ws.send(data, { binary: typeof data !== 'string' }));
  ws.on('close', (code, reason) => out({ event: 'close', where, path: req.path, user: s.user, code, reason: String(reason) }));
};
app.ws('/test-ws', echo('app'));
app.get('/test-ws/health', (req, res) => res.json(Object.assign({ ok: true }, seen('app-http', req))));

const router = express.Router();
router.ws('/test-ws', echo('router'));
router.get('/hello', (req, res) => res.json(Object.assign({ hello: true }, seen('router-http', req))));
app.use('/websocket', router);

app.listen(port, '127.0.0.1', () => out({ event: 'listening', port }));
