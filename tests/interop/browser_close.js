// Headless Chromium: opens PAGE_URL, then a WebSocket to WS_URL; prints {"event":"open"}
// once open and {"event":"closed", closeCode, reason, wasClean} when the server closes it.
// usage: node browser_close.js USER_DATA_DIR PAGE_URL WS_URL
'use strict';
const { chromium } = require('playwright-core');
const [userDataDir, pageUrl, wsUrl] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

(async () => {
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium', headless: true, timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage'],
  });
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    await page.goto(pageUrl, { timeout: 15000 });
    await page.exposeFunction('report', (o) => out(o));
    const r = await page.evaluate((url) => new Promise((resolve) => {
      const ws = new WebSocket(url);
      const timer = setTimeout(() => resolve({ event: 'closed', timeout: true }), 30000);
      ws.onopen = () => { window.report({ event: 'open' }); };
      ws.onclose = (ev) => {
        clearTimeout(timer);
        resolve({ event: 'closed', closeCode: ev.code, reason: ev.reason, wasClean: ev.wasClean });
      };
    }), wsUrl);
    out(r);
  } finally {
    await ctx.close();
  }
})().catch((e) => { out({ event: 'closed', fatal: String(e && e.stack || e) }); process.exit(1); });
