import assert from 'node:assert/strict';
import cluster from 'node:cluster';
import { once } from 'node:events';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { exportSPKI, generateKeyPair, type JWTPayload, SignJWT } from 'jose';
import { startApp, startCluster, type TestApp, type TestCluster } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { openStream, parseSse, type StreamClient } from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// Subscriber authorization (issue 10) against the real server: tokens minted here, checked by the
// server on the bare-socket front and on the node:http path, streams ended at their token's exp
// and resumed with a fresh one without losing or repeating a row (docs/delivery.md 2, 3).

const SECRET = 'a-test-secret-of-more-than-32-bytes-for-hs256';
const SECRET_BYTES = new TextEncoder().encode(SECRET);
const ISSUER = 'https://auth.example.test';
const AUDIENCE = 'rowcast-tests';
const HS_ENV = {
  SUBSCRIBER_JWT_KEY: SECRET,
  SUBSCRIBER_JWT_ISSUER: ISSUER,
  SUBSCRIBER_JWT_AUDIENCE: AUDIENCE,
  PUBLIC_CHANNELS: 'lobby',
};
const REALM = 'Bearer realm="rowcast"';
const ROUTES = { html: '/stream', sse: '/events', ndjson: '/stream.ndjson' } as const;
type Format = keyof typeof ROUTES;
const FORMATS = Object.keys(ROUTES) as Format[];
const STREAM_PATHS = new Set<string>(Object.values(ROUTES));
/** The last bytes of a body whose token expired: the format's closing frame (NDJSON has none). */
const CLOSING: Record<Format, string> = {
  html: '<!-- rowcast: token expired -->\n</body></html>\n',
  sse: ': token expired\n\n',
  ndjson: '\n',
};
// A stream's token is checked once a second (the hub's sweep): its end comes within a few.
const ENDED_WITHIN_MS = 15_000;

let db: TestDb;
before(async () => {
  db = await createTestDb('auth', { withTable: true });
});
after(async () => {
  await db.drop();
});

// Each test reads channels of its own, so a row left unclaimed by an earlier test's server (and
// claimed by the next one) cannot show up where a test counts rows.
let rooms = 1;
function freshRoom(): string {
  return `room:${++rooms}`;
}

/** Inserts rows of `channel` in one statement (one tick reads them in order); their ids. */
async function insertIn(channel: string, ...contents: string[]): Promise<string[]> {
  return insertRows(contents.map((content) => [channel, content]));
}

/** Inserts [channel, content] rows in one statement; their ids, in order. */
async function insertRows(rows: [string, string][]): Promise<string[]> {
  const result = await db.query<{ insertId: number }>(
    'INSERT INTO msg (channel, content) VALUES ?',
    [rows],
  );
  const ids = rows.map((_, i) => String(result.insertId + i));
  for (const [i, [channel]] of rows.entries()) channelOf.set(ids[i] as string, channel);
  return ids;
}

const nowS = () => Math.floor(Date.now() / 1000);

/** An HS256 token of the test issuer for the test audience, granting room:* for an hour. */
function token(claims: JWTPayload = {}, key: Uint8Array = SECRET_BYTES): Promise<string> {
  return new SignJWT({
    iss: ISSUER,
    aud: AUDIENCE,
    exp: nowS() + 3600,
    channels: ['room:*'],
    ...claims,
  })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .sign(key);
}

/** A token a forger writes by hand: `alg: none`, no signature. */
function unsignedToken(claims: JWTPayload): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`;
}

const bearer = (jwt: string) => ({ Authorization: `Bearer ${jwt}` });

/** A whole (non-stream) answer. */
interface Answer {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

/** Sends one request and reads the whole answer; `reused`: whether it went on a kept-alive socket. */
async function send(
  url: URL,
  options: { method?: string; agent: http.Agent | false; headers?: Record<string, string> },
): Promise<Answer & { reused: boolean }> {
  const req = http.request(url, options).end();
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  const reused = req.reusedSocket;
  if (res.statusCode === 200 && STREAM_PATHS.has(url.pathname)) {
    // A stream that was served: its body never ends.
    req.destroy();
    return { status: 200, headers: res.headers, body: '', reused };
  }
  let body = '';
  res.setEncoding('utf8');
  for await (const chunk of res) body += chunk;
  return { status: res.statusCode ?? 0, headers: res.headers, body, reused };
}

/**
 * The three ways a stream request reaches the server: a GET on a fresh connection (the
 * bare-socket front reads it, verifies the token, and hands a refusal to node:http), a GET on a
 * kept-alive connection after another request (node:http only), and HEAD (node:http only).
 */
type Path = 'fresh GET' | 'kept-alive GET' | 'HEAD';
const PATHS: readonly Path[] = ['fresh GET', 'kept-alive GET', 'HEAD'];

/**
 * The request that opens a kept-alive connection: /favicon.ico, whose 204 does not depend on
 * the server's health (a cluster just started may answer /healthz with 503).
 */
async function firstRequest(base: URL, agent: http.Agent): Promise<void> {
  const first = await send(new URL('/favicon.ico', base), { agent });
  assert.equal(first.status, 204);
}

async function requestVia(
  path: Path,
  base: URL,
  target: string,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const url = new URL(target, base);
  if (path === 'fresh GET') return send(url, { agent: false, headers });
  if (path === 'HEAD') return send(url, { method: 'HEAD', agent: false, headers });
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    await firstRequest(base, agent);
    const answer = await send(url, { agent, headers });
    assert.ok(answer.reused, 'the stream request went over the kept-alive connection');
    return answer;
  } finally {
    agent.destroy();
  }
}

interface Refusal {
  readonly status: 401 | 403;
  /** The WWW-Authenticate header, exactly or as a pattern. */
  readonly challenge: string | RegExp;
  /** What the body says (it is one line). */
  readonly body: RegExp;
}

/** Asks for `target` on every path and checks each answer is the refusal; `secret` never echoed. */
async function assertRefusedEverywhere(
  base: URL,
  target: string,
  headers: Record<string, string>,
  expected: Refusal,
  secret?: string,
): Promise<void> {
  for (const path of PATHS) {
    const answer = await requestVia(path, base, target, headers);
    const where = `${path} ${target}`;
    assert.equal(answer.status, expected.status, `${where}: status (${answer.body.trim()})`);
    const challenge = answer.headers['www-authenticate'];
    if (typeof expected.challenge === 'string') {
      assert.equal(challenge, expected.challenge, `${where}: WWW-Authenticate`);
    } else {
      assert.match(challenge ?? '', expected.challenge, `${where}: WWW-Authenticate`);
    }
    assert.equal(answer.headers['content-type'], 'text/plain; charset=utf-8', where);
    if (path === 'HEAD') {
      assert.equal(answer.body, '', `${where}: no body`);
    } else {
      assert.match(answer.body, expected.body, `${where}: body`);
      assert.match(answer.body, /^[^\n]+\n$/, `${where}: one line`);
    }
    if (secret !== undefined) {
      assert.ok(!answer.body.includes(secret), `${where}: the body does not echo the token`);
      assert.ok(!challenge?.includes(secret), `${where}: the header does not echo the token`);
    }
  }
}

/** A 401 for a token that does not verify: `why` is named in the body and the challenge. */
function invalidToken(why: RegExp): Refusal {
  return {
    status: 401,
    challenge: new RegExp(
      `^Bearer realm="rowcast", error="invalid_token", error_description="[^"\\\\]*${why.source}[^"\\\\]*"$`,
    ),
    body: new RegExp(`^invalid token: .*${why.source}`),
  };
}

/** A 403 naming the channel (or `*`) the token does not grant. */
function notGranted(channel: string): Refusal {
  const escaped = channel.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return {
    status: 403,
    challenge: new RegExp(
      `^Bearer realm="rowcast", error="insufficient_scope", error_description="channel ${escaped} is not granted by the token"$`,
    ),
    body: new RegExp(`^channel "${escaped}" is not granted by the token\\n$`),
  };
}

const NO_TOKEN: Refusal = {
  status: 401,
  challenge: REALM,
  body: /needs a token.*Authorization: Bearer.*rowcast_token.*access_token/,
};

/** The URL of `format`'s stream reading `channels`. */
function streamTarget(format: Format, channels: readonly string[], extra = ''): string {
  const query = channels.map((channel) => `channel=${encodeURIComponent(channel)}`);
  if (extra !== '') query.push(extra);
  return query.length === 0 ? ROUTES[format] : `${ROUTES[format]}?${query.join('&')}`;
}

/** Opens a stream that must be served (200); the failure message carries the refusal's body. */
async function openServed(
  base: URL,
  target: string,
  headers: Record<string, string> = {},
): Promise<StreamClient> {
  const client = await openStream(new URL(target, base), headers);
  if (client.res.statusCode !== 200) {
    await client.ended.catch(() => undefined);
    client.close();
    assert.fail(`${target}: ${client.res.statusCode} ${client.text.trim()}`);
  }
  return client;
}

/** Each inserted row's channel, to check the channel its frames name. */
const channelOf = new Map<string, string>();

/**
 * The row ids of a body in order, checking the channel each frame names where its format carries
 * one (HTML `data-channel`, absent for '', NDJSON `"channel"`), and that no gap frame came: every
 * resume here is exact (docs/delivery.md 4).
 */
function rowsIn(contentType: string, text: string): string[] {
  if (contentType.startsWith('text/event-stream')) {
    return parseSse(text).map((event) => {
      assert.equal(event.event, undefined, `a row event, not ${JSON.stringify(event)}`);
      return event.id as string;
    });
  }
  let frames: { id: string; channel: string }[];
  if (contentType.startsWith('application/x-ndjson')) {
    const lines = text.split('\n');
    lines.pop(); // not terminated yet
    frames = lines
      .filter((line) => line !== '')
      .map((line) => {
        const id = /^\{"id":(\d+),/.exec(line)?.[1];
        assert.ok(id !== undefined, `a row line, not ${line}`);
        return { id, channel: (JSON.parse(line) as { channel: string }).channel };
      });
  } else {
    assert.ok(!text.includes('<div class="gap"'), 'no gap fragment');
    frames = [
      ...text.matchAll(
        /<div class="msg" data-id="(\d+)" data-seq="\d+"(?: data-channel="([^"]+)")?>/g,
      ),
    ].map((m) => ({ id: m[1] as string, channel: m[2] ?? '' }));
  }
  for (const { id, channel } of frames) {
    const inserted = channelOf.get(id);
    if (inserted !== undefined) assert.equal(channel, inserted, `the channel of row ${id}`);
  }
  return frames.map((frame) => frame.id);
}

function rowsOf(client: StreamClient): string[] {
  return rowsIn(client.res.headers['content-type'] ?? '', client.text);
}

/** Waits until the rows with these ids have all arrived on `client`. */
async function waitForRows(
  client: StreamClient,
  ids: readonly string[],
  timeoutMs?: number,
): Promise<void> {
  await waitUntil(
    () => {
      const seen = new Set(rowsOf(client));
      return ids.every((id) => seen.has(id));
    },
    `rows ${ids.join(',')}`,
    timeoutMs,
  );
}

/**
 * Opens `target` on a kept-alive connection (after another request), so that node:http, not the
 * front, serves the stream; collects its body.
 */
async function openKeptAlive(base: URL, target: string, headers: Record<string, string>) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  await firstRequest(base, agent);
  const req = http.get(new URL(target, base), { agent, headers });
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  assert.ok(req.reusedSocket, 'the stream went over the kept-alive connection');
  assert.equal(res.statusCode, 200);
  let text = '';
  res.setEncoding('utf8');
  res.on('data', (chunk: string) => {
    text += chunk;
  });
  res.on('error', () => undefined);
  return {
    ids: () => rowsIn(res.headers['content-type'] ?? '', text),
    close: () => agent.destroy(),
  };
}

/** The series of a /metrics scrape and their values. */
async function figures(base: URL): Promise<Map<string, number>> {
  const answer = await send(new URL('/metrics', base), { agent: false });
  assert.equal(answer.status, 200);
  const found = new Map<string, number>();
  for (const line of answer.body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    found.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return found;
}

async function figure(base: URL, series: string): Promise<number> {
  const value = (await figures(base)).get(series);
  assert.ok(value !== undefined, `${series} in /metrics`);
  return value;
}

describe('a server with an HS256 key, an issuer, an audience and PUBLIC_CHANNELS=lobby', () => {
  let app: TestApp;
  before(async () => {
    app = await startApp(db.url, HS_ENV);
  });
  after(async () => {
    await app?.close();
  });

  test('a token granting room:* reads channel=room:1 on each format: its rows, no others', async () => {
    // room:1 is this test's; freshRoom() hands out the others.
    const room = 'room:1';
    const jwt = await token();
    const clients = new Map<Format, StreamClient>();
    try {
      for (const format of FORMATS) {
        clients.set(format, await openServed(app.url, streamTarget(format, [room]), bearer(jwt)));
      }
      const keptAlive = await openKeptAlive(app.url, streamTarget('sse', [room]), bearer(jwt));
      try {
        // One statement: the rows of other channels come first in the same batch, so had they
        // been written to these streams they would precede room:1's.
        const [, , , mine] = await insertRows([
          ['lounge:1', 'another channel'],
          ['room:1x', 'a channel that only starts like it'],
          ['', 'the implicit channel'],
          [room, 'mine'],
        ]);
        const more = await insertIn(room, 'mine too', 'and me');
        const expected = [mine as string, ...more];
        for (const [format, client] of clients) {
          await waitForRows(client, expected);
          assert.deepEqual(rowsOf(client), expected, format);
        }
        await waitUntil(() => keptAlive.ids().length >= 3, 'the kept-alive stream’s rows');
        assert.deepEqual(keptAlive.ids(), expected, 'the stream served by node:http');
        // The frames name their channel (HTML data-channel, NDJSON "channel").
        assert.match(clients.get('html')?.text ?? '', /data-channel="room:1">mine<\/div>/);
        assert.match(clients.get('ndjson')?.text ?? '', /"channel":"room:1","content":"mine"/);
      } finally {
        keptAlive.close();
      }
    } finally {
      for (const client of clients.values()) client.close();
    }
  });

  test('without a token: 401 with the bare challenge, on every path', async () => {
    await assertRefusedEverywhere(app.url, streamTarget('sse', ['room:1']), {}, NO_TOKEN);
    await assertRefusedEverywhere(app.url, streamTarget('html', ['room:1']), {}, NO_TOKEN);
    await assertRefusedEverywhere(app.url, streamTarget('ndjson', []), {}, NO_TOKEN);
  });

  test('a token that does not verify: 401 invalid_token naming why, on every path', async (t) => {
    const target = streamTarget('sse', ['room:1']);
    const now = nowS();
    const cases: [string, string, RegExp][] = [
      [
        'signed with another key',
        await token({}, new TextEncoder().encode('another-secret-that-is-32-bytes-long!!')),
        /signature does not verify/,
      ],
      [
        'alg none',
        unsignedToken({ iss: ISSUER, aud: AUDIENCE, exp: now + 3600, channels: ['*'] }),
        /not signed with HS256/,
      ],
      // Beyond the server's 5 s clock tolerance either way.
      ['expired', await token({ exp: now - 60 }), /has expired/],
      ['not valid yet', await token({ nbf: now + 60 }), /not valid yet \(nbf\)/],
      ['another issuer', await token({ iss: 'https://evil.example' }), /another issuer \(iss\)/],
      ['another audience', await token({ aud: 'someone-else' }), /another audience \(aud\)/],
      ['not a JWT', 'not-a-jwt', /not a well-formed JWT/],
    ];
    for (const [what, jwt, why] of cases) {
      await t.test(what, async () => {
        await assertRefusedEverywhere(app.url, target, bearer(jwt), invalidToken(why), jwt);
        // The same refusal whichever place carries the token.
        await assertRefusedEverywhere(
          app.url,
          `${target}&access_token=${jwt}`,
          {},
          invalidToken(why),
          jwt,
        );
      });
    }
  });

  test('a valid token for a channel it does not grant: 403 naming the channel', async () => {
    const jwt = await token({ channels: ['room:*', 'news'] });
    await assertRefusedEverywhere(
      app.url,
      streamTarget('sse', ['room:1', 'other:1']),
      bearer(jwt),
      notGranted('other:1'),
    );
    await assertRefusedEverywhere(
      app.url,
      streamTarget('ndjson', ['news*']),
      bearer(jwt),
      notGranted('news*'),
    );
    // An empty list grants nothing.
    await assertRefusedEverywhere(
      app.url,
      streamTarget('html', ['room:1']),
      bearer(await token({ channels: [] })),
      notGranted('room:1'),
    );
  });

  test('the firehose (no channel, or *) needs * in the token: 403 naming *', async () => {
    const jwt = await token({ channels: ['room:*'] });
    for (const format of FORMATS) {
      await assertRefusedEverywhere(
        app.url,
        streamTarget(format, []),
        bearer(jwt),
        notGranted('*'),
      );
    }
    await assertRefusedEverywhere(
      app.url,
      streamTarget('sse', ['*']),
      bearer(jwt),
      notGranted('*'),
    );
    // With * granted, the firehose reads every channel, the implicit one included.
    const all = await openServed(
      app.url,
      streamTarget('ndjson', []),
      bearer(await token({ channels: ['*'] })),
    );
    try {
      const ids = await insertRows([
        ['elsewhere', 'x'],
        ['', 'y'],
        [freshRoom(), 'z'],
      ]);
      await waitForRows(all, ids);
      assert.deepEqual(rowsOf(all), ids);
    } finally {
      all.close();
    }
  });

  test('the token comes from the Authorization header, else the cookie, else ?access_token=', async () => {
    const room = freshRoom();
    const good = await token();
    const bad = await token({ exp: nowS() - 60 });
    const target = streamTarget('sse', [room]);
    const cookie = (jwt: string) => ({ Cookie: `theme=dark; rowcast_token=${jwt}; other=1` });
    const served = [
      await openServed(app.url, target, bearer(good)),
      await openServed(app.url, target, cookie(good)),
      await openServed(app.url, `${target}&access_token=${good}`),
      // The header wins over a bad cookie and query; the cookie over a bad query.
      await openServed(app.url, `${target}&access_token=${bad}`, {
        ...bearer(good),
        ...cookie(bad),
      }),
      await openServed(app.url, `${target}&access_token=${bad}`, cookie(good)),
    ];
    try {
      const ids = await insertIn(room, 'for every source');
      for (const [i, client] of served.entries()) {
        await waitForRows(client, ids);
        assert.deepEqual(rowsOf(client), ids, `stream ${i}`);
      }
    } finally {
      for (const client of served) client.close();
    }
    // The first place that holds a token is the one read: a good one further down does not
    // rescue it.
    const expired = invalidToken(/has expired/);
    await assertRefusedEverywhere(
      app.url,
      `${target}&access_token=${good}`,
      {
        ...bearer(bad),
        ...cookie(good),
      },
      expired,
    );
    await assertRefusedEverywhere(app.url, `${target}&access_token=${good}`, cookie(bad), expired);
  });

  test('a public channel streams without a token; a private one next to it needs one', async () => {
    const room = freshRoom();
    const lobby = await openServed(app.url, streamTarget('sse', ['lobby']));
    await assertRefusedEverywhere(app.url, streamTarget('sse', ['lobby', room]), {}, NO_TOKEN);
    await assertRefusedEverywhere(
      app.url,
      streamTarget('sse', ['lobby', 'other:1']),
      bearer(await token()),
      notGranted('other:1'),
    );
    const both = await openServed(
      app.url,
      streamTarget('html', ['lobby', room]),
      bearer(await token()),
    );
    try {
      const ids = await insertRows([
        ['lobby', 'hello all'],
        [room, 'hello room'],
        ['lobby2', 'not the lobby'],
      ]);
      const [inLobby, inRoom] = ids as [string, string];
      await waitForRows(both, [inLobby, inRoom]);
      await waitForRows(lobby, [inLobby]);
      // One more lobby row: once it is there, a row of another channel would have come before.
      const [last] = await insertIn('lobby', 'again');
      await waitForRows(lobby, [last as string]);
      assert.deepEqual(rowsOf(lobby), [inLobby, last]);
      await waitForRows(both, [last as string]);
      assert.deepEqual(rowsOf(both), [inLobby, inRoom, last]);
    } finally {
      lobby.close();
      both.close();
    }
  });

  test('refusals are counted by status; served streams and 400s are not', async () => {
    const before401 = await figure(app.url, 'rowcast_auth_refusals_total{status="401"}');
    const before403 = await figure(app.url, 'rowcast_auth_refusals_total{status="403"}');
    const target = streamTarget('sse', ['room:1']);
    const narrow = await token({ channels: ['news'] });
    // 401: one per path without a token, one bad signature on a fresh GET.
    for (const path of PATHS) assert.equal((await requestVia(path, app.url, target)).status, 401);
    const forged = await token(
      {},
      new TextEncoder().encode('another-secret-that-is-32-bytes-long!!'),
    );
    assert.equal((await requestVia('fresh GET', app.url, target, bearer(forged))).status, 401);
    // 403: two, on the front and on node:http.
    assert.equal((await requestVia('fresh GET', app.url, target, bearer(narrow))).status, 403);
    assert.equal((await requestVia('kept-alive GET', app.url, target, bearer(narrow))).status, 403);
    // Neither a bad channel name (400) nor a served stream counts.
    assert.equal((await requestVia('fresh GET', app.url, '/events?channel=a%20b')).status, 400);
    const served = await openServed(app.url, target, bearer(await token()));
    served.close();
    await waitUntil(async () => {
      const now = await figures(app.url);
      return (
        now.get('rowcast_auth_refusals_total{status="401"}') === before401 + 4 &&
        now.get('rowcast_auth_refusals_total{status="403"}') === before403 + 2
      );
    }, 'refusals counted');
    // Counted once each: the front's check before node:http's answer is not a second refusal.
    assert.equal(await figure(app.url, 'rowcast_auth_refusals_total{status="401"}'), before401 + 4);
    assert.equal(await figure(app.url, 'rowcast_auth_refusals_total{status="403"}'), before403 + 2);
  });
});

test('with an RS256 public key, an HS256 token signed with that PEM as secret is refused', async () => {
  const { publicKey, privateKey } = await generateKeyPair('RS256');
  const pem = await exportSPKI(publicKey);
  const app = await startApp(db.url, {
    SUBSCRIBER_JWT_PUBLIC_KEY: pem,
    SUBSCRIBER_JWT_ALGORITHM: 'RS256',
  });
  try {
    const room = freshRoom();
    const claims = { exp: nowS() + 3600, channels: ['room:*'] };
    const rs = await new SignJWT(claims).setProtectedHeader({ alg: 'RS256' }).sign(privateKey);
    const confused = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256' })
      .sign(new TextEncoder().encode(pem));
    const target = streamTarget('sse', [room]);
    await assertRefusedEverywhere(
      app.url,
      target,
      bearer(confused),
      invalidToken(/not signed with RS256/),
      confused,
    );
    await assertRefusedEverywhere(
      app.url,
      target,
      bearer(unsignedToken(claims)),
      invalidToken(/not signed with RS256/),
    );
    // The genuine RS256 token on the same server reads the room.
    const client = await openServed(app.url, target, bearer(rs));
    try {
      const ids = await insertIn(room, 'signed with the private key');
      await waitForRows(client, ids);
      assert.deepEqual(rowsOf(client), ids);
    } finally {
      client.close();
    }
  } finally {
    await app.close();
  }
});

test('at its token’s exp a stream ends with its closing frame; a fresh token resumes it, nothing lost or repeated', async () => {
  const app = await startApp(db.url, HS_ENV);
  try {
    const room = freshRoom();
    // exp is in whole seconds: 2 to 3 s from now.
    const exp = nowS() + 3;
    const short = await token({ exp });
    const clients = new Map<Format, StreamClient>();
    for (const format of FORMATS) {
      clients.set(format, await openServed(app.url, streamTarget(format, [room]), bearer(short)));
    }
    const before = await insertIn(room, 'before 1', 'before 2');
    for (const client of clients.values()) await waitForRows(client, before);
    const endedAt = new Map<Format, number>();
    for (const [format, client] of clients) {
      client.ended.then(() => endedAt.set(format, Date.now())).catch(() => undefined);
    }
    await waitUntil(() => endedAt.size === FORMATS.length, 'the streams to end', ENDED_WITHIN_MS);
    for (const [format, client] of clients) {
      // `ended` resolves on a clean end of the body only (an abort rejects it).
      await client.ended;
      assert.ok(client.text.endsWith(CLOSING[format]), `${format} ends with its closing frame`);
      assert.deepEqual(rowsOf(client), before, `${format}: the rows before the end`);
      // Not before the token's exp (same clock as the server's: it runs in this process).
      assert.ok((endedAt.get(format) ?? 0) >= exp * 1000, `${format} lived until exp`);
    }
    const expired = await figures(app.url);
    for (const format of FORMATS) {
      assert.equal(expired.get(`rowcast_streams_expired_total{transport="${format}"}`), 1, format);
    }
    assert.equal(app.logs.events('stream.expired').length, 3);

    // Rows written while the clients were away, then a reconnect with a fresh token and the last
    // id they got, as EventSource does (Last-Event-ID), then live rows.
    const meanwhile = await insertIn(room, 'meanwhile 1', 'meanwhile 2');
    await db.waitMarked(meanwhile);
    const fresh = await token();
    const resumed = new Map<Format, StreamClient>();
    try {
      for (const format of FORMATS) {
        resumed.set(
          format,
          await openServed(app.url, streamTarget(format, [room]), {
            ...bearer(fresh),
            'Last-Event-ID': before[1] as string,
          }),
        );
      }
      // The replayed streams are in the hub once their replay is written.
      await waitUntil(() => app.app.hub.size === FORMATS.length, 'the resumed streams');
      const live = await insertIn(room, 'live');
      for (const [format, client] of resumed) {
        await waitForRows(client, live);
        assert.deepEqual(rowsOf(client), [...meanwhile, ...live], format);
        const all = [
          ...(clients.has(format) ? rowsOf(clients.get(format) as StreamClient) : []),
          ...rowsOf(client),
        ];
        assert.deepEqual(all, [...before, ...meanwhile, ...live], `${format}: each row once`);
      }
    } finally {
      for (const client of resumed.values()) client.close();
    }
  } finally {
    await app.close();
  }
});

describe('a cluster of two workers', () => {
  let server: TestCluster;
  before(async () => {
    server = await startCluster(db.url, 2, HS_ENV);
    await waitUntil(
      () => Object.values(cluster.workers ?? {}).filter((w) => w?.isConnected()).length === 2,
      'two workers',
    );
  });
  after(async () => {
    await server?.close();
  });

  test('refuses and serves as one process does', async () => {
    const room = freshRoom();
    const before401 = await figure(server.url, 'rowcast_auth_refusals_total{status="401"}');
    const before403 = await figure(server.url, 'rowcast_auth_refusals_total{status="403"}');
    await assertRefusedEverywhere(server.url, streamTarget('sse', [room]), {}, NO_TOKEN);
    await assertRefusedEverywhere(
      server.url,
      streamTarget('html', [room]),
      bearer(await token({ exp: nowS() - 60 })),
      invalidToken(/has expired/),
    );
    await assertRefusedEverywhere(
      server.url,
      streamTarget('ndjson', []),
      bearer(await token()),
      notGranted('*'),
    );
    // The figures of every worker, summed by the primary.
    await waitUntil(async () => {
      const now = await figures(server.url);
      return (
        now.get('rowcast_auth_refusals_total{status="401"}') === before401 + 6 &&
        now.get('rowcast_auth_refusals_total{status="403"}') === before403 + 3
      );
    }, 'the refusals counted over the workers');

    const jwt = await token();
    const opened = server.logs.events('stream.open').length;
    const clients = await Promise.all(
      // Enough streams that both workers hold some.
      Array.from({ length: 6 }, (_, i) =>
        openServed(server.url, streamTarget(FORMATS[i % 3] as Format, [room]), bearer(jwt)),
      ),
    );
    try {
      await waitUntil(
        () => server.logs.events('stream.open').length === opened + clients.length,
        'the workers to hold the streams',
      );
      const ids = await insertRows([
        ['room:other', 'not this one'],
        [room, 'one'],
        [room, 'two'],
      ]);
      for (const client of clients) {
        await waitForRows(client, ids.slice(1));
        assert.deepEqual(rowsOf(client), ids.slice(1));
      }
    } finally {
      for (const client of clients) client.close();
    }
  });

  test('ends a stream at its token’s exp; a fresh token resumes it through the primary', async () => {
    const room = freshRoom();
    const expiredBefore = await figure(
      server.url,
      'rowcast_streams_expired_total{transport="sse"}',
    );
    const opened = server.logs.events('stream.open').length;
    const exp = nowS() + 3;
    const client = await openServed(
      server.url,
      streamTarget('sse', [room]),
      bearer(await token({ exp })),
    );
    try {
      await waitUntil(
        () => server.logs.events('stream.open').length === opened + 1,
        'the worker to hold the stream',
      );
      const before = await insertIn(room, 'first');
      await waitForRows(client, before);
      let endedAt = 0;
      client.ended.then(() => {
        endedAt = Date.now();
      });
      await waitUntil(() => endedAt > 0, 'the stream to end', ENDED_WITHIN_MS);
      assert.ok(client.text.endsWith(CLOSING.sse), 'the SSE closing comment');
      // The worker runs on this machine's clock.
      assert.ok(endedAt >= exp * 1000, 'the stream lived until exp');
      assert.deepEqual(rowsOf(client), before);
      await waitUntil(
        async () =>
          (await figure(server.url, 'rowcast_streams_expired_total{transport="sse"}')) ===
          expiredBefore + 1,
        'the expiry counted',
      );

      const meanwhile = await insertIn(room, 'while away');
      await db.waitMarked(meanwhile);
      const reopened = server.logs.events('stream.open').length;
      const resumed = await openServed(server.url, streamTarget('sse', [room]), {
        ...bearer(await token()),
        'Last-Event-ID': before[0] as string,
      });
      try {
        await waitForRows(resumed, meanwhile);
        await waitUntil(
          () => server.logs.events('stream.open').length === reopened + 1,
          'the resumed stream in its worker’s hub',
        );
        const live = await insertIn(room, 'live');
        await waitForRows(resumed, live);
        assert.deepEqual(rowsOf(resumed), [...meanwhile, ...live]);
      } finally {
        resumed.close();
      }
    } finally {
      client.close();
    }
  });
});
