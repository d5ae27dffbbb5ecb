import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import mysql, { type ResultSetHeader } from 'mysql2/promise';
import { startCluster, type TestApp, withApp } from './helpers/app.js';
import { connectionOptions, createTestDb, type TestDb, withoutUpdate } from './helpers/db.js';
import { withDbProxy } from './helpers/proxy.js';
import { openStream, parseNdjson, parseSse, type StreamClient } from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// Server-Sent Events, NDJSON and resuming a stream (since= / Last-Event-ID), on real sockets.

const ROUTES = ['/stream', '/events', '/stream.ndjson'] as const;

let db: TestDb;
before(async () => {
  db = await createTestDb('resume', { withTable: true });
});
after(async () => {
  await db.drop();
});

/** Inserts rows and waits until a live stream has them, so they count as delivered. */
async function deliver(app: TestApp, ...contents: string[]): Promise<string[]> {
  const watcher = await openStream(app.streamUrl);
  const ids = await db.insert(...contents);
  await watcher.waitForIds(ids);
  watcher.close();
  await db.waitMarked(ids);
  return ids;
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

test('/stream.ndjson: one JSON object per line with id, content and created_at', async () => {
  await withApp(db.url, {}, async (app) => {
    const client = await openStream(new URL('/stream.ndjson', app.url));
    assert.equal(client.res.headers['content-type'], 'application/x-ndjson; charset=utf-8');
    const contents = ['a "quoted"\nline', '<b>not escaped</b>', '\u0001 control', '😀'];
    const ids = await db.insert(...contents);
    await client.waitForIds(ids);
    const stored = await db.query<{ id: string; created_at: Date }[]>(
      `SELECT id, created_at FROM msg WHERE id IN (${ids.join(',')}) ORDER BY id`,
    );
    assert.deepEqual(
      parseNdjson(client.text),
      ids.map((id, i) => ({
        id: Number(id),
        content: contents[i],
        created_at: stored[i]?.created_at.toISOString(),
      })),
    );
    client.close();
  });
});

for (const path of ROUTES) {
  test(`${path}?since=ID replays the delivered rows after ID, then continues live`, async () => {
    await withApp(db.url, {}, async (app) => {
      const earlier = await deliver(app, 'r1', 'r2', 'r3', 'r4', 'r5');
      const client = await openStream(new URL(`${path}?since=${earlier[1]}`, app.url));
      await client.waitForIds(earlier.slice(2));
      const [live] = await db.insert('live');
      await client.waitForIds([live as string]);
      assert.deepEqual(client.ids(), [...earlier.slice(2), live]);
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
    assert.deepEqual(client.ids(), [earlier[2], live]);
    assert.deepEqual(latest.ids(), [live]);
    client.close();
    latest.close();
  });
});

test('a resume further back than REPLAY_LIMIT gets the newest REPLAY_LIMIT rows, and a log line', async () => {
  await withApp(db.url, { REPLAY_LIMIT: '3' }, async (app) => {
    const earlier = await deliver(app, '1', '2', '3', '4', '5', '6');
    // One resume from an id that is no row (the rows above it), one from a delivered row.
    const since = String(BigInt(earlier[0] as string) - 1n);
    const client = await openStream(new URL(`/events?since=${since}`, app.url));
    const fromRow = await openStream(new URL(`/stream?since=${earlier[0]}`, app.url));
    await client.waitForIds(earlier.slice(3));
    await fromRow.waitForIds(earlier.slice(3));
    const [live] = await db.insert('live');
    await client.waitForIds([live as string]);
    await fromRow.waitForIds([live as string]);
    assert.deepEqual(client.ids(), [...earlier.slice(3), live]);
    assert.deepEqual(fromRow.ids(), [...earlier.slice(3), live]);
    fromRow.close();
    const replay = await app.logs.waitFor('stream.replay');
    assert.equal(replay.more, true);
    assert.equal(replay.level, 'info');
    client.close();
  });
});

test('a resume of exactly REPLAY_LIMIT rows gets them all and says nothing was left out', async () => {
  await withApp(db.url, { REPLAY_LIMIT: '3' }, async (app) => {
    const earlier = await deliver(app, 'x', 'y', 'z');
    const since = String(BigInt(earlier[0] as string) - 1n);
    const client = await openStream(new URL(`/events?since=${since}`, app.url));
    await client.waitForIds(earlier);
    assert.deepEqual(client.ids(), earlier);
    const replay = await app.logs.waitFor('stream.replay');
    assert.equal(replay.more, false);
    assert.equal(replay.level, 'debug');
    client.close();
  });
});

test('a row whose transaction commits late is replayed in delivery order: no gap, no duplicate', async () => {
  await withApp(db.url, {}, async (app) => {
    const watcher = await openStream(new URL('/events', app.url));
    const writer = await mysql.createConnection({ ...connectionOptions(), database: db.name });
    try {
      await writer.beginTransaction();
      const [result] = await writer.query<ResultSetHeader>(
        "INSERT INTO msg (content) VALUES ('late')",
      );
      const late = String(result.insertId);
      // A larger id, committed (and delivered) before the smaller one.
      const [early] = (await db.insert('early')) as [string];
      await watcher.waitForIds([early]);
      await writer.commit();
      await watcher.waitForIds([late]);
      await db.waitMarked([early, late]);
      assert.deepEqual(watcher.ids(), [early, late]);

      // One client went away after `early`, one after `late` (the last row it saw).
      const away = await openStream(new URL('/events', app.url), { 'Last-Event-ID': early });
      const caughtUp = await openStream(new URL(`/stream.ndjson?since=${late}`, app.url));
      const [live] = (await db.insert('live')) as [string];
      await away.waitForIds([live]);
      await caughtUp.waitForIds([live]);
      assert.deepEqual(away.ids(), [late, live]);
      assert.deepEqual(caughtUp.ids(), [live]);
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
      const expected = inserted.filter((id) => BigInt(id) > BigInt(since));
      assert.deepEqual(client.ids(), expected, `resumed after ${since}`);
      client.close();
    }
    assert.ok(resumed.length >= 30);
    watcher.close();
  });
});

test('rows written but not yet marked (the mark fails) are replayed, and never sent twice', {
  timeout: 60_000,
}, async () => {
  await withoutUpdate(db, db.url, async (url, user) => {
    // A one-minute interval: the test runs every tick after the first itself, with pollOnce.
    await withApp(url, { POLL_INTERVAL_MS: '60000' }, async (app) => {
      await app.app.tailer.pollOnce();
      const live = await openStream(new URL('/events', app.url));
      const sent = await db.insert('unmarked 1', 'unmarked 2');
      await assert.rejects(app.app.tailer.pollOnce(), { code: 'ER_TABLEACCESS_DENIED_ERROR' });
      await live.waitForIds(sent);
      const flags = await db.flags();
      for (const id of sent) assert.equal(flags.get(id), 0, `row ${id} still unmarked`);

      const since = String(BigInt(sent[0] as string) - 1n);
      const resumed = await openStream(new URL(`/events?since=${since}`, app.url));
      await resumed.waitForIds(sent);
      await db.query(`GRANT UPDATE ON \`${db.name}\`.\`msg\` TO ?@'%'`, [user]);
      const [fresh] = await db.insert('after the mark');
      await app.app.tailer.pollOnce();
      await resumed.waitForIds([fresh as string]);
      await live.waitForIds([fresh as string]);
      assert.deepEqual(resumed.ids(), [...sent, fresh]);
      assert.deepEqual(live.ids(), [...sent, fresh]);
      resumed.close();
      live.close();
    });
  });
});

test('a resume that cannot read the database ends the stream (the client retries), others stay', {
  timeout: 60_000,
}, async () => {
  await withDbProxy(async (proxy) => {
    await withApp(proxy.url(db.name), { HEARTBEAT_MS: '200' }, async (app) => {
      const live = await openStream(new URL('/events', app.url));
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
    await db.waitMarked(earlier);
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
      assert.deepEqual(client.ids(), [earlier[1], earlier[2], live]);
      client.close();
    }
    const pids = new Set(cluster.logs.events('stream.open').map((entry) => entry.pid));
    assert.equal(pids.size, 2, 'streams were opened on both workers');
    watcher.close();
  } finally {
    await cluster.close();
  }
});
