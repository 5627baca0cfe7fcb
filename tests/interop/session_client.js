// Node `ws` client for the session layer: prints {"event":"open"} once connected; in mode
// "big" it then sends a message of N bytes; in every mode it waits for the close and prints
// {"event":"closed","code":..,"reason":..}.  usage: node session_client.js URL MODE [N]
'use strict';
const WebSocket = require('ws');
const [url, mode, n] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
setTimeout(() => { out({ event: 'closed', error: 'timeout' }); process.exit(0); }, 30000);
const ws = new WebSocket(url);
ws.on('error', (e) => out({ event: 'error', error: String(e && e.message) }));
ws.on('open', () => {
  out({ event: 'open' });
  if (mode === 'big') ws.send('x'.repeat(Number(n)));
});
ws.on('message', (data) => out({ event: 'message', data: data.toString() }));
ws.on('close', (code, reason) => {
  out({ event: 'closed', code, reason: reason.toString() });
  process.exit(0);
});
