// Headless Debian Chromium (/usr/bin/chromium) driven by playwright-core. Opens PAGE_URL, then
// opens every WebSocket URL at once and holds them all open: each waits for the greeting and
// echoes one message; once every socket has its echo, all close with 1000. Prints one JSON line.
// usage: node browser_many.js USER_DATA_DIR PAGE_URL WS_URL... [--spki BASE64]
'use strict';
const { launch, takeSpki } = require('./chromium');
const args = process.argv.slice(2);
const spki = takeSpki(args);
const [userDataDir, pageUrl, ...wsUrls] = args;

(async () => {
  const ctx = await launch(userDataDir, { spki, netlog: process.env.NETLOG });
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    const resp = await page.goto(pageUrl, { timeout: 15000 });
    const pageStatus = resp ? resp.status() : null;
    const httpVersion = await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      return nav ? nav.nextHopProtocol : null;
    });
    const results = await page.evaluate((urls) => new Promise((resolve) => {
      const rs = urls.map(() => ({ opened: false, messages: [] }));
      const socks = [];
      let echoed = 0;
      let closed = 0;
      const timer = setTimeout(() => { rs.timeout = true; resolve(rs); }, 15000);
      urls.forEach((url, k) => {
        const r = rs[k];
        let ws;
        try { ws = new WebSocket(url); } catch (e) { r.exception = String(e); closed++; return; }
        socks.push(ws);
        ws.onopen = () => { r.opened = true; };
        ws.onerror = () => { r.error = true; };
        ws.onmessage = (ev) => {
          r.messages.push(String(ev.data));
          if (r.messages.length === 1) { ws.send('echo ' + k); return; }
          // Every socket is still open when the last one gets its echo.
          r.openWhenAllEchoed = null;
          if (++echoed === urls.length) {
            socks.forEach((s, j) => { rs[j].openWhenAllEchoed = s.readyState === WebSocket.OPEN; });
            socks.forEach((s) => s.close(1000, 'done'));
          }
        };
        ws.onclose = (ev) => {
          r.closeCode = ev.code;
          if (++closed === urls.length) { clearTimeout(timer); resolve(rs); }
        };
      });
    }), wsUrls);
    results.forEach((r, k) => { r.url = wsUrls[k].replace(/\/\/[^@/]*@/, '//***@'); });
    process.stdout.write(JSON.stringify({ pageStatus, httpVersion, results }) + '\n');
  } finally {
    await ctx.close();
  }
})().catch((e) => { process.stdout.write(JSON.stringify({ fatal: String(e && e.stack || e) }) + '\n'); process.exit(1); });
