import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { exportSPKI, generateKeyPair, type JWTPayload, SignJWT } from 'jose';
import { loadConfig } from '../../src/config.js';
import { EVERY_ROW, parseChannels, type Subscription } from '../../src/core/subscription.js';
import {
  type AuthOutcome,
  type Authorizer,
  createAuthorizer,
  tokenOf,
} from '../../src/http/auth.js';

// Subscriber authorization: JWTs checked against the configured key and algorithm only, their
// channels claim against the channels a stream asks for. No database, no server.

const NOW = Date.UTC(2030, 0, 1);
const NOW_S = NOW / 1000;
const HOUR = 3600;

const SECRET = randomBytes(32).toString('base64url');
const SECRET_BYTES = new TextEncoder().encode(SECRET);
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const RSA_PEM = rsa.publicKey.export({ type: 'spki', format: 'pem' }).toString();

function authorizerOf(env: Record<string, string>): Authorizer {
  const authorizer = createAuthorizer(loadConfig(env));
  assert.ok(authorizer !== null);
  return authorizer;
}

const hs256 = authorizerOf({ SUBSCRIBER_JWT_KEY: SECRET });
const rs256 = authorizerOf({
  SUBSCRIBER_JWT_PUBLIC_KEY: RSA_PEM,
  SUBSCRIBER_JWT_ALGORITHM: 'RS256',
});

/** A token for `claims`, expiring in an hour from NOW unless `claims` says otherwise. */
async function sign(
  claims: JWTPayload,
  key: Uint8Array | KeyObject | CryptoKey = SECRET_BYTES,
  alg = 'HS256',
): Promise<string> {
  return new SignJWT({ exp: NOW_S + HOUR, ...claims }).setProtectedHeader({ alg }).sign(key);
}

const ask = (...channels: string[]): Subscription => parseChannels(channels, 64);

function bearer(token: string): { authorization: string } {
  return { authorization: `Bearer ${token}` };
}

/** Served, the stream to end when the token is no longer accepted: `exp` (ms) + 5 s of tolerance. */
function assertOk(outcome: AuthOutcome, exp: number | null): void {
  assert.deepEqual(outcome, { ok: true, expiresAt: exp === null ? null : exp + 5000 });
}

/** A refusal: its status, a one-line body ending in \n, and its WWW-Authenticate. */
function assertRefused(
  outcome: AuthOutcome,
  status: 401 | 403,
  body: RegExp,
  challenge: string | RegExp,
): void {
  assert.equal(outcome.ok, false, JSON.stringify(outcome));
  if (outcome.ok) return;
  assert.equal(outcome.status, status);
  assert.match(outcome.body, body);
  assert.match(outcome.body, /^[^\n]*\n$/);
  const header = outcome.headers['WWW-Authenticate'] ?? '';
  if (typeof challenge === 'string') assert.equal(header, challenge);
  else assert.match(header, challenge);
}

function assertInvalid(outcome: AuthOutcome, why: RegExp): void {
  assertRefused(
    outcome,
    401,
    /^invalid token: /,
    /^Bearer realm="rowcast", error="invalid_token", error_description="[^"\\]+"$/,
  );
  if (!outcome.ok) assert.match(outcome.body, why);
}

test('authorization is off without a key', () => {
  assert.equal(createAuthorizer(loadConfig({})), null);
});

test('HS256: a token granting the channel asked for is accepted until its exp', async () => {
  const token = await sign({ channels: ['orders:1'] });
  assertOk(await hs256.authorize(bearer(token), ask('orders:1'), NOW), (NOW_S + HOUR) * 1000);
});

test('RS256, ES256 and EdDSA: tokens signed with the private key verify with the public one', async () => {
  const token = await sign({ channels: ['a'] }, rsa.privateKey, 'RS256');
  assertOk(await rs256.authorize(bearer(token), ask('a'), NOW), (NOW_S + HOUR) * 1000);

  const ec = await generateKeyPair('ES256');
  const es256 = authorizerOf({
    SUBSCRIBER_JWT_PUBLIC_KEY: await exportSPKI(ec.publicKey),
    SUBSCRIBER_JWT_ALGORITHM: 'ES256',
  });
  const esToken = await sign({ channels: ['a'] }, ec.privateKey, 'ES256');
  assertOk(await es256.authorize(bearer(esToken), ask('a'), NOW), (NOW_S + HOUR) * 1000);

  const ed = generateKeyPairSync('ed25519');
  const pem = ed.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  // As an env file holds it: one line, \n for the line breaks.
  const eddsa = authorizerOf({
    SUBSCRIBER_JWT_PUBLIC_KEY: pem.replace(/\n/g, '\\n'),
    SUBSCRIBER_JWT_ALGORITHM: 'EdDSA',
  });
  const edToken = await sign({ channels: ['a'] }, ed.privateKey, 'EdDSA');
  assertOk(await eddsa.authorize(bearer(edToken), ask('a'), NOW), (NOW_S + HOUR) * 1000);
  // The ES256 key does not verify an EdDSA token, whatever its header says.
  assertInvalid(await es256.authorize(bearer(edToken), ask('a'), NOW), /not signed with ES256/);
});

test('the token comes from the Authorization header, else the cookie, else access_token', async () => {
  const good = await sign({ channels: ['a'] });
  const bad = await sign({ channels: ['a'] }, randomBytes(32));
  const cookie = (token: string) => `theme=dark; rowcast_token=${token}; other=1`;
  const a = ask('a');
  assertOk(
    await hs256.authorize({ ...bearer(good), cookie: cookie(bad), accessToken: bad }, a, NOW),
    (NOW_S + HOUR) * 1000,
  );
  assertOk(
    await hs256.authorize({ cookie: cookie(good), accessToken: bad }, a, NOW),
    (NOW_S + HOUR) * 1000,
  );
  assertOk(await hs256.authorize({ accessToken: good }, a, NOW), (NOW_S + HOUR) * 1000);
  // The first place with a token decides: a good one further down does not rescue a bad one.
  assertInvalid(
    await hs256.authorize({ ...bearer(bad), cookie: cookie(good) }, a, NOW),
    /signature/,
  );
  assertInvalid(await hs256.authorize({ cookie: cookie(bad), accessToken: good }, a, NOW), /sig/);

  assert.equal(tokenOf({ authorization: 'bearer  abc ' }), 'abc');
  assert.equal(tokenOf({ authorization: 'Basic dXNlcjpwYXNz', accessToken: 'q' }), 'q');
  assert.equal(tokenOf({ authorization: 'Bearer ', cookie: 'rowcast_token=c' }), 'c');
  assert.equal(tokenOf({ cookie: 'rowcast_token="c"' }), 'c');
  assert.equal(tokenOf({ cookie: 'xrowcast_token=x; rowcast_token=' }), null);
  assert.equal(tokenOf({ accessToken: '' }), null);
  assert.equal(tokenOf({ accessToken: null }), null);
  assert.equal(tokenOf({}), null);
  // A Bearer header that is not one token is refused as such, not taken for no token.
  assertInvalid(await hs256.authorize({ authorization: 'Bearer a b' }, a, NOW), /well-formed/);
});

test('no token: 401 with the bare Bearer challenge, and where a token may come from', async () => {
  const outcome = await hs256.authorize({}, ask('a'), NOW);
  assertRefused(outcome, 401, /needs a token/, 'Bearer realm="rowcast"');
  if (!outcome.ok) {
    for (const where of ['Authorization: Bearer', 'rowcast_token', 'access_token']) {
      assert.ok(outcome.body.includes(where), where);
    }
  }
});

test('a bad signature is refused, and the token is never echoed', async () => {
  const token = await sign({ channels: ['a'] }, new TextEncoder().encode('x'.repeat(32)));
  const outcome = await hs256.authorize(bearer(token), ask('a'), NOW);
  assertInvalid(outcome, /signature does not verify/);
  assert.ok(!JSON.stringify(outcome).includes(token));
  // A signature altered by one character.
  const [head, body, sig] = (await sign({ channels: ['a'] })).split('.') as [
    string,
    string,
    string,
  ];
  const flipped = `${head}.${body}.${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}`;
  assertInvalid(await hs256.authorize(bearer(flipped), ask('a'), NOW), /signature/);
  // A payload altered under the original signature.
  const forged = Buffer.from(JSON.stringify({ channels: ['*'], exp: NOW_S + HOUR })).toString(
    'base64url',
  );
  assertInvalid(await hs256.authorize(bearer(`${head}.${forged}.${sig}`), ask('a'), NOW), /sig/);
  assertInvalid(await hs256.authorize(bearer('not-a-jwt'), ask('a'), NOW), /well-formed/);
});

test('alg none is refused', async () => {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${part({ alg: 'none', typ: 'JWT' })}.${part({ channels: ['*'], exp: NOW_S + HOUR })}.`;
  assertInvalid(await hs256.authorize(bearer(unsigned), ask('a'), NOW), /not signed with HS256/);
  assertInvalid(await rs256.authorize(bearer(unsigned), ask('a'), NOW), /not signed with RS256/);
});

test('HS256 signed with the RSA public key as its secret is refused by an RS256 configuration', async () => {
  const confused = await sign({ channels: ['*'] }, new TextEncoder().encode(RSA_PEM), 'HS256');
  assertInvalid(await rs256.authorize(bearer(confused), EVERY_ROW, NOW), /not signed with RS256/);
  // And an RS256 token against the HS256 configuration.
  const rsToken = await sign({ channels: ['*'] }, rsa.privateKey, 'RS256');
  assertInvalid(await hs256.authorize(bearer(rsToken), EVERY_ROW, NOW), /not signed with HS256/);
});

test('exp is required and enforced, with 5 s of clock tolerance; nbf too', async () => {
  const a = ask('a');
  const expired = await sign({ channels: ['a'], exp: NOW_S - 6 });
  assertInvalid(await hs256.authorize(bearer(expired), a, NOW), /the token has expired/);
  const justExpired = await sign({ channels: ['a'], exp: NOW_S - 4 });
  assertOk(await hs256.authorize(bearer(justExpired), a, NOW), (NOW_S - 4) * 1000);
  // `now` is the clock: the hour-long token is expired two hours later.
  const token = await sign({ channels: ['a'] });
  assertInvalid(await hs256.authorize(bearer(token), a, NOW + 2 * HOUR * 1000), /expired/);

  const early = await sign({ channels: ['a'], nbf: NOW_S + 60 });
  assertInvalid(await hs256.authorize(bearer(early), a, NOW), /not valid yet/);
  const textNbf = await sign({ channels: ['a'], nbf: 'soon' as unknown as number });
  assertInvalid(
    await hs256.authorize(bearer(textNbf), a, NOW),
    /nbf claim of the token is invalid/,
  );
  const nearlyValid = await sign({ channels: ['a'], nbf: NOW_S + 4 });
  assert.equal((await hs256.authorize(bearer(nearlyValid), a, NOW)).ok, true);

  const forever = await new SignJWT({ channels: ['a'] })
    .setProtectedHeader({ alg: 'HS256' })
    .sign(SECRET_BYTES);
  assertInvalid(await hs256.authorize(bearer(forever), a, NOW), /no exp claim/);
  const textExp = await sign({ channels: ['a'], exp: 'tomorrow' as unknown as number });
  assertInvalid(await hs256.authorize(bearer(textExp), a, NOW), /exp claim of the token/);

  // Without `now`, the clock is Date.now().
  const live = await new SignJWT({ channels: ['a'] })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime('10m')
    .sign(SECRET_BYTES);
  assert.equal((await hs256.authorize(bearer(live), a)).ok, true);
});

test('issuer and audience, when configured, must match', async () => {
  const strict = authorizerOf({
    SUBSCRIBER_JWT_KEY: SECRET,
    SUBSCRIBER_JWT_ISSUER: 'https://auth.example',
    SUBSCRIBER_JWT_AUDIENCE: 'rowcast',
  });
  const a = ask('a');
  const claims = { channels: ['a'], iss: 'https://auth.example', aud: 'rowcast' };
  assert.equal((await strict.authorize(bearer(await sign(claims)), a, NOW)).ok, true);
  const listed = await sign({ ...claims, aud: ['other', 'rowcast'] });
  assert.equal((await strict.authorize(bearer(listed), a, NOW)).ok, true);

  const wrongIss = await sign({ ...claims, iss: 'https://evil.example' });
  assertInvalid(await strict.authorize(bearer(wrongIss), a, NOW), /another issuer/);
  const noIss = await sign({ channels: ['a'], aud: 'rowcast' });
  assertInvalid(await strict.authorize(bearer(noIss), a, NOW), /iss/);
  const wrongAud = await sign({ ...claims, aud: 'billing' });
  assertInvalid(await strict.authorize(bearer(wrongAud), a, NOW), /another audience/);
  // jose throws a TypeError for an iss that is not a string: still a 401, never a crash.
  const numericIss = await sign({ ...claims, iss: 42 as unknown as string });
  assertInvalid(await strict.authorize(bearer(numericIss), a, NOW), /could not be verified|iss/);
  // Without an issuer configured, any iss goes.
  assert.equal((await hs256.authorize(bearer(wrongIss), a, NOW)).ok, true);
});

test('a channel asked for but not granted is a 403 naming it', async () => {
  const token = await sign({ channels: ['orders:1', 'news'] });
  const outcome = await hs256.authorize(bearer(token), ask('news', 'payments'), NOW);
  assertRefused(
    outcome,
    403,
    /^channel "payments" is not granted by the token\n$/,
    'Bearer realm="rowcast", error="insufficient_scope", error_description="channel payments is not granted by the token"',
  );
});

test('prefix grants cover their names and narrower prefixes only', async () => {
  const token = bearer(await sign({ channels: ['orders:*'] }));
  for (const covered of [['orders:1'], ['orders:eu:*'], ['orders:', 'orders:*']]) {
    assertOk(await hs256.authorize(token, ask(...covered), NOW), (NOW_S + HOUR) * 1000);
  }
  const cases: [string[], string][] = [
    [['order'], 'order'],
    [['orders'], 'orders'],
    [['order*'], 'order*'],
    [['orders:1', 'ordersx'], 'ordersx'],
  ];
  for (const [asked, missing] of cases) {
    const outcome = await hs256.authorize(token, ask(...asked), NOW);
    assertRefused(
      outcome,
      403,
      new RegExp(`^channel "${missing.replace('*', '\\*')}" is not`),
      /./,
    );
  }
});

test('* grants every channel and every row; the firehose needs *', async () => {
  const all = bearer(await sign({ channels: ['a', '*'] }));
  assertOk(await hs256.authorize(all, EVERY_ROW, NOW), (NOW_S + HOUR) * 1000);
  assertOk(await hs256.authorize(all, ask('x', 'y:*'), NOW), (NOW_S + HOUR) * 1000);

  const some = bearer(await sign({ channels: ['a', 'b:*'] }));
  const outcome = await hs256.authorize(some, EVERY_ROW, NOW);
  assertRefused(outcome, 403, /^channel "\*" is not granted by the token\n$/, /channel \* is not/);
});

test('the channels claim must be a list of names and patterns; [] grants nothing', async () => {
  const cases: [unknown, RegExp][] = [
    [undefined, /no channels claim/],
    ['orders:*', /not an array of strings/],
    [[1], /not an array of strings/],
    [['ok', 'white space'], /channels\[1\] of the token is not a channel name/],
    [['a*b'], /channels\[0\]/],
    [['x'.repeat(192)], /channels\[0\]/],
    [Array.from({ length: 1025 }, (_, i) => `c${i}`), /more than 1024/],
  ];
  for (const [channels, why] of cases) {
    const token = await sign(channels === undefined ? {} : { channels });
    assertInvalid(await hs256.authorize(bearer(token), ask('a'), NOW), why);
  }
  // An empty list is not "no channel asked for", which would mean every row.
  const none = bearer(await sign({ channels: [] }));
  assertRefused(await hs256.authorize(none, EVERY_ROW, NOW), 403, /"\*"/, /./);
  assertRefused(await hs256.authorize(none, ask('a'), NOW), 403, /"a"/, /./);
});

test('PUBLIC_CHANNELS are read without a token; a token sent anyway is still checked', async () => {
  const open = authorizerOf({ SUBSCRIBER_JWT_KEY: SECRET, PUBLIC_CHANNELS: 'lobby, news:*' });
  assertOk(await open.authorize({}, ask('lobby'), NOW), null);
  assertOk(await open.authorize({}, ask('news:today', 'news:eu:*', 'lobby'), NOW), null);
  assertRefused(await open.authorize({}, ask('lobby', 'vip'), NOW), 401, /needs a token/, /./);
  assertRefused(await open.authorize({}, EVERY_ROW, NOW), 401, /needs a token/, /./);

  // Public channels do not end with the token: no expiry.
  const vip = bearer(await sign({ channels: ['vip'] }));
  assertOk(await open.authorize(vip, ask('lobby'), NOW), null);
  // A private channel with public ones: the union of both, until the token expires.
  assertOk(await open.authorize(vip, ask('vip', 'lobby', 'news:x'), NOW), (NOW_S + HOUR) * 1000);
  assertRefused(await open.authorize(vip, ask('vip', 'other'), NOW), 403, /"other"/, /./);
  const none = bearer(await sign({ channels: [] }));
  assertOk(await open.authorize(none, ask('lobby'), NOW), null);
  assertRefused(await open.authorize(none, ask('vip'), NOW), 403, /"vip"/, /./);

  const expired = await sign({ channels: ['vip'], exp: NOW_S - HOUR });
  assertInvalid(await open.authorize(bearer(expired), ask('lobby'), NOW), /expired/);

  const everything = authorizerOf({ SUBSCRIBER_JWT_KEY: SECRET, PUBLIC_CHANNELS: '*' });
  assertOk(await everything.authorize({}, EVERY_ROW, NOW), null);
  assertOk(await everything.authorize({}, ask('any'), NOW), null);
});
