import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startApp, type TestApp, withApp } from './helpers/app.js';
import { startBlackHole } from './helpers/blackhole.js';
import { createTestDb, SERVER_URL, type TestDb, withoutUpdate } from './helpers/db.js';
import { type DbProxy, startDbProxy } from './helpers/proxy.js';
import { request } from './helpers/request.js';
import { assertGapFree, placedOf, tableRows } from './helpers/seq.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { createUnstartedApp, getHealth, tcpSockets, waitForSockets } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// Delivery contract 1 (claimed exactly once), 2 (every stream every claimed row once, in seq
// order) and 5 (a database error never ends a live stream) of docs/delivery.md: the database goes
// away for real (a TCP proxy cut, a missing privilege, a host that never answers) and streams,
// health and delivery behave.

const TARGET = { host: SERVER_URL.hostname, port: Number(SERVER_URL.port || 3306) };
const HEARTBEAT = '<!-- -->\n';
// The tailer backs off up to MAX_BACKOFF_MS (5 s) while the database fails: recovery can take that
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

/** GET /readyz: its status and body. */
async function readiness(app: TestApp): Promise<{ status: number; body: { status: string } }> {
  const answer = await request(new URL('/readyz', app.url));
  return { status: answer.status, body: JSON.parse(answer.body) as { status: string } };
}

/** The claimed rows with these ids, in seq order, as a stream should have shown them. */
async function placed(rowIds: readonly string[]) {
  const wanted = new Set(rowIds);
  // Every row this file's tests claimed: one gap-free run of seqs from 1.
  return assertGapFree(await tableRows(db), 1).filter((row) => wanted.has(row.id));
}

test('during an outage streams stay open on heartbeats, /healthz and /readyz are 503; rows inserted meanwhile arrive once each afterwards', {
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
    assert.deepEqual(await readiness(app).then((r) => [r.status, r.body.status]), [200, 'ready']);
    const [first] = (await db.insert('before the outage')) as [string];
    for (const client of clients) await client.waitForIds([first]);

    proxy.cut();
    const cutAt = clients.map((client) => client.text.length);
    await app.logs.waitFor('poll.failed');
    const down = await getHealth(app.url);
    assert.equal(down.status, 503);
    assert.equal(down.body.status, 'unavailable');
    assert.equal(down.body.poll, 'failing');
    assert.deepEqual(await readiness(app).then((r) => [r.status, r.body.status]), [
      503,
      'unavailable',
    ]);

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
    assert.equal((await readiness(app)).status, 503);
    assert.equal(app.logs.events('poll.failed').length, 1, 'one poll.failed for the whole outage');
    // Nothing could be claimed while the database was away.
    const unclaimed = new Map((await tableRows(db)).map((row) => [row.id, row.seq]));
    for (const id of during) assert.equal(unclaimed.get(id), null, `row ${id} not claimed yet`);

    proxy.restore();
    await app.logs.waitFor('poll.recovered', RECOVERY_MS);
    const order = await placed([first, ...during]);
    for (const client of clients) {
      await client.waitForIds(during, RECOVERY_MS);
      assert.deepEqual(ids(client), [first, ...during], 'each row once, in id order');
      assert.deepEqual(placedOf(client.text), order, 'with the seqs of the table');
      assert.equal(client.messages()[2]?.html, 'during &lt;2&gt;');
      assert.ok(isOpen(client));
    }
    const up = await getHealth(app.url);
    assert.equal(up.status, 200);
    assert.equal(up.body.poll, 'ok');
    assert.equal((await readiness(app)).status, 200);
    assert.equal(app.logs.events('poll.failed').length, 1);
    assert.equal(app.logs.events('poll.recovered').length, 1);
  } finally {
    proxy.restore();
    for (const client of clients) client.close();
    await app.close();
  }
});

test('a database cut while two instances serve: no stream ends, both catch up, nothing twice', {
  timeout: 60_000,
}, async () => {
  await waitForSockets(idleSockets); // the connections of the last test's app are gone
  const env = { HEARTBEAT_MS: '200', POLL_INTERVAL_MS: '50' };
  const apps = [await startApp(proxy.url(db.name), env), await startApp(proxy.url(db.name), env)];
  const clients: StreamClient[][] = [];
  try {
    for (const app of apps) await app.app.tailer.started;
    for (const app of apps) {
      clients.push(await Promise.all([0, 1].map(() => openStream(app.streamUrl))));
    }
    const all = clients.flat();
    const [first] = (await db.insert('before the cut')) as [string];
    for (const client of all) await client.waitForIds([first]);

    proxy.cut();
    for (const app of apps) await app.logs.waitFor('poll.failed');
    const cutAt = all.map((client) => client.text.length);
    // Rows keep coming from elsewhere while neither instance can reach the database.
    const during: string[] = [];
    for (let i = 0; i < 4; i++) during.push(...(await db.insert(`during ${i}a`, `during ${i}b`)));
    await waitUntil(
      () => apps.every((app) => app.logs.events('poll.retry_failed').length >= 2),
      'more failed ticks on both instances',
      RECOVERY_MS,
    );
    await waitUntil(
      () => all.every((client, i) => heartbeatsSince(client, cutAt[i] ?? 0) >= 2),
      'heartbeats on every stream after the cut',
    );
    for (const app of apps) assert.equal((await readiness(app)).status, 503);
    for (const client of all) {
      assert.ok(isOpen(client), 'no stream ends during the outage');
      assert.deepEqual(ids(client), [first]);
    }

    proxy.restore();
    for (const app of apps) await app.logs.waitFor('poll.recovered', RECOVERY_MS);
    const [later] = (await db.insert('after the cut')) as [string];
    const rowIds = [first, ...during, later];
    await waitUntil(
      async () =>
        (await tableRows(db)).filter((r) => rowIds.includes(r.id) && r.seq !== null).length ===
        rowIds.length,
      'the rows claimed',
      RECOVERY_MS,
    );
    for (const client of all) await client.waitForIds(rowIds, RECOVERY_MS);
    const order = await placed(rowIds);
    assert.equal(order.length, rowIds.length);
    for (const client of all) {
      assert.ok(isOpen(client));
      assert.deepEqual(placedOf(client.text), order, 'each row once, in the one seq order');
    }
    // Delivery contract 1: between them the instances claimed each row once.
    const claimed = apps.map((app) =>
      app.logs.events('claim').reduce((sum, e) => sum + Number(e.rows), 0),
    );
    assert.equal(
      claimed.reduce((a, b) => a + b),
      rowIds.length,
      `claims per instance: ${claimed.join(', ')}`,
    );
    for (const app of apps) {
      assert.equal(app.logs.events('poll.failed').length, 1);
      assert.equal((await readiness(app)).status, 200);
    }
  } finally {
    proxy.restore();
    for (const client of clients.flat()) client.close();
    for (const app of apps) await app.close();
  }
});

test('a claim the database refuses sends nothing and fails the tick; once allowed, the rows go out once each', {
  timeout: 60_000,
}, async () => {
  // The table is prepared already (withTable): a user who may not UPDATE can start, not claim.
  await withoutUpdate(db, db.url, async (url, user) => {
    // A one-minute interval: the test runs every tick after the first itself, with pollOnce.
    await withApp(url, { POLL_INTERVAL_MS: '60000', HEARTBEAT_MS: '200' }, async (app) => {
      await app.app.tailer.pollOnce();
      const client = await openStream(app.streamUrl);
      const denied = { code: 'ER_TABLEACCESS_DENIED_ERROR' };

      const rows = await db.insert('one', 'two');
      for (let i = 0; i < 3; i++) await assert.rejects(app.app.tailer.pollOnce(), denied);
      // A heartbeat written after those ticks has arrived, so anything they wrote has too.
      const mark = client.text.length;
      await client.waitFor((text) => text.slice(mark).includes(HEARTBEAT), 'a heartbeat');
      assert.deepEqual(ids(client), [], 'nothing is sent before it is claimed');
      assert.ok(isOpen(client));
      for (const row of (await tableRows(db)).filter((r) => rows.includes(r.id))) {
        assert.deepEqual([row.flag, row.seq], [0, null], `row ${row.id} still pending`);
      }
      const failing = await getHealth(app.url);
      assert.equal(failing.status, 503);
      assert.equal(failing.body.poll, 'failing');
      assert.equal(app.logs.events('poll.failed').length, 1);

      // A table-level GRANT applies to open connections at their next statement (a database-level
      // one only to new connections), so the very next tick may claim.
      await db.query(`GRANT UPDATE ON \`${db.name}\`.\`msg\` TO ?@'%'`, [user]);
      await db.query(`GRANT UPDATE ON \`${db.name}\`.\`rowcast_state\` TO ?@'%'`, [user]);
      await app.app.tailer.pollOnce();
      await client.waitForIds(rows);
      assert.deepEqual(placedOf(client.text), await placed(rows), 'each row once, in seq order');
      assert.equal(app.logs.events('poll.recovered').length, 1);
      assert.equal((await getHealth(app.url)).status, 200);
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
    assert.equal((await readiness(app)).status, 503);
    assert.ok(heartbeatsSince(client, swallowedAt) >= 3, 'heartbeats kept coming');
    assert.ok(isOpen(client));

    hole.restore();
    await app.logs.waitFor('poll.recovered', 30_000);
    const [later] = (await db.insert('after the black hole')) as [string];
    await client.waitForIds([later], RECOVERY_MS);
    assert.deepEqual(ids(client), [first, later]);
    assert.deepEqual(placedOf(client.text), await placed([first, later]));
  } finally {
    hole.restore();
    client?.close();
    await app.close();
    await hole.close();
  }
});
