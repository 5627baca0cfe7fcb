// Headless Debian Chromium (/usr/bin/chromium) driven by playwright-core. Opens PAGE_URL, then
// for each WebSocket URL in order: open, wait for the greeting, echo one message, close.
// Prints one JSON line with one result per URL. `WS_URL|p1,p2` offers subprotocols p1, p2.
// usage: node browser.js USER_DATA_DIR PAGE_URL WS_URL... [--spki BASE64]
'use strict';
const { chromium } = require('playwright-core');
const args = process.argv.slice(2);
let spki = null;
const i = args.indexOf('--spki');
if (i >= 0) { spki = args[i + 1]; args.splice(i, 2); }
const [userDataDir, pageUrl, ...wsUrls] = args;

(async () => {
  const flags = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage',
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
  ];
  if (spki) flags.push(`--ignore-certificate-errors-spki-list=${spki}`);
  // launchPersistentContext passes --user-data-dir=<fresh dir> itself.
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium', headless: true, args: flags, timeout: 30000,
  });
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
