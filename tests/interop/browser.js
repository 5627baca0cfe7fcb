// Headless Debian Chromium (/usr/bin/chromium) driven by playwright-core. Opens PAGE_URL, then
// for each WebSocket URL in order: open, wait for the greeting, echo one message, close.
// Prints one JSON line with one result per URL. `WS_URL|p1,p2` offers subprotocols p1, p2.
// usage: node browser.js USER_DATA_DIR PAGE_URL WS_URL... [--spki BASE64]
'use strict';
const { launch, takeSpki } = require('./chromium');
const args = process.argv.slice(2);
const spki = takeSpki(args);
const [userDataDir, pageUrl, ...wsUrls] = args;

(async () => {
  const ctx = await launch(userDataDir, { spki });
  const results = [];
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    const resp = await page.goto(pageUrl, { timeout: 15000 });
    const pageStatus = resp ? resp.status() : null;
    for (const entry of wsUrls) {
      const [url, protoList] = entry.split('|');
      const protocols = protoList ? protoList.split(',') : [];
      const r = await page.evaluate(([url, protocols]) => new Promise((resolve) => {
        const r = { opened: false, messages: [] };
        let ws;
        try { ws = new WebSocket(url, protocols); } catch (e) { resolve({ opened: false, exception: String(e) }); return; }
        const timer = setTimeout(() => { r.timeout = true; resolve(r); }, 10000);
        ws.onopen = () => { r.opened = true; r.protocol = ws.protocol; };
        ws.onerror = () => { r.error = true; };
        ws.onmessage = (ev) => {
          r.messages.push(String(ev.data));
          if (r.messages.length === 1) ws.send('echo from chromium');
          else ws.close(1000, 'done');
        };
        ws.onclose = (ev) => { r.closeCode = ev.code; r.wasClean = ev.wasClean; clearTimeout(timer); resolve(r); };
      }), [url, protocols]);
      r.url = url.replace(/\/\/[^@/]*@/, '//***@');
      results.push(r);
    }
    process.stdout.write(JSON.stringify({ pageStatus, results }) + '\n');
  } finally {
    await ctx.close();
  }
})().catch((e) => { process.stdout.write(JSON.stringify({ fatal: String(e && e.stack || e) }) + '\n'); process.exit(1); });
