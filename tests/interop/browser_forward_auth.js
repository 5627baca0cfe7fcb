// Headless Chromium (playwright-core) doing a cookie login through wsgate: opens PAGE_URL
// (served by the app through the gateway, so the session cookie is the gateway origin's),
// opens WS_URL before logging in, logs in with fetch(LOGIN_PATH), opens WS_URL again (greeting
// + echo), logs out with fetch(LOGOUT_PATH) and opens it once more. One JSON line.
// usage: node browser_forward_auth.js USER_DATA_DIR PAGE_URL WS_URL LOGIN_PATH LOGOUT_PATH USER
'use strict';
const { launch } = require('./chromium');
const [userDataDir, pageUrl, wsUrl, loginPath, logoutPath, user] = process.argv.slice(2);

(async () => {
  const ctx = await launch(userDataDir);
  try {
    const page = ctx.pages()[0] || await ctx.newPage();
    const resp = await page.goto(pageUrl, { timeout: 15000 });
    const r = await page.evaluate(async ([wsUrl, loginPath, logoutPath, user]) => {
      const open = (url) => new Promise((resolve) => {
        const r = { opened: false, messages: [] };
        const ws = new WebSocket(url);
        const timer = setTimeout(() => { r.timeout = true; resolve(r); }, 10000);
        ws.onopen = () => { r.opened = true; };
        ws.onmessage = (ev) => {
          r.messages.push(String(ev.data));
          if (r.messages.length === 1) ws.send('echo from chromium');
          else ws.close(1000, 'done');
        };
        ws.onclose = (ev) => { r.closeCode = ev.code; clearTimeout(timer); resolve(r); };
      });
      const before = await open(wsUrl);
      const login = await fetch(loginPath, { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user }) });
      const loggedIn = await open(wsUrl);
      const logout = await fetch(logoutPath, { method: 'POST' });
      const after = await open(wsUrl);
      return { before, loginStatus: login.status, loggedIn, logoutStatus: logout.status, after };
    }, [wsUrl, loginPath, logoutPath, user]);
    r.pageStatus = resp ? resp.status() : null;
    process.stdout.write(JSON.stringify(r) + '\n');
  } finally {
    await ctx.close();
  }
})().catch((e) => { process.stdout.write(JSON.stringify({ fatal: String(e && e.stack || e) }) + '\n'); process.exit(1); });
