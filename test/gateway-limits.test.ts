// The gateway's limits over real HTTP against a real nats-server: tokens without exp, issued in the future or
// living longer than --token-max-ttl are 401; a client that never finishes its headers or its body, or idles on
// a keep-alive connection, is cut off by the configured timeouts (raw TCP; we wait for the socket to close).
import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { SignJWT } from 'jose';
import { startNats } from './harness/nats.ts';
import { startGateway, TEST_SECRET, type GatewayFixture } from './harness/gateway.ts';
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

/** A raw TCP connection to the gateway that records what it receives and resolves `closed` when the server closes it. */
function rawClient(gw: GatewayFixture): Promise<{ sock: Socket; received: () => string; closed: Promise<void> }> {
  const { hostname, port } = new URL(gw.writer.url);
  return new Promise((resolve, reject) => {
    const sock = connect(Number(port), hostname);
    let received = '';
    sock.on('data', (d: Buffer) => (received += d.toString()));
    sock.on('error', () => undefined); // a reset is also a close
    const closed = new Promise<void>((r) => sock.once('close', () => r()));
    sock.once('connect', () => resolve({ sock, received: () => received, closed }));
    sock.once('error', reject);
  });
}

/** Waits for the server to close the socket; fails (instead of hanging until tap's timeout) if it never does. */
async function serverCloses(t: Test, c: { sock: Socket; closed: Promise<void> }, what: string, guardMs = 30_000): Promise<boolean> {
  let guard: NodeJS.Timeout | undefined;
  const gaveUp = new Promise<false>((r) => (guard = setTimeout(() => r(false), guardMs)));
  const closed = await Promise.race([c.closed.then(() => true as const), gaveUp]);
  clearTimeout(guard);
  if (!closed) c.sock.destroy();
  t.ok(closed, what);
  return closed;
}

t.test('HTTP timeouts: unfinished headers, a trickled body, an idle keep-alive connection', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats, { httpRequestTimeoutMs: 300, httpKeepAliveTimeoutMs: 300 });

  // Slowloris: headers that never end.
  const slowHeaders = await rawClient(gw);
  slowHeaders.sock.write(`GET ${P} HTTP/1.1\r\nHost: x\r\nX-Slow: `);
  const headerTrickle = setInterval(() => slowHeaders.sock.writable && slowHeaders.sock.write('a'), 50);
  t.teardown(() => clearInterval(headerTrickle));
  await serverCloses(t, slowHeaders, 'a client that never finishes its headers is closed');
  clearInterval(headerTrickle);
  t.match(slowHeaders.received(), /^HTTP\/1\.1 408/, 'with 408');

  // Complete headers, then a body trickled a byte at a time that never reaches its Content-Length.
  const slowBody = await rawClient(gw);
  slowBody.sock.write(`POST ${P} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${gw.admin}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"policies":`);
  const bodyTrickle = setInterval(() => slowBody.sock.writable && slowBody.sock.write(' '), 50);
  t.teardown(() => clearInterval(bodyTrickle));
  await serverCloses(t, slowBody, 'a client that trickles its body is closed');
  clearInterval(bodyTrickle);
  t.match(slowBody.received(), /^HTTP\/1\.1 408/, 'with 408');

  // A finished request leaves a keep-alive connection open only for the keep-alive timeout.
  const idle = await rawClient(gw);
  idle.sock.write(`GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n`);
  await serverCloses(t, idle, 'an idle keep-alive connection is closed');
  t.match(idle.received(), /^HTTP\/1\.1 200/, 'after its answer');

  // A well-behaved request still works, and one whose answer takes longer than the request timeout (the long poll
  // of …/enforcement, here 1 s against 300 ms) is not cut: the timeout bounds receiving the request only.
  t.equal((await gw.http('GET', P)).status, 200);
  const longPoll = await gw.http('GET', '/networking/v1/external/enforcement?revision=1000000&wait_ms=1000');
  t.equal(longPoll.status, 200, 'a slow answer is still delivered');
  t.equal(longPoll.body.enforced, false);
});
