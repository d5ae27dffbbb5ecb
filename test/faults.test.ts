import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startApp, withApp } from './helpers/app.js';
import { startBlackHole } from './helpers/blackhole.js';
import { createTestDb, SERVER_URL, type TestDb, withoutUpdate } from './helpers/db.js';
import { type DbProxy, startDbProxy } from './helpers/proxy.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { createUnstartedApp, getHealth, tcpSockets, waitForSockets } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// Delivery contract 3 and 4 of DESIGN.md: the database goes away for real (a TCP proxy cut, a
// missing privilege, a host that never answers) and streams, health and delivery behave.

const TARGET = { host: SERVER_URL.hostname, port: Number(SERVER_URL.port || 3306) };
const HEARTBEAT = '<!-- -->\n';
// The poller backs off up to MAX_BACKOFF_MS (5 s) while the database fails: recovery can take that
// long after the database is back, so recovery waits get a generous deadline.
const RECOVERY_MS = 15_000;

let db: TestDb;
let proxy: DbProxy;
// TCP sockets open between tests (the direct connection of `db`); see waitForSockets.
let idleSockets: number;
before(async () => {
  db = await createTestDb('faults', { withTable: true });
  idleSockets = tcpSockets();
  proxy = await startDbProxy(TARGET);
});
after(async () => {
  await waitForSockets(idleSockets);
  await proxy.close();
  await db.drop();
});

function heartbeatsSince(client: StreamClient, offset: number): number {
  return client.text.slice(offset).split(HEARTBEAT).length - 1;
}

function isOpen(client: StreamClient): boolean {
  return !client.res.complete && !client.res.readableEnded && !client.res.destroyed;
}

const ids = (client: StreamClient) => client.messages().map((m) => m.id);

test('during an outage streams stay open on heartbeats and /healthz is 503; rows inserted meanwhile arrive once each afterwards', {
  timeout: 60_000,
}, async () => {
  const app = await startApp(proxy.url(db.name), { HEARTBEAT_MS: '200', POLL_INTERVAL_MS: '50' });
  const clients: StreamClient[] = [];
  try {
    for (let i = 0; i < 3; i++) clients.push(await openStream(app.streamUrl));
    await waitUntil(
      async () => (await getHealth(app.url)).status === 200,
      '/healthz 200 before the outage',
    );
    const [first] = (await db.insert('before the outage')) as [string];
    for (const client of clients) await client.waitForIds([first]);
    await waitUntil(async () => (await db.flags()).get(first) === 1, 'the first row flagged');

    proxy.cut();
    const cutAt = clients.map((client) => client.text.length);
    await app.logs.waitFor('poll.failed');
    const down = await getHealth(app.url);
    assert.equal(down.status, 503);
    assert.equal(down.body.status, 'unavailable');
    assert.equal(down.body.poll, 'failing');

    const during = await db.insert('during 1', 'during <2>', 'during 3');
    // Several ticks fail in a row, and the streams get several heartbeats, while the database is away.
    await waitUntil(
      () => app.logs.events('poll.retry_failed').length >= 3,
      'three more failed ticks',
      RECOVERY_MS,
    );
    await waitUntil(
      () => clients.every((client, i) => heartbeatsSince(client, cutAt[i] ?? 0) >= 3),
      'three heartbeats on every stream after the cut',
    );
    for (const client of clients) {
      assert.ok(isOpen(client), 'the stream is still open during the outage');
      assert.deepEqual(ids(client), [first]);
    }
    assert.equal((await getHealth(app.url)).status, 503);
    assert.equal(app.logs.events('poll.failed').length, 1, 'one poll.failed for the whole outage');

    proxy.restore();
    await app.logs.waitFor('poll.recovered', RECOVERY_MS);
    for (const client of clients) {
      await client.waitForIds(during, RECOVERY_MS);
      assert.deepEqual(ids(client), [first, ...during], 'each row once, in id order');
      assert.equal(client.messages()[2]?.html, 'during &lt;2&gt;');
      assert.ok(isOpen(client));
    }
    const flags = await db.flags();
    for (const id of during) assert.equal(flags.get(id), 1, `row ${id} flagged`);
    const up = await getHealth(app.url);
    assert.equal(up.status, 200);
    assert.equal(up.body.poll, 'ok');
    assert.equal(up.body.pendingMarks, 0);
    assert.equal(app.logs.events('poll.failed').length, 1);
    assert.equal(app.logs.events('poll.recovered').length, 1);
  } finally {
    proxy.restore();
    for (const client of clients) client.close();
    await app.close();
  }
});

test('rows whose mark failed are not sent again; the mark is retried before any new row is read', {
  timeout: 60_000,
}, async () => {
  await withoutUpdate(db, proxy.url(db.name), async (url, user) => {
    // A one-minute interval: the test runs every tick after the first itself, with pollOnce.
    await withApp(url, { POLL_INTERVAL_MS: '60000', HEARTBEAT_MS: '200' }, async (app) => {
      await app.app.tailer.pollOnce();
      const client = await openStream(app.streamUrl);
      const denied = { code: 'ER_TABLEACCESS_DENIED_ERROR' };

      const sent = await db.insert('one', 'two');
      await assert.rejects(app.app.tailer.pollOnce(), denied);
      await client.waitForIds(sent);
      for (let i = 0; i < 3; i++) await assert.rejects(app.app.tailer.pollOnce(), denied);

      const [fresh] = (await db.insert('inserted while the mark fails')) as [string];
      const queriesBefore = proxy.queries.length;
      await assert.rejects(app.app.tailer.pollOnce(), denied);
      assert.deepEqual(
        proxy.queries.slice(queriesBefore),
        [`UPDATE \`msg\` SET flag = 1 WHERE id IN (${sent.join(',')})`],
        'only the mark is retried; no new rows are read',
      );
      // A heartbeat written after that tick has arrived, so anything the tick wrote has too.
      const mark = client.text.length;
      await client.waitFor((text) => text.slice(mark).includes(HEARTBEAT), 'a heartbeat');
      assert.deepEqual(ids(client), sent, 'each row sent once; the new row not yet');
      let flags = await db.flags();
      for (const id of [...sent, fresh]) assert.equal(flags.get(id), 0, `row ${id} not flagged`);
      const failing = await getHealth(app.url);
      assert.equal(failing.status, 503);
      assert.equal(failing.body.poll, 'failing');
      assert.equal(failing.body.pendingMarks, sent.length);
      assert.equal(app.logs.events('poll.failed').length, 1);

      // A table-level GRANT applies to open connections at their next statement (a database-level
      // one only to new connections), so the very next tick may update.
      await db.query(`GRANT UPDATE ON \`${db.name}\`.\`msg\` TO ?@'%'`, [user]);
      await app.app.tailer.pollOnce();
      flags = await db.flags();
      for (const id of [...sent, fresh]) assert.equal(flags.get(id), 1, `row ${id} flagged`);
      await client.waitForIds([fresh]);
      assert.deepEqual(ids(client), [...sent, fresh], 'old rows not re-sent, the new row once');
      assert.deepEqual(
        app.logs.events('mark.retried').map((e) => e.rows),
        [sent.length],
      );
      assert.equal(app.logs.events('poll.recovered').length, 1);
      const healthy = await getHealth(app.url);
      assert.equal(healthy.status, 200);
      assert.equal(healthy.body.pendingMarks, 0);
      client.close();
    });
  });
});

test('a database unreachable at start is retried with one clear log line, then streams', {
  timeout: 60_000,
}, async () => {
  await waitForSockets(idleSockets); // the connections of the last test's app are gone
  proxy.cut();
  const { app, logs } = createUnstartedApp(proxy.url(db.name));
  let settled = false;
  const started = app.start().finally(() => {
    settled = true;
  });
  started.catch(() => undefined);
  let client: StreamClient | undefined;
  try {
    const unreachable = await logs.waitFor('db.unreachable');
    assert.equal(unreachable.level, 'warn');
    assert.match(String(unreachable.msg), /database unreachable at start; retrying/);
    assert.ok(unreachable.err, 'the log line carries the error');
    // Let it retry at least once more while still unreachable: it keeps waiting, it does not crash.
    await waitUntil(() => logs.events('db.unreachable').length >= 2, 'a second attempt');
    assert.equal(settled, false, 'start waits for the database');

    proxy.restore();
    await waitUntil(() => settled, 'start() to settle', RECOVERY_MS);
    const url = await started;
    const warnings = logs.events('db.unreachable').filter((e) => e.level === 'warn');
    assert.equal(warnings.length, 1, 'one warning, later attempts at debug level');
    const reachable = await logs.waitFor('db.reachable');
    assert.ok(Number(reachable.attempts) >= 3);

    client = await openStream(new URL('/stream', url));
    const [id] = (await db.insert('after a late database')) as [string];
    await client.waitForIds([id]);
    assert.deepEqual(ids(client), [id]);
  } finally {
    proxy.restore();
    client?.close();
    await app.close();
  }
});

test('a database that accepts but never answers fails ticks by timeout; streams stay open', {
  timeout: 90_000,
}, async () => {
  const hole = await startBlackHole(TARGET);
  const app = await startApp(hole.url(db.name), { HEARTBEAT_MS: '200' });
  let client: StreamClient | undefined;
  try {
    client = await openStream(app.streamUrl);
    const [first] = (await db.insert('before the black hole')) as [string];
    await client.waitForIds([first]);
    await waitUntil(async () => (await db.flags()).get(first) === 1, 'the first row flagged');

    hole.swallow();
    const swallowedAt = client.text.length;
    // The pooled connection waits for its query timeout (10 s), then new connections for the
    // connect timeout (5 s): ticks fail, they do not hang.
    const failed = await app.logs.waitFor('poll.failed', 30_000);
    assert.equal((failed.err as { code?: unknown }).code, 'PROTOCOL_SEQUENCE_TIMEOUT');
    await waitUntil(
      () => app.logs.events('poll.retry_failed').length >= 1,
      'a second tick to fail on connect',
      30_000,
    );
    assert.ok(hole.swallowedConnects >= 1, 'a new connection was tried and got no answer');
    assert.equal((await getHealth(app.url)).status, 503);
    assert.ok(heartbeatsSince(client, swallowedAt) >= 3, 'heartbeats kept coming');
    assert.ok(isOpen(client));

    hole.restore();
    await app.logs.waitFor('poll.recovered', 30_000);
    const [later] = (await db.insert('after the black hole')) as [string];
    await client.waitForIds([later], RECOVERY_MS);
    assert.deepEqual(ids(client), [first, later]);
  } finally {
    hole.restore();
    client?.close();
    await app.close();
    await hole.close();
  }
});
