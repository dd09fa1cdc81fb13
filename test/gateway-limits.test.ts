// The gateway's limits over real HTTP against a real nats-server: tokens without exp, issued in the future or
// living longer than --token-max-ttl are 401; a client that never finishes its headers or its body, or idles on
// a keep-alive connection, is cut off by the configured timeouts (raw TCP; we wait for the socket to close).
import t from 'tap';
import { SignJWT } from 'jose';
import { startNats } from './harness/nats.ts';
import { startGateway, TEST_SECRET } from './harness/gateway.ts';
import { mintToken } from '../runtime/tokens.ts';

const P = '/networking/v1/external/policies';

const sign = (claims: { iat?: number; exp?: number }) => {
  let jwt = new SignJWT({ scope: ['network.admin'], spaces: [] }).setProtectedHeader({ alg: 'HS256' }).setSubject('mallory').setIssuer('netfold').setAudience('netfold-policy');
  if (claims.iat !== undefined) jwt = jwt.setIssuedAt(claims.iat);
  if (claims.exp !== undefined) jwt = jwt.setExpirationTime(claims.exp);
  return jwt.sign(new TextEncoder().encode(TEST_SECRET));
};

t.test('tokens: no exp, iat in the future, lifetime above --token-max-ttl are 401', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats, { tokenMaxTtl: 3600 });
  const nowS = Math.floor(Date.now() / 1000);
  const status = async (token: string) => {
    const r = await gw.http('GET', P, { token });
    return { status: r.status, code: r.body.code, error: r.body.error };
  };
  t.match(await status(await sign({ iat: nowS, exp: nowS + 600 })), { status: 200 }, 'a well-formed token');
  t.match(await status(await sign({ iat: nowS })), { status: 401, code: 'unauthenticated', error: /no expiry/ }, 'no exp');
  t.match(await status(await sign({ iat: nowS + 3600, exp: nowS + 4000 })), { status: 401, code: 'unauthenticated', error: /in the future/ }, 'iat an hour ahead');
  t.match(await status(await mintToken(TEST_SECRET, { user: 'x', scopes: ['network.admin'], spaces: [] }, 3601)), { status: 401, code: 'unauthenticated', error: /exceeds the maximum of 3600 s/ }, 'lifetime 3601 s, maximum 3600 s');
  t.match(await status(await mintToken(TEST_SECRET, { user: 'x', scopes: ['network.admin'], spaces: [] }, 3600)), { status: 200 }, 'lifetime = the maximum');
});

