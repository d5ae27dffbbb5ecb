import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import mysql, { type ResultSetHeader } from 'mysql2/promise';
import { startApp, startCluster, type TestApp, withApp } from './helpers/app.js';
import { connectionOptions, createTestDb, type TestDb } from './helpers/db.js';
import { withDbProxy } from './helpers/proxy.js';
import {
  type Frame,
  openStream,
  parseNdjson,
  parseSse,
  type StreamClient,
} from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// Server-Sent Events, NDJSON and resuming a stream (since= / Last-Event-ID), on real sockets:
// a resume gets the rows after its row id in seq order (docs/delivery.md 3), and a gap frame
// first when that cannot be exact (docs/delivery.md 4).

const ROUTES = ['/stream', '/events', '/stream.ndjson'] as const;

let db: TestDb;
before(async () => {
  db = await createTestDb('resume', { withTable: true });
});
after(async () => {
  await db.drop();
});

/** Inserts rows and waits until a live stream has them: claimed (they have a seq) and tailed. */
async function deliver(app: TestApp, ...contents: string[]): Promise<string[]> {
  const watcher = await openStream(app.streamUrl);
  const ids = await db.insert(...contents);
  await watcher.waitForIds(ids);
  watcher.close();
  return ids;
}

/** What a stream shows for these rows: one row frame each, in this order. */
const rows = (ids: readonly (string | undefined)[]): Frame[] =>
  ids.map((id) => ({ id: id as string }));

/** A gap frame (docs/delivery.md 4). */
const gap = (since: string | undefined, reason: 'limit' | 'unknown'): Frame => ({
  gap: { since: since as string, reason },
});

/** The seq the table holds for each of these rows (they must have one). */
async function seqsOf(ids: readonly (string | undefined)[]): Promise<number[]> {
  const found = await db.query<{ id: string; seq: string | null }[]>(
    `SELECT id, seq FROM msg WHERE id IN (${ids.join(',')})`,
  );
  const byId = new Map(found.map((row) => [String(row.id), row.seq]));
  return ids.map((id) => {
    const seq = byId.get(id as string);
    assert.ok(seq !== undefined && seq !== null, `row ${id} has a seq`);
    return Number(seq);
  });
}

/** The ids of the rows with a seq above that of row `since`, in seq order, as the table says. */
async function idsAfter(since: string): Promise<string[]> {
  const found = await db.query<{ id: string }[]>(
    'SELECT id FROM msg WHERE seq > (SELECT seq FROM msg WHERE id = ?) ORDER BY seq',
    [since],
  );
  return found.map((row) => String(row.id));
}

test('/events: one event per row, id = row id; CR, LF and CRLF start new data lines, no field injection', async () => {
  await withApp(db.url, {}, async (app) => {
    const client = await openStream(new URL('/events', app.url));
    assert.equal(client.res.statusCode, 200);
    assert.equal(client.res.headers['content-type'], 'text/event-stream; charset=utf-8');
    assert.equal(client.res.headers['cache-control'], 'no-cache, no-transform');
    assert.equal(client.res.headers['x-accel-buffering'], 'no');
    const contents = [
      'plain <b>markup</b> & "quotes"',
      'two\nlines',
      'windows\r\nline',
      'old mac\rline',
      'ends with a newline\n',
      'id: 999\ndata: injected\n\nevent: evil\r\nretry: 1',
      'ünïcødé ✓ 😀',
    ];
    const ids = await db.insert(...contents);
    await client.waitForIds(ids);
    assert.match(client.text, /^retry: \d+\n\n/, 'a retry hint first');
    assert.deepEqual(
      parseSse(client.text),
      ids.map((id, i) => ({ id, data: (contents[i] as string).replace(/\r\n|\r/g, '\n') })),
    );
    // Every line of the body is a field the server wrote, never one from the content.
    for (const line of client.text.split('\n')) {
      assert.match(line, /^(|retry: \d+|id: \d+|data: .*|:.*)$/, JSON.stringify(line));
    }
    client.close();
  });
});

test('/events works for an idle client: heartbeats are comments, and HEAD answers the headers', async () => {
  await withApp(db.url, { HEARTBEAT_MS: '100' }, async (app) => {
    const client = await openStream(new URL('/events', app.url));
    await client.waitFor((text) => text.split('\n\n').length > 3, 'a few heartbeats');
    assert.deepEqual(parseSse(client.text), []);
    client.close();
    for (const path of ROUTES) {
      const res = await fetch(new URL(path, app.url), { method: 'HEAD' });
      assert.equal(res.status, 200, path);
      assert.equal(await res.text(), '');
    }
  });
});

test('/stream.ndjson: one JSON object per line with id, seq, channel, content and created_at', async () => {
  await withApp(db.url, {}, async (app) => {
    const client = await openStream(new URL('/stream.ndjson', app.url));
    assert.equal(client.res.headers['content-type'], 'application/x-ndjson; charset=utf-8');
    const contents = ['a "quoted"\nline', '<b>not escaped</b>', '\u0001 control', '😀'];
    const ids = await db.insert(...contents);
    await client.waitForIds(ids);
    const stored = await db.query<{ id: string; seq: string; created_at: Date }[]>(
      `SELECT id, seq, created_at FROM msg WHERE id IN (${ids.join(',')}) ORDER BY id`,
    );
    assert.deepEqual(
      parseNdjson(client.text),
      ids.map((id, i) => ({
        id: Number(id),
        seq: Number(stored[i]?.seq),
        channel: '',
        content: contents[i],
        created_at: stored[i]?.created_at.toISOString(),
      })),
    );
    client.close();
  });
});

for (const path of ROUTES) {
  test(`${path}?since=ID replays the rows after ID in seq order, no gap frame, then live`, async () => {
    await withApp(db.url, {}, async (app) => {
      const earlier = await deliver(app, 'r1', 'r2', 'r3', 'r4', 'r5');
      const client = await openStream(new URL(`${path}?since=${earlier[1]}`, app.url));
      await client.waitForIds(earlier.slice(2));
      const [live] = await db.insert('live');
      await client.waitForIds([live as string]);
      const expected = [...earlier.slice(2), live];
      assert.deepEqual(client.frames(), rows(expected));
      if (path !== '/events') {
        // HTML and NDJSON frames carry the seq, the same the table holds.
        const seqs = await seqsOf(expected);
        assert.deepEqual(
          client.rows(),
          expected.map((id, i) => ({ id, seq: seqs[i] })),
        );
      }
      client.close();
    });
  });
}

test('Last-Event-ID wins over since=; a resume from the newest id gets only live rows', async () => {
  await withApp(db.url, {}, async (app) => {
    const earlier = await deliver(app, 'a', 'b', 'c');
    const url = new URL(`/events?since=${earlier[0]}`, app.url);
    const client = await openStream(url, { 'Last-Event-ID': earlier[1] as string });
    const latest = await openStream(new URL(`/stream?since=${earlier[2]}`, app.url));
    const [live] = await db.insert('live');
    await client.waitForIds([live as string]);
    await latest.waitForIds([live as string]);
    assert.deepEqual(client.frames(), rows([earlier[2], live]));
    assert.deepEqual(latest.frames(), rows([live]));
    client.close();
    latest.close();
  });
});

for (const path of ROUTES) {
  test(`${path}: a resume further back than REPLAY_LIMIT gets a gap frame (limit), then the newest rows`, async () => {
    await withApp(db.url, { REPLAY_LIMIT: '3' }, async (app) => {
      // Four rows after the one resumed from: one more than REPLAY_LIMIT.
      const earlier = await deliver(app, 'from', '1', '2', '3', '4');
      const since = earlier[0] as string;
      const client = await openStream(new URL(`${path}?since=${since}`, app.url));
      await client.waitForIds(earlier.slice(2));
      const [live] = await db.insert('live');
      await client.waitForIds([live as string]);
      assert.deepEqual(client.frames(), [
        gap(since, 'limit'),
        ...rows([...earlier.slice(2), live]),
      ]);
      const replay = await app.logs.waitFor('stream.replay');
      const [firstSeq, lastSeq] = await seqsOf([earlier[2], earlier[4]]);
      assert.equal(replay.level, 'info', 'a gap is logged at info');
      assert.deepEqual(
        [replay.since, replay.rows, replay.firstSeq, replay.lastSeq, replay.gap, replay.streams],
        [since, 3, firstSeq, lastSeq, 'limit', 1],
      );
      client.close();
    });
  });
}

test('a resume of exactly REPLAY_LIMIT rows gets them all, with no gap frame', async () => {
  await withApp(db.url, { REPLAY_LIMIT: '3' }, async (app) => {
    const earlier = await deliver(app, 'from', 'x', 'y', 'z');
    const since = earlier[0] as string;
    const clients = await Promise.all(
      ROUTES.map((path) => openStream(new URL(`${path}?since=${since}`, app.url))),
    );
    for (const client of clients) {
      await client.waitForIds(earlier.slice(1));
      assert.deepEqual(client.frames(), rows(earlier.slice(1)));
    }
    const replays = await waitUntil(() => {
      const found = app.logs.events('stream.replay');
      return found.reduce((sum, entry) => sum + Number(entry.streams), 0) === 3 && found;
    }, 'the replays of 3 streams logged');
    for (const replay of replays) {
      assert.equal(replay.level, 'debug');
      assert.equal(replay.gap, null);
      assert.equal(replay.rows, 3);
    }
    for (const client of clients) client.close();
  });
});

for (const path of ROUTES) {
  test(`${path}: a resume from a deleted row gets a gap frame (unknown), then the rows after it`, async () => {
    await withApp(db.url, {}, async (app) => {
      const [, b, c, d, e] = await deliver(app, 'a', 'b', 'c', 'd', 'e');
      // Delivered, then deleted: b (rows follow it) and e (the newest: none follows it).
      await db.query('DELETE FROM msg WHERE id IN (?, ?)', [b, e]);
      const deleted = await openStream(new URL(`${path}?since=${b}`, app.url));
      const exact = await openStream(new URL(`${path}?since=${c}`, app.url));
      const newest = await openStream(new URL(`${path}?since=${e}`, app.url));
      const [live] = await db.insert('live');
      for (const client of [deleted, exact, newest]) await client.waitForIds([live as string]);
      assert.deepEqual(deleted.frames(), [gap(b, 'unknown'), ...rows([c, d, live])]);
      assert.deepEqual(exact.frames(), rows([d, live]), 'an exact resume has no gap frame');
      assert.deepEqual(newest.frames(), [gap(e, 'unknown'), ...rows([live])]);
      const replays = app.logs.events('stream.replay');
      const bySince = new Map(replays.map((entry) => [entry.since, entry]));
      assert.deepEqual(
        [b, c, e].map((since) => [bySince.get(since)?.gap, bySince.get(since)?.level]),
        [
          ['unknown', 'info'],
          [null, 'debug'],
          ['unknown', 'info'],
        ],
      );
      for (const client of [deleted, exact, newest]) client.close();
    });
  });
}

test('a row whose transaction commits late is replayed in delivery order: no gap, no duplicate', async () => {
  await withApp(db.url, {}, async (app) => {
    const watcher = await openStream(new URL('/stream.ndjson', app.url));
    const writer = await mysql.createConnection({ ...connectionOptions(), database: db.name });
    try {
      await writer.beginTransaction();
      const [result] = await writer.query<ResultSetHeader>(
        "INSERT INTO msg (content) VALUES ('late')",
      );
      const late = String(result.insertId);
      // A larger id, committed (and claimed) before the smaller one: the seq order is not the
      // id order.
      const [early] = (await db.insert('early')) as [string];
      await watcher.waitForIds([early]);
      await writer.commit();
      await watcher.waitForIds([late]);
      const [earlySeq, lateSeq] = await seqsOf([early, late]);
      assert.deepEqual(watcher.rows(), [
        { id: early, seq: earlySeq },
        { id: late, seq: lateSeq },
      ]);
      assert.ok(BigInt(late) < BigInt(early) && Number(lateSeq) > Number(earlySeq));

      // One client went away after `early`, one after `late` (the last row it saw).
      const away = await openStream(new URL('/events', app.url), { 'Last-Event-ID': early });
      const caughtUp = await openStream(new URL(`/stream.ndjson?since=${late}`, app.url));
      const [live] = (await db.insert('live')) as [string];
      await away.waitForIds([live]);
      await caughtUp.waitForIds([live]);
      assert.deepEqual(away.frames(), rows([late, live]));
      assert.deepEqual(caughtUp.frames(), rows([live]));
      away.close();
      caughtUp.close();
    } finally {
      await writer.end();
      watcher.close();
    }
  });
});

test('a resume id that is not a row id gets 400, on every stream route', async () => {
  await withApp(db.url, {}, async (app) => {
    for (const path of ROUTES) {
      for (const since of ['abc', '-1', '1.5', '', '18446744073709551616']) {
        const res = await fetch(new URL(`${path}?since=${since}`, app.url));
        if (since === '') {
          // An empty since is no since: a live stream.
          assert.equal(res.status, 200, `${path}?since=`);
          await res.body?.cancel();
          continue;
        }
        assert.equal(res.status, 400, `${path}?since=${since}`);
        assert.match(await res.text(), /row id/);
      }
      const res = await fetch(new URL(path, app.url), { headers: { 'Last-Event-ID': 'x1' } });
      assert.equal(res.status, 400, `${path} with Last-Event-ID: x1`);
      await res.body?.cancel();
    }
  });
});

test('streams resuming while ticks run get every row exactly once, in order', {
  timeout: 90_000,
}, async () => {
  // Ticks every 10 ms race the replays; one writer inserts rows one by one (ids commit in order).
  await withApp(db.url, { POLL_INTERVAL_MS: '10' }, async (app) => {
    const watcher = await openStream(new URL('/events', app.url));
    const resumed: { since: string; client: StreamClient }[] = [];
    const inserted = await db.insert('first');
    await watcher.waitForIds(inserted);
    for (let i = 0; i < 240; i++) {
      inserted.push(...(await db.insert(`row ${i}`)));
      if (i % 8 === 4) {
        // Resume from the newest row a client has seen, as EventSource does.
        const seen = watcher.ids();
        const since = seen[seen.length - 1] as string;
        const path = ROUTES[resumed.length % ROUTES.length] as string;
        resumed.push({
          since,
          client: await openStream(new URL(`${path}?since=${since}`, app.url)),
        });
      }
    }
    const last = inserted[inserted.length - 1] as string;
    for (const { since, client } of resumed) {
      await client.waitForIds([last]);
      // One writer, one row per statement: seq order is id order here.
      const expected = inserted.filter((id) => BigInt(id) > BigInt(since));
      assert.deepEqual(client.frames(), rows(expected), `resumed after ${since}`);
      client.close();
    }
    assert.ok(resumed.length >= 30);
    watcher.close();
  });
});

test('a resume that cannot read the database ends the stream (the client retries), others stay', {
  timeout: 60_000,
}, async () => {
  await withDbProxy(async (proxy) => {
    await withApp(proxy.url(db.name), { HEARTBEAT_MS: '200' }, async (app) => {
      const live = await openStream(new URL('/events', app.url));
      // Cut after the first tick: before it, a replay waits for the cursor (until the database
      // answers) rather than failing.
      await app.app.tailer.started;
      proxy.cut();
      const resumed = await openStream(new URL('/events?since=0', app.url));
      await resumed.ended;
      assert.match(resumed.text, /^retry: \d+\n\n/);
      await app.logs.waitFor('replay.failed');
      const mark = live.text.length;
      await live.waitFor((text) => text.length > mark, 'a heartbeat on the live stream');
      proxy.restore();
      const [row] = await db.insert('after the outage');
      await live.waitForIds([row as string], 30_000);
      live.close();
    });
  });
});

test('with WORKERS=2 streams resume on every worker, with no gap and no duplicate', {
  timeout: 60_000,
}, async () => {
  const cluster = await startCluster(db.url, 2);
  try {
    const watcher = await openStream(new URL('/events', cluster.url));
    const earlier = await db.insert('c1', 'c2', 'c3');
    await watcher.waitForIds(earlier);
    const clients = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        openStream(new URL(`${ROUTES[i % 3]}?since=${earlier[0]}`, cluster.url)),
      ),
    );
    await waitUntil(
      () => cluster.logs.events('stream.replay').length > 0,
      'a replay in the primary',
    );
    const [live] = await db.insert('c4');
    for (const client of clients) {
      await client.waitForIds([live as string]);
      assert.deepEqual(client.frames(), rows([earlier[1], earlier[2], live]));
      client.close();
    }
    const pids = new Set(cluster.logs.events('stream.open').map((entry) => entry.pid));
    assert.equal(pids.size, 2, 'streams were opened on both workers');
    watcher.close();
  } finally {
    await cluster.close();
  }
});

test('a resume on an instance that has not tailed the row yet gets no row twice', async () => {
  // docs/delivery.md 3, across instances: the client saw rows on one instance and reconnects to
  // another whose tail is behind (its ticks are a minute apart; the test runs them).
  await withApp(db.url, {}, async (ahead) => {
    await withApp(db.url, { POLL_INTERVAL_MS: '60000' }, async (behind) => {
      await behind.app.tailer.started;
      const watcher = await openStream(new URL('/stream.ndjson', ahead.url));
      const seen = await db.insert('s1', 's2', 's3');
      await watcher.waitForIds(seen);
      const last = seen[seen.length - 1] as string;
      const [lastSeq] = await seqsOf([last]);
      assert.ok((behind.app.tailer.cursor ?? 0) < Number(lastSeq), 'one instance is behind');
      const resumed = await openStream(new URL(`/stream.ndjson?since=${last}`, behind.url));
      const from = await openStream(new URL(`/events?since=${seen[0]}`, behind.url));
      await waitUntil(
        () => behind.logs.events('stream.replay').length === 2,
        'both replays on the instance behind',
      );
      const [live] = (await db.insert('live')) as [string];
      await db.waitMarked([live]);
      await behind.app.tailer.pollOnce();
      await resumed.waitForIds([live]);
      await from.waitForIds([live]);
      assert.deepEqual(resumed.frames(), rows([live]));
      assert.deepEqual(from.frames(), rows([...seen.slice(1), live]));
      for (const client of [watcher, resumed, from]) client.close();
    });
  });
});

test('after a restart, a resume with the last id gets exactly the rows it missed, in seq order', {
  timeout: 60_000,
}, async () => {
  // docs/delivery.md 3: the replay comes from the table, not from the memory of the server that
  // delivered the rows, so it is exact across a restart of the only instance.
  const writer = await mysql.createConnection({ ...connectionOptions(), database: db.name });
  try {
    const first = await startApp(db.url);
    let seen: string[];
    let late: string;
    try {
      const client = await openStream(new URL('/stream.ndjson', first.url));
      seen = await db.insert('seen 1', 'seen 2', 'seen 3');
      await client.waitForIds(seen);
      assert.deepEqual(client.frames(), rows(seen));
      // A transaction open across the restart: its row has a smaller id than the rows inserted
      // while the server is down, and commits after the new server has claimed those.
      await writer.beginTransaction();
      const [result] = await writer.query<ResultSetHeader>(
        "INSERT INTO msg (content) VALUES ('late')",
      );
      late = String(result.insertId);
      client.close();
    } finally {
      await first.close();
    }
    const down = await db.insert('down 1', 'down 2', 'down 3');
    const last = seen[seen.length - 1] as string;

    await withApp(db.url, {}, async (app) => {
      // One client resumes at once: it gets the rows from the table and the live ones after.
      const early = await openStream(new URL(`/stream.ndjson?since=${last}`, app.url));
      await early.waitForIds(down);
      await writer.commit();
      await early.waitForIds([late]);
      const [lateSeq] = await seqsOf([late]);
      await waitUntil(
        () => (app.app.tailer.cursor ?? 0) >= Number(lateSeq),
        'the new server has tailed the late row',
      );
      // Two resume once everything is in the table: one with the last id seen, one further back.
      const later = await openStream(new URL(`/events?since=${last}`, app.url));
      const back = await openStream(new URL(`/stream?since=${seen[0]}`, app.url));
      const [live] = (await db.insert('live')) as [string];
      for (const client of [early, later, back]) await client.waitForIds([live]);

      // Exactly what the table holds after the last row seen, in seq order: the late row, with
      // the smallest id of them, last.
      const missed = await idsAfter(last);
      assert.deepEqual(missed, [...down, late, live]);
      assert.ok(BigInt(late) < BigInt(down[0] as string));
      assert.deepEqual(early.frames(), rows(missed));
      assert.deepEqual(later.frames(), rows(missed));
      assert.deepEqual(back.frames(), rows([...seen.slice(1), ...missed]));
      const seqs = early.rows().map((row) => row.seq);
      assert.deepEqual(seqs, await seqsOf(missed), 'each with its seq, ascending');
      assert.deepEqual(
        seqs,
        [...seqs].sort((x, y) => x - y),
      );
      for (const client of [early, later, back]) client.close();
    });
  } finally {
    await writer.end();
  }
});
