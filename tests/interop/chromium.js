// The one way the interop scripts start headless Debian Chromium (/usr/bin/chromium) through
// playwright-core: the same flags everywhere, so a script differs only in what its page does.
//   launch(userDataDir, { spki, netlog }) -> playwright BrowserContext
//   takeSpki(args) removes `--spki BASE64` from an argv array and returns BASE64 (or null).
'use strict';
const { chromium } = require('playwright-core');

function takeSpki(args) {
  const i = args.indexOf('--spki');
  if (i < 0) return null;
  const spki = args[i + 1];
  args.splice(i, 2);
  return spki;
}

function launch(userDataDir, { spki = null, netlog = null } = {}) {
  const flags = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage',
    // Nothing but loopback: a test never reaches the network by a stray name.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
  ];
  if (spki) flags.push(`--ignore-certificate-errors-spki-list=${spki}`);
  if (netlog) flags.push(`--log-net-log=${netlog}`);
  // launchPersistentContext passes --user-data-dir=<fresh dir> itself.
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium', headless: true, args: flags, timeout: 30000,
  });
}

module.exports = { launch, takeSpki };
