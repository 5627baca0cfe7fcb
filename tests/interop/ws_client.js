// Node `ws` client: connects (URL credentials and extra headers allowed), waits for the
// greeting, round-trips text, binary and 1 MB, then closes. Prints one JSON result line.
// usage: node ws_client.js URL [HEADERS_JSON]
'use strict';
const crypto = require('crypto');
const WebSocket = require('ws');
const url = process.argv[2];
const headers = process.argv[3] ? JSON.parse(process.argv[3]) : {};
const out = (o) => { process.stdout.write(JSON.stringify(o) + '\n'); };
const result = { url: url.replace(/\/\/[^@/]*@/, '//***@'), opened: false };
const done = (extra) => { out(Object.assign(result, extra)); process.exit(0); };
setTimeout(() => done({ error: 'timeout' }), 15000);

const ws = new WebSocket(url, { headers, maxPayload: 64 * 1024 * 1024 });
ws.on('unexpected-response', (req, res) => {
  done({ status: res.statusCode, wwwAuthenticate: res.headers['www-authenticate'] || null });
});
ws.on('error', (e) => done({ error: String(e && e.message) }));
const queue = [];
let waiter = null;
ws.on('message', (data, isBinary) => {
  const m = { data: Buffer.from(data), isBinary };
  if (waiter) { const w = waiter; waiter = null; w(m); } else queue.push(m);
});
const next = () => new Promise((res) => { if (queue.length) res(queue.shift()); else waiter = res; });
ws.on('open', async () => {
  result.opened = true;
  result.protocol = ws.protocol;
  const greeting = await next();
  result.greeting = greeting.data.toString();
  ws.send('ping text ☃');
  const t = await next();
  result.textEcho = !t.isBinary && t.data.toString() === 'ping text ☃';
  const bin = crypto.randomBytes(1024);
  ws.send(bin);
  const b = await next();
  result.binaryEcho = b.isBinary && b.data.equals(bin);
  const big = crypto.randomBytes(1024 * 1024);
  ws.send(big);
  const g = await next();
  result.megabyteEcho = g.isBinary && g.data.length === big.length && g.data.equals(big);
  ws.close(1000, 'bye');
  ws.on('close', (code, reason) => done({ closeCode: code, closeReason: reason.toString() }));
});
