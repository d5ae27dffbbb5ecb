import assert from 'node:assert/strict';
import cluster from 'node:cluster';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { after, before, test } from 'node:test';
import mysql from 'mysql2/promise';
import { startCluster, type TestApp, withApp } from './helpers/app.js';
import {
  type ChannelFrame,
  type ChannelRow,
  channelQuery,
  channelRows,
  expectedFrames,
  framesOf,
  insertTo,
  reads,
  rowIdsOf,
  seededRandom,
} from './helpers/channels.js';
import { connectionOptions, createTestDb, type TestDb } from './helpers/db.js';
import { startGateProxy } from './helpers/gate.js';
import { withDbProxy } from './helpers/proxy.js';
import { request } from './helpers/request.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { tcpSockets, waitForSockets } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// Channels (issue 10), on real sockets against MariaDB: a stream asks for `?channel=NAME`
// (repeatable, `NAME*` for a prefix) and gets exactly the rows of those channels, once each, in
// seq order (docs/delivery.md 2); a resume replays only its channels' rows after its row, with a
// gap frame when REPLAY_LIMIT cuts them (docs/delivery.md 3, 4); and the tick does not grow with
// the number of channels (docs/delivery.md 7).

const ROUTES = ['/stream', '/events', '/stream.ndjson'] as const;
type Route = (typeof ROUTES)[number];
const TOKEN = 'channels-token-0123456789abcdef';
// No heartbeats: nothing arrives that the test did not cause.
const QUIET = { HEARTBEAT_MS: '3600000' };
/** The two channels of the resume tests. */
const BOTH = ['room:a', 'job:1'] as const;

let db: TestDb;
/** A second connection: rows come from two writers, as from two programs. */
let writer: mysql.Connection;
before(async () => {
  db = await createTestDb('channels', { withTable: true });
  writer = await mysql.createConnection({ ...connectionOptions(), database: db.name });
});
after(async () => {
  await writer.end();
  await db.drop();
});

/** A stream of some channels: its route, its `channel` parameters, the client. */
interface Subscriber {
  readonly route: Route;
  readonly params: readonly string[];
  readonly client: StreamClient;
  readonly what: string;
}

/**
 * Opens `route` for these channels; `since` resumes after that row id, as each format's client
 * does it: EventSource sends Last-Event-ID, the others put since= in the URL.
 */
async function subscribe(
  base: URL,
  route: Route,
  params: readonly string[],
  since?: string,
): Promise<Subscriber> {
  const resume = since !== undefined && route !== '/events' ? { since } : undefined;
  const headers: Record<string, string> =
    since !== undefined && route === '/events' ? { 'Last-Event-ID': since } : {};
  const client = await openStream(new URL(route + channelQuery(params, resume), base), headers);
  const what = `${route}${channelQuery(params)}${since === undefined ? '' : ` from ${since}`}`;
  assert.equal(client.res.statusCode, 200, what);
  return { route, params, client, what };
}

/** Waits until every one of `ids` has a seq; their rows in seq order. */
async function claimed(ids: readonly string[], table = 'msg'): Promise<ChannelRow[]> {
  return waitUntil(async () => {
    const rows = await channelRows(db.conn, ids, table);
    return rows.length === ids.length && rows;
  }, `${ids.length} rows claimed`);
}

/** The claimed rows after row `since` in seq order (the whole table, every channel). */
async function rowsAfter(since: string, table = 'msg'): Promise<ChannelRow[]> {
  const all = await channelRows(db.conn, undefined, table);
  const from = all.find((row) => row.id === since);
  assert.ok(from !== undefined, `row ${since} has a seq`);
  return all.filter((row) => row.seq > from.seq);
}

/** The rows among `rows` the subscriber's channels read. */
const own = (sub: Subscriber, rows: readonly ChannelRow[]) =>
  rows.filter((row) => reads(sub.params, row.channel));

/**
 * Asserts that the stream shows exactly `rows` (after `gap` when given) and nothing else: waits
 * until as many frames have arrived, then compares them all (a timeout compares what came).
 */
async function assertReceived(
  sub: Subscriber,
  rows: readonly ChannelRow[],
  options: { gap?: { since: string; reason: string }; note?: string } = {},
): Promise<void> {
  const want: ChannelFrame[] = [
    ...(options.gap === undefined ? [] : [{ gap: options.gap }]),
    ...expectedFrames(sub.client, rows),
  ];
  const what = `${sub.what}${options.note === undefined ? '' : ` (${options.note})`}`;
  await waitUntil(
    () => framesOf(sub.client).length >= want.length,
    `${want.length} frames on ${what}`,
    20_000,
  ).catch(() => undefined);
  assert.deepEqual(framesOf(sub.client), want, what);
}

/**
 * assertReceived for each stream and its share of `rows`, those that read the newest row first:
 * once they have it, every earlier write has been made to every stream, so a row sent where it
 * should not have been is in that stream's body by the time it is compared.
 */
async function assertEach(
  subs: readonly Subscriber[],
  rows: readonly ChannelRow[],
  note?: string,
): Promise<void> {
  const newest = rows[rows.length - 1];
  const first = subs.filter((sub) => newest !== undefined && reads(sub.params, newest.channel));
  const options = note === undefined ? {} : { note };
  for (const sub of first) await assertReceived(sub, own(sub, rows), options);
  for (const sub of subs) {
    if (!first.includes(sub)) await assertReceived(sub, own(sub, rows), options);
  }
}

/** Rows of (content, channel), the content tagged so a failure shows where a row came from. */
const rowsOf = (tag: string, channels: readonly string[]): [string, string][] =>
  channels.map((channel, i) => [`${tag} ${i}`, channel]);

/** The last row id a stream has received. */
function lastId(sub: Subscriber): string {
  const ids = rowIdsOf(sub.client);
  const id = ids[ids.length - 1];
  assert.ok(id !== undefined, `${sub.what} has a row`);
  return id;
}

async function closeAll(app: TestApp, subs: readonly Subscriber[]): Promise<void> {
  for (const sub of subs) sub.client.close();
  await waitUntil(() => app.app.hub.size === 0, 'the streams to leave the hub');
}

// ---------------------------------------------------------------------------------------------

/** Channels rows go to: the subscribed ones, the implicit '' and near misses of each. */
const CHANNELS = ['room:a', 'room:b', 'job:1', '', 'room:ab', 'roomx', 'job:10'] as const;
/** What the streams ask for: single channels, a prefix, every row, and two channels at once. */
const SUBSCRIPTIONS: readonly (readonly string[])[] = [
  ['room:a'],
  ['room:b'],
  ['job:1'],
  ['room:*'],
  [],
  ['room:a', 'job:1'],
];

test('each stream gets exactly the rows of its channels, once each, in seq order, in all three formats', async () => {
  const seed = Date.now() % 2 ** 31;
  const random = seededRandom(seed);
  const pick = () => CHANNELS[Math.floor(random() * CHANNELS.length)] as string;
  // Each writer's statements, 1 to 8 rows each, planned up front from the seed.
  const plan = (name: string) =>
    Array.from({ length: 8 }, (_, s) =>
      Array.from({ length: 1 + Math.floor(random() * 8) }, (_, i): [string, string] => [
        `${name} ${s}.${i}`,
        pick(),
      ]),
    );
  const plans = [plan('one'), plan('two')];
  const note = `seed ${seed}`;

  await withApp(db.url, QUIET, async (app) => {
    const subs: Subscriber[] = [];
    for (const route of ROUTES) {
      for (const params of SUBSCRIPTIONS) subs.push(await subscribe(app.url, route, params));
    }
    await waitUntil(() => app.app.hub.size === subs.length, 'every stream in the hub');

    // Two writers at once, each statement a transaction of its own.
    const inserted = (
      await Promise.all(
        [db.conn, writer].map(async (conn, w) => {
          const ids: string[] = [];
          for (const rows of plans[w] ?? []) ids.push(...(await insertTo(conn, rows)));
          return ids;
        }),
      )
    ).flat();
    // Then one row per channel, in one statement: every stream's last row comes after all the
    // others, so a wrong row sent earlier is in its body by the time its last row is.
    inserted.push(...(await insertTo(db.conn, rowsOf('last', CHANNELS))));
    const table = await claimed(inserted);
    await assertEach(subs, table, note);
    // The prefix reads room:ab but not roomx; room:a does not read room:ab; job:1 not job:10.
    const prefix = subs.find((sub) => sub.params.join() === 'room:*') as Subscriber;
    assert.deepEqual([...new Set(own(prefix, table).map((row) => row.channel))].sort(), [
      'room:a',
      'room:ab',
      'room:b',
    ]);

    // Nothing more comes: a row of '' reaches the streams of every row, and no other.
    const late = await claimed(await insertTo(writer, [['late', '']]));
    await assertEach(subs, [...table, ...late], `${note}, late row`);
  });
});

// ---------------------------------------------------------------------------------------------

/** Rows to both channels of BOTH and to others, interleaved. */
const MIXED = ['room:a', 'job:1', 'room:b', 'job:1', '', 'room:a', 'job:10', 'room:a', 'job:1'];

test('two channels on one stream: rows interleave in seq order; one Last-Event-ID / since= resumes both exactly', async () => {
  await withApp(db.url, QUIET, async (app) => {
    const subs: Subscriber[] = [];
    for (const route of ROUTES) subs.push(await subscribe(app.url, route, BOTH));
    await waitUntil(() => app.app.hub.size === subs.length, 'the streams in the hub');
    // From both writers, in separate statements (separate batches, as it happens).
    const live = await claimed([
      ...(await insertTo(db.conn, rowsOf('live', MIXED.slice(0, 4)))),
      ...(await insertTo(writer, rowsOf('live', MIXED.slice(4)))),
    ]);
    for (const sub of subs) await assertReceived(sub, own(sub, live));
    // The stream's rows switch between the two channels (in seq order, as the table has them).
    const channels = own(subs[0] as Subscriber, live).map((row) => row.channel);
    assert.deepEqual(channels, ['room:a', 'job:1', 'job:1', 'room:a', 'room:a', 'job:1']);

    const resumeFrom = subs.map(lastId);
    await closeAll(app, subs);
    // While the clients are away: rows to both channels and to others, from both writers.
    await claimed([
      ...(await insertTo(writer, rowsOf('away', ['job:1', 'room:b', 'room:a', '', 'job:10']))),
      ...(await insertTo(db.conn, rowsOf('away', ['room:a', 'room:ab', 'job:1', 'room:a']))),
    ]);

    const resumed: Subscriber[] = [];
    for (const [i, route] of ROUTES.entries()) {
      resumed.push(await subscribe(app.url, route, BOTH, resumeFrom[i]));
    }
    // Live rows right away: some may come while the replay is being read.
    await claimed(await insertTo(writer, rowsOf('after', ['room:b', 'job:1', 'room:a', ''])));
    for (const [i, sub] of resumed.entries()) {
      // Exactly the rows of both channels after the row: nothing lost, nothing twice, no gap.
      const after = own(sub, await rowsAfter(resumeFrom[i] as string));
      assert.equal(after.length, 5 + 2, 'away and live rows of both channels');
      await assertReceived(sub, after);
    }
    await waitUntil(() => app.app.hub.size === resumed.length, 'the resumed streams in the hub');
    for (const sub of resumed) sub.client.close();
  });
});

test('two channels past REPLAY_LIMIT: a limit gap, then the newest rows of those channels only', async () => {
  const limit = 5;
  await withApp(db.url, { ...QUIET, REPLAY_LIMIT: String(limit) }, async (app) => {
    const first: Subscriber[] = [];
    for (const route of ROUTES) first.push(await subscribe(app.url, route, BOTH));
    await waitUntil(() => app.app.hub.size === first.length, 'the streams in the hub');
    const live = await claimed(await insertTo(db.conn, rowsOf('live', MIXED)));
    for (const sub of first) await assertReceived(sub, own(sub, live));
    const fromLive = first.map(lastId);
    await closeAll(app, first);

    // Exactly REPLAY_LIMIT rows of the two channels, and many more of others, most of them newer:
    // rows of other channels do not count against the limit, so this resume is exact.
    const others = Array.from({ length: 15 }, (_, i) => ['room:b', '', 'job:10'][i % 3] as string);
    await claimed([
      ...(await insertTo(db.conn, rowsOf('five', ['room:a', 'room:b', 'job:1', '', 'room:a']))),
      ...(await insertTo(writer, rowsOf('five', ['job:10', 'job:1', 'room:a', ...others]))),
    ]);
    const exact: Subscriber[] = [];
    for (const [i, route] of ROUTES.entries()) {
      exact.push(await subscribe(app.url, route, BOTH, fromLive[i]));
    }
    for (const [i, sub] of exact.entries()) {
      const after = own(sub, await rowsAfter(fromLive[i] as string));
      assert.equal(after.length, limit);
      await assertReceived(sub, after, { note: 'as many rows as REPLAY_LIMIT' });
    }
    const fromFive = exact.map(lastId);
    await closeAll(app, exact);

    // Nine rows of the two channels among others, and more others after them: the newest five of
    // the two channels, after a limit gap.
    await claimed([
      ...(await insertTo(writer, rowsOf('nine', ['job:1', 'room:a', '', 'job:1', 'room:ab']))),
      ...(await insertTo(db.conn, rowsOf('nine', ['room:a', 'job:1', 'roomx', 'room:a']))),
      ...(await insertTo(writer, rowsOf('nine', ['job:1', 'room:b', 'room:a', 'job:1']))),
      ...(await insertTo(db.conn, rowsOf('nine', others))),
    ]);
    const cut: Subscriber[] = [];
    for (const [i, route] of ROUTES.entries()) {
      cut.push(await subscribe(app.url, route, BOTH, fromFive[i]));
    }
    const replayed: ChannelRow[][] = [];
    for (const [i, sub] of cut.entries()) {
      const away = own(sub, await rowsAfter(fromFive[i] as string));
      assert.equal(away.length, 9);
      replayed.push(away.slice(-limit));
      await assertReceived(sub, away.slice(-limit), {
        gap: { since: fromFive[i] as string, reason: 'limit' },
      });
    }
    // Then live, after the replay: nothing twice.
    await waitUntil(() => app.app.hub.size === cut.length, 'the resumed streams in the hub');
    const tail = await claimed(await insertTo(db.conn, rowsOf('tail', ['room:b', 'room:a'])));
    for (const [i, sub] of cut.entries()) {
      await assertReceived(sub, [...(replayed[i] ?? []), ...own(sub, tail)], {
        gap: { since: fromFive[i] as string, reason: 'limit' },
      });
    }
    await closeAll(app, cut);
  });
});

test('names are matched byte for byte, live and on resume alike, whatever the column collation', async () => {
  // Each a near miss of the others: another case, a trailing space (equal under PAD SPACE
  // collations), `_` (a LIKE wildcard), a prefix that is a whole name.
  const channels = ['Case', 'case', 'CASE', 'Case ', 'job_1', 'jobx1', 'job_', 'Room:a', 'room:a'];
  const subscriptions: string[][] = [
    ['Case'],
    ['case'],
    ['job_*'],
    ['Room:*', 'room:a'],
    ['room:*'],
  ];
  // A column an operator added by hand, in the table's default collation: case-insensitive.
  await db.query(`CREATE TABLE ci_msg (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    content MEDIUMTEXT NOT NULL,
    flag TINYINT NOT NULL DEFAULT 0,
    channel VARCHAR(191) COLLATE utf8mb4_general_ci NOT NULL DEFAULT '',
    KEY channel_id (channel, id)
  ) DEFAULT CHARSET = utf8mb4`);
  for (const table of ['msg', 'ci_msg']) {
    await withApp(db.url, { ...QUIET, MSG_TABLE: table }, async (app) => {
      const first: Subscriber[] = [];
      for (const route of ROUTES) {
        for (const params of subscriptions) first.push(await subscribe(app.url, route, params));
      }
      await waitUntil(() => app.app.hub.size === first.length, 'the streams in the hub');
      // A row of every channel first, so that every stream has a row to resume from.
      const live = await claimed(await insertTo(db.conn, rowsOf('live', channels), table), table);
      for (const sub of first) await assertReceived(sub, own(sub, live), { note: table });
      const from = first.map(lastId);
      await closeAll(app, first);
      const away = await insertTo(writer, rowsOf('away', [...channels].reverse()), table);
      await claimed(away, table);
      const resumed: Subscriber[] = [];
      for (const [i, sub] of first.entries()) {
        resumed.push(await subscribe(app.url, sub.route, sub.params, from[i]));
      }
      for (const [i, sub] of resumed.entries()) {
        const after = own(sub, await rowsAfter(from[i] as string, table));
        assert.ok(after.length > 0);
        await assertReceived(sub, after, { note: table });
      }
      await closeAll(app, resumed);
    });
  }
});

test('live rows that come while a replay is read: the resumed stream gets those of its channels only', async () => {
  const sockets = tcpSockets();
  const gate = await startGateProxy();
  try {
    await withApp(gate.url(db.name), QUIET, async (app) => {
      for (const route of ROUTES) {
        const first = await subscribe(app.url, route, BOTH);
        await waitUntil(() => app.app.hub.size === 1, 'the stream in the hub');
        const live = await claimed(await insertTo(db.conn, rowsOf('live', MIXED)));
        await assertReceived(first, own(first, live));
        const from = lastId(first);
        await closeAll(app, [first]);
        await claimed(await insertTo(writer, rowsOf('away', ['job:1', 'room:b', 'room:a', ''])));

        // The replay's first statement (where row `from` stands) waits in the proxy while rows of
        // both channels and of others are claimed, tailed and handed over.
        const hold = gate.hold(/^SELECT \d+ AS id, p\.seq/);
        let held: string | undefined;
        void hold.held.then((sql) => {
          held = sql;
        });
        const resumed = await subscribe(app.url, route, BOTH, from);
        await waitUntil(() => held, 'the replay statement held in the proxy');
        const meanwhile = await insertTo(
          writer,
          rowsOf('meanwhile', ['room:b', 'job:1', '', 'room:a', 'job:10']),
        );
        const lastMeanwhile = meanwhile[meanwhile.length - 1];
        await waitUntil(
          () => app.logs.events('poll.batch').some((entry) => entry.lastId === lastMeanwhile),
          'the rows tailed while the replay waits',
        );
        assert.equal(app.app.hub.size, 0, 'the resumed stream still waits for its replay');
        hold.release();
        const after = own(resumed, await rowsAfter(from));
        assert.equal(after.length, 2 + 2, 'away and meanwhile rows of both channels');
        await assertReceived(resumed, after);
        await closeAll(app, [resumed]);
      }
    });
    await waitForSockets(sockets); // before the proxy closes (see waitForSockets)
  } finally {
    await gate.close();
  }
});

// ---------------------------------------------------------------------------------------------

function workerPids(): number[] {
  return Object.values(cluster.workers ?? {}).flatMap((worker) =>
    worker?.isConnected() && worker.process.pid !== undefined ? [worker.process.pid] : [],
  );
}

test('WORKERS=2: streams of two channels on both workers resume exactly, and past REPLAY_LIMIT with a gap', {
  timeout: 90_000,
}, async () => {
  const limit = 6;
  const server = await startCluster(db.url, 2, { ...QUIET, REPLAY_LIMIT: String(limit) });
  const opened = () => server.logs.events('stream.open');
  const closed = () => server.logs.events('stream.close');
  /** Opens two streams per route (resuming from `since[i]`); the workers that hold them. */
  const openAll = async (since?: readonly string[]) => {
    const before = opened().length;
    const subs: Subscriber[] = [];
    for (const route of ROUTES) {
      for (let k = 0; k < 2; k++) {
        subs.push(await subscribe(server.url, route, BOTH, since?.[subs.length]));
      }
    }
    return { subs, before };
  };
  /** Waits until the streams opened after `before` have joined their workers' hubs. */
  const workersOf = async (before: number, n: number) => {
    const entries = await waitUntil(() => {
      const now = opened().slice(before);
      return now.length >= n && now;
    }, `${n} stream.open lines`);
    return new Set(entries.map((entry) => entry.worker));
  };
  const closeSubs = async (subs: readonly Subscriber[]) => {
    const before = closed().length;
    for (const sub of subs) sub.client.close();
    await waitUntil(() => closed().length >= before + subs.length, 'the streams to close');
  };
  try {
    await waitUntil(() => workerPids().length === 2, 'two workers');
    const first = await openAll();
    assert.equal((await workersOf(first.before, first.subs.length)).size, 2, 'on both workers');
    const live = await claimed([
      ...(await insertTo(db.conn, rowsOf('live', MIXED.slice(0, 5)))),
      ...(await insertTo(writer, rowsOf('live', MIXED.slice(5)))),
    ]);
    for (const sub of first.subs) await assertReceived(sub, own(sub, live));
    const fromLive = first.subs.map(lastId);
    await closeSubs(first.subs);

    // Away: four rows of the two channels among others; each stream resumes on some worker.
    await claimed([
      ...(await insertTo(writer, rowsOf('away', ['job:1', 'room:b', 'room:a', '', 'job:10']))),
      ...(await insertTo(db.conn, rowsOf('away', ['room:a', 'room:ab', 'job:1']))),
    ]);
    const exact = await openAll(fromLive);
    // A live row right away: it may come while the replays are read.
    await claimed(await insertTo(writer, rowsOf('after', ['room:a', 'room:b'])));
    for (const [i, sub] of exact.subs.entries()) {
      const rows = own(sub, await rowsAfter(fromLive[i] as string));
      assert.equal(rows.length, 4 + 1);
      await assertReceived(sub, rows);
    }
    assert.equal((await workersOf(exact.before, exact.subs.length)).size, 2, 'on both workers');
    const fromExact = exact.subs.map(lastId);
    await closeSubs(exact.subs);

    // Away: ten rows of the two channels, more of others after them.
    const others = Array.from({ length: 12 }, (_, i) => ['room:b', '', 'roomx'][i % 3] as string);
    await claimed([
      ...(await insertTo(db.conn, rowsOf('ten', ['job:1', 'room:a', 'room:b', 'job:1', 'room:a']))),
      ...(await insertTo(writer, rowsOf('ten', ['', 'room:a', 'job:1', 'job:1', 'room:a']))),
      ...(await insertTo(db.conn, rowsOf('ten', ['job:10', 'room:a', 'job:1', ...others]))),
    ]);
    const cut = await openAll(fromExact);
    for (const [i, sub] of cut.subs.entries()) {
      const rows = own(sub, await rowsAfter(fromExact[i] as string));
      assert.equal(rows.length, 10);
      await assertReceived(sub, rows.slice(-limit), {
        gap: { since: fromExact[i] as string, reason: 'limit' },
      });
    }
    assert.equal((await workersOf(cut.before, cut.subs.length)).size, 2, 'on both workers');
    // The workers read those replays through the primary, for their streams' channels only.
    const replays = server.logs.events('stream.replay').filter((entry) => entry.gap === 'limit');
    assert.deepEqual(new Set(replays.map((entry) => entry.channels)), new Set(['job:1,room:a']));
    assert.equal(new Set(replays.map((entry) => entry.worker)).size, 2);
    await closeSubs(cut.subs);
  } finally {
    await server.close();
  }
});

// ---------------------------------------------------------------------------------------------

/** A whole answer read off a raw connection: status, headers (lower-case names), body. */
interface RawAnswer {
  readonly status: number;
  readonly headers: Map<string, string>;
  readonly body: string;
}

/** The complete answers (with Content-Length bodies) at the start of `text`. */
function parseAnswers(text: string): RawAnswer[] {
  const answers: RawAnswer[] = [];
  let rest = text;
  for (;;) {
    const end = rest.indexOf('\r\n\r\n');
    if (end === -1) return answers;
    const [statusLine, ...lines] = rest.slice(0, end).split('\r\n');
    const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(statusLine ?? '')?.[1]);
    const headers = new Map(
      lines.map((line) => {
        const colon = line.indexOf(':');
        return [line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim()] as const;
      }),
    );
    const length = Number(headers.get('content-length'));
    if (!Number.isInteger(length) || rest.length < end + 4 + length) return answers;
    answers.push({ status, headers, body: rest.slice(end + 4, end + 4 + length) });
    rest = rest.slice(end + 4 + length);
  }
}

/**
 * GET `target` as the second request of a kept-alive connection: the front serves only first
 * requests on bare sockets, so this one reaches node:http (see test/http.test.ts).
 */
async function secondRequest(base: URL, target: string): Promise<RawAnswer> {
  const socket = net.connect(Number(base.port), base.hostname);
  let received = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    received += chunk;
  });
  socket.on('error', () => undefined);
  try {
    socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitUntil(() => parseAnswers(received).length === 1, 'the /healthz answer');
    assert.equal(parseAnswers(received)[0]?.status, 200);
    socket.write(`GET ${target} HTTP/1.1\r\nHost: x\r\n\r\n`);
    const [, answer] = await waitUntil(() => {
      const answers = parseAnswers(received);
      return answers.length === 2 && answers;
    }, `the answer to ${target} on a kept-alive connection`);
    return answer as RawAnswer;
  } finally {
    socket.destroy();
  }
}

/**
 * One request on a connection of its own: the status and, unless it opened a stream (200, which
 * would never end), the whole body.
 */
async function refusal(url: URL, method = 'GET'): Promise<{ status: number; body: string }> {
  const req = http.request(url, { method, agent: false }).end();
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  if (res.statusCode === 200) {
    req.destroy();
    return { status: 200, body: '' };
  }
  let body = '';
  res.setEncoding('utf8');
  for await (const chunk of res) body += chunk;
  return { status: res.statusCode ?? 0, body };
}

test('bad channel names and too many channels: 400 naming the problem, both ways in', async () => {
  const long = 'x'.repeat(192);
  const refused: [params: string[], body: string][] = [
    [['a b'], 'channel "a b": expected 1 to 191 letters, digits or _ . : @ / = -'],
    [[long], `channel "${long}": expected 1 to 191`],
    [['a*b'], 'channel "a*b": expected 1 to 191'],
    [['a"b'], 'channel "a\\"b": expected 1 to 191'],
    [['room:a', 'bad name'], 'channel "bad name": expected 1 to 191'],
    [['room:a', 'room:b', 'job:1', 'job:2'], '4 channels asked for; at most 3 per stream'],
  ];
  // At the bounds: 191 characters, exactly MAX_CHANNELS_PER_STREAM channels, a prefix, `*`.
  const accepted: string[][] = [
    ['y'.repeat(191)],
    ['room:a', 'room:b', 'job:1'],
    ['room:*'],
    ['*'],
  ];
  await withApp(db.url, { ...QUIET, MAX_CHANNELS_PER_STREAM: '3' }, async (app) => {
    for (const route of ROUTES) {
      for (const [params, body] of refused) {
        const target = route + channelQuery(params);
        // A plain GET: read by the front, which leaves the refusal to node:http.
        const plain = await refusal(new URL(target, app.url));
        assert.equal(plain.status, 400, target);
        assert.ok(plain.body.includes(body), `${target}: ${plain.body}`);
        // node:http from the start: a HEAD (no body), a GET on a kept-alive connection.
        const head = await refusal(new URL(target, app.url), 'HEAD');
        assert.equal(head.status, 400, `HEAD ${target}`);
        assert.equal(head.body, '');
        const kept = await secondRequest(app.url, target);
        assert.equal(kept.status, 400, `kept-alive ${target}`);
        assert.equal(kept.headers.get('content-type'), 'text/plain; charset=utf-8');
        assert.ok(kept.body.includes(body), `kept-alive ${target}: ${kept.body}`);
      }
      assert.equal(app.app.hub.size, 0, 'no refused request opened a stream');
      for (const params of accepted) {
        const target = route + channelQuery(params);
        const head = await request(new URL(target, app.url), 'HEAD');
        assert.equal(head.status, 200, `HEAD ${target}`);
        const sub = await subscribe(app.url, route, params);
        await waitUntil(() => app.app.hub.size === 1, `${target} in the hub`);
        sub.client.close();
        await waitUntil(() => app.app.hub.size === 0, `${target} to leave the hub`);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------

async function publish(base: URL, body: BodyInit, type?: string) {
  const headers: Record<string, string> = { Authorization: `Bearer ${TOKEN}` };
  if (type !== undefined) headers['Content-Type'] = type;
  const res = await fetch(new URL('/messages', base), { method: 'POST', headers, body });
  return { status: res.status, text: await res.text() };
}
/** The row id of a 201 answer. */
const idOf = (answer: { text: string }) => String((JSON.parse(answer.text) as { id: number }).id);
const json = (value: unknown) => [JSON.stringify(value), 'application/json'] as const;

async function countRows(table: string): Promise<number> {
  const [row] = await db.query<{ n: unknown }[]>(`SELECT COUNT(*) AS n FROM \`${table}\``);
  return Number(row?.n);
}

test('POST /messages with a channel: the row lands in it, a stream of another channel never sees it', async () => {
  await withApp(db.url, { ...QUIET, PUBLISH_TOKEN: TOKEN }, async (app) => {
    const subs = [
      await subscribe(app.url, '/stream.ndjson', ['news']),
      await subscribe(app.url, '/stream', ['news']),
      await subscribe(app.url, '/events', ['news']),
      await subscribe(app.url, '/stream.ndjson', ['sport']),
      await subscribe(app.url, '/stream', ['sport']),
      await subscribe(app.url, '/stream.ndjson', []),
      await subscribe(app.url, '/stream', []),
    ];
    await waitUntil(() => app.app.hub.size === subs.length, 'the streams in the hub');
    const ids: string[] = [];
    for (const [body, type] of [
      json({ content: 'goal for news', channel: 'news' }),
      [new URLSearchParams({ content: 'a form for sport', channel: 'sport' }), undefined] as const,
      json({ content: 'no channel' }),
      json({ content: 'null channel', channel: null }),
      [new URLSearchParams({ content: 'form, no channel' }), undefined] as const,
    ]) {
      const answer = await publish(app.url, body, type);
      assert.equal(answer.status, 201, answer.text);
      ids.push(idOf(answer));
    }
    const rows = await claimed(ids);
    assert.deepEqual(
      rows.map((row) => row.channel),
      ['news', 'sport', '', '', ''],
      'each row in its channel, the implicit one without a channel',
    );
    for (const sub of subs) await assertReceived(sub, own(sub, rows));

    const before = await countRows('msg');
    const long = 'n'.repeat(192);
    for (const [body, type, why] of [
      [...json({ content: 'x', channel: 'bad name' }), 'channel "bad name": expected 1 to 191'],
      [...json({ content: 'x', channel: long }), `channel "${long}"`],
      [...json({ content: 'x', channel: 'news*' }), 'channel "news*"'],
      [...json({ content: 'x', channel: 7 }), 'expected "channel" to be a string'],
      [new URLSearchParams({ content: 'x', channel: 'a*b' }), undefined, 'channel "a*b"'],
    ] as const) {
      const answer = await publish(app.url, body, type);
      assert.equal(answer.status, 400, `${String(body)}: ${answer.text}`);
      assert.ok(answer.text.includes(why), answer.text);
    }
    assert.equal(await countRows('msg'), before, 'nothing inserted');
    // Still nothing more on any stream: one more row of news reaches only the news streams.
    const next = await publish(app.url, ...json({ content: 'later news', channel: 'news' }));
    const later = await claimed([idOf(next)]);
    await assertEach(subs, [...rows, ...later]);
  });
});

test('a table without a channel column: asking for or publishing to a channel is 400, the firehose gets everything', async () => {
  await db.query(`CREATE TABLE plain (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    content MEDIUMTEXT NOT NULL,
    flag TINYINT NOT NULL DEFAULT 0
  )`);
  await withApp(db.url, { ...QUIET, PUBLISH_TOKEN: TOKEN, MSG_TABLE: 'plain' }, async (app) => {
    // Every route, bare socket and node:http (HEAD) alike: no silent stream that never gets a row.
    for (const route of ROUTES) {
      for (const [params, method] of [
        [['x'], 'GET'],
        [['x', 'y*'], 'GET'],
        [['x'], 'HEAD'],
      ] as const) {
        const res = await fetch(new URL(route + channelQuery(params), app.url), { method });
        assert.equal(res.status, 400, `${method} ${route} ${params.join(',')}`);
        if (method === 'GET') {
          assert.match(
            await res.text(),
            /^table plain has no channel column, so it has no channels/,
          );
        }
      }
    }
    const subs = [
      await subscribe(app.url, '/stream.ndjson', []),
      await subscribe(app.url, '/stream', ['*']),
      await subscribe(app.url, '/events', []),
    ];
    await waitUntil(() => app.app.hub.size === subs.length, 'the streams in the hub');

    const refused = await publish(app.url, ...json({ content: 'to x', channel: 'x' }));
    assert.equal(refused.status, 400);
    assert.match(refused.text, /table plain has no channel column: publish without a channel/);
    const form = await publish(app.url, new URLSearchParams({ content: 'to x', channel: 'x' }));
    assert.equal(form.status, 400);
    assert.equal(await countRows('plain'), 0, 'nothing inserted');

    const accepted = await publish(app.url, ...json({ content: 'to everyone' }));
    assert.equal(accepted.status, 201, accepted.text);
    const inserted = await db.query<{ insertId: number }>('INSERT INTO plain (content) VALUES ?', [
      [['inserted'], ['by a program']],
    ]);
    const ids = [idOf(accepted), String(inserted.insertId), String(inserted.insertId + 1)];
    const rows = await waitUntil(async () => {
      const found = await db.query<{ id: unknown; seq: unknown }[]>(
        'SELECT id, seq FROM plain WHERE seq IS NOT NULL ORDER BY seq',
      );
      return (
        found.length === 3 &&
        found.map((row): ChannelRow => ({ id: String(row.id), seq: Number(row.seq), channel: '' }))
      );
    }, 'the rows of plain claimed');
    assert.deepEqual(
      rows.map((row) => row.id),
      ids,
    );
    // The firehoses get every row, in the implicit channel ''.
    for (const sub of subs) await assertReceived(sub, rows);
    // A resume of a channel is refused too; a firehose resumes.
    const resumeX = await fetch(
      new URL(`/stream.ndjson${channelQuery(['x'], { since: ids[0] as string })}`, app.url),
    );
    assert.equal(resumeX.status, 400);
    await resumeX.body?.cancel();
    const firehose = await subscribe(app.url, '/stream.ndjson', [], ids[0]);
    await assertReceived(firehose, rows.slice(1));
  });
});

// ---------------------------------------------------------------------------------------------

// The statements of a tick (src/source/sql.ts builds them; docs/delivery.md 7).
const PENDING_CHECK =
  /^SELECT \(SELECT next_seq FROM rowcast_state WHERE tbl = 'msg'\) AS next_seq,/;
// A tail, alone or in the claim's commit round trip.
const TAIL = /^(COMMIT;\n)?SELECT b\.id, b\.seq, /;

test('200 streams on 200 channels: an idle tick is one statement, a tick with rows one tail, each row counted once', {
  timeout: 90_000,
}, async () => {
  const sockets = tcpSockets();
  await withDbProxy(async (proxy) => {
    await withApp(proxy.url(db.name), { ...QUIET, POLL_INTERVAL_MS: '60000' }, async (app) => {
      await app.app.tailer.pollOnce(); // after the tick start() ran
      const sentBy = async (tick: () => Promise<void>): Promise<string[]> => {
        const from = proxy.queries.length;
        await tick();
        return proxy.queries.slice(from);
      };
      const channelGauge = async () =>
        Number(
          /^rowcast_channels (\d+)$/m.exec((await request(new URL('/metrics', app.url))).body)?.[1],
        );
      const delivered = async () =>
        Number(
          /^rowcast_rows_delivered_total (\d+)$/m.exec(
            (await request(new URL('/metrics', app.url))).body,
          )?.[1],
        );

      const subs: Subscriber[] = [];
      for (let i = 0; i < 200; i++) {
        const route = ROUTES[i % ROUTES.length] as Route;
        subs.push(await subscribe(app.url, route, [`ch:${i}`]));
      }
      await waitUntil(() => app.app.hub.size === 200, '200 streams in the hub');
      assert.equal(await channelGauge(), 200);

      // Delivery contract 7: idle, one statement per tick, whatever the number of channels.
      const idle = await sentBy(async () => {
        for (let i = 0; i < 5; i++) await app.app.tailer.pollOnce();
      });
      assert.equal(idle.length, 5, idle.join('\n'));
      for (const sql of idle) assert.match(sql, PENDING_CHECK);

      // Rows for 100 of the channels (twice for some), and some for nobody.
      const channels = [
        ...Array.from({ length: 100 }, (_, i) => `ch:${i * 2}`),
        ...Array.from({ length: 30 }, (_, i) => `ch:${i * 2}`),
        ...Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? '' : `nobody:${i}`)),
      ];
      const ids = await insertTo(db.conn, rowsOf('wide', channels));
      const deliveredBefore = await delivered();
      const busy = await sentBy(() => app.app.tailer.pollOnce());
      const tails = busy.filter((sql) => TAIL.test(sql));
      assert.equal(tails.length, 1, `one tail for the tick:\n${busy.join('\n')}`);
      // The tail reads every channel at once: no filter per channel, no statement per stream.
      assert.doesNotMatch(tails[0] as string, /channel` IN|LIKE/);
      assert.equal(busy.length, 4, busy.join('\n'));
      assert.equal(await delivered(), deliveredBefore + channels.length, 'each row once');

      const rows = await claimed(ids);
      for (const sub of subs) await assertReceived(sub, own(sub, rows));
      // Rows of a single channel: the same one tail.
      const one = await insertTo(writer, rowsOf('one', ['ch:199', 'ch:199']));
      const single = await sentBy(() => app.app.tailer.pollOnce());
      assert.equal(single.filter((sql) => TAIL.test(sql)).length, 1);
      const oneRows = await claimed(one);
      await assertEach(subs, [...rows, ...oneRows]);

      for (const sub of subs) sub.client.close();
      await waitUntil(() => app.app.hub.size === 0, 'the streams to leave the hub');
      assert.equal(await channelGauge(), 0);
    });
    await waitForSockets(sockets); // before the proxy closes (see waitForSockets)
  });
});
