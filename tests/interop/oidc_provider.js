// A real OpenID provider (the `oidc-provider` package) on 127.0.0.1 for the JWKS tests.
//
// Usage: node oidc_provider.js PORT KID ALG
//   PORT  port to listen on (0: any; the chosen one is printed)
//   KID   the `kid` of the one signing key, generated fresh at each start (a restart with
//         another KID is a key rotation: the old key is gone from the JWKS)
//   ALG   RS256 or ES256: the access tokens' algorithm
//
// Prints `READY <port>` once listening. Client `wsgate-test` / `wsgate-test-secret-0123456789`
// gets a JWT access token for resource `urn:wsgate` with the client-credentials grant:
//   POST /token  grant_type=client_credentials&scope=ws&resource=urn:wsgate (Basic client auth)
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');

// oidc-provider 9 warns about Node 20 ("Unsupported runtime") and works; keep stdout clean.
const warn = console.warn;
console.warn = (...args) => {
  if (!String(args[0]).includes('Unsupported runtime')) warn(...args);
};

const [portArg, kid, alg] = process.argv.slice(2);
if (!kid || !['RS256', 'ES256'].includes(alg)) {
  console.error('usage: node oidc_provider.js PORT KID RS256|ES256');
  process.exit(2);
}

async function main() {
  const { default: Provider } = await import('oidc-provider');
  const { privateKey } = alg === 'RS256'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };

  // Bind first, so the issuer can name the real port.
  const server = http.createServer();
  await new Promise((resolve) => server.listen(Number(portArg), '127.0.0.1', resolve));
  const port = server.address().port;
  const issuer = `http://127.0.0.1:${port}`;

  const provider = new Provider(issuer, {
    jwks: { keys: [jwk] },
    clients: [{
      client_id: 'wsgate-test',
      client_secret: 'wsgate-test-secret-0123456789',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope: 'ws',
      id_token_signed_response_alg: alg,
    }],
    scopes: ['ws'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:wsgate',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'ws',
          audience: 'urn:wsgate',
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        }),
      },
    },
    cookies: { keys: ['wsgate-interop-cookie-key'] },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(`READY ${port}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
