import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type TestApp, withApp } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { withDbProxy } from './helpers/proxy.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// Delivery contract 1, 2 and 5 of DESIGN.md, seen from curl-like clients on real sockets.

let db: TestDb;
before(async () => {
  db = await createTestDb('delivery');
});
after(async () => {
  await db.drop();
});

async function openStreams(app: TestApp, n: number): Promise<StreamClient[]> {
  return Promise.all(Array.from({ length: n }, () => openStream(app.streamUrl)));
}

test('a new row reaches every open stream once, escaped, and is then flagged', async () => {
  await withApp(db.url, {}, async (app) => {
    const clients = await openStreams(app, 3);
    const [id] = await db.insert('hi <b>there</b>');
    for (const client of clients) await client.waitForIds([id as string]);
    for (const client of clients) {
      assert.deepEqual(client.messages(), [{ id, html: 'hi &lt;b&gt;there&lt;/b&gt;' }]);
      assert.ok(!client.text.includes('<b>'), 'markup must arrive escaped');
    }
    await db.waitMarked([id]);
    for (const client of clients) client.close();
  });
});

test('fifty rows inserted at once arrive on every stream, in id order, each once', async () => {
  await withApp(db.url, {}, async (app) => {
    const clients = await openStreams(app, 3);
    const ids = await db.insert(...Array.from({ length: 50 }, (_, i) => `row ${i}`));
    for (const client of clients) {
      await client.waitForIds(ids);
      assert.deepEqual(
        client.messages().map((m) => m.id),
        ids,
      );
      client.close();
    }
    await db.waitMarked(ids);
  });
});

test('rows already flagged are never sent', async () => {
  await withApp(db.url, {}, async (app) => {
    const client = await openStream(app.streamUrl);
    // Inserted flagged: an insert and a later UPDATE could straddle a tick.
    await db.query("INSERT INTO msg (content, flag) VALUES ('already delivered', 1)");
    const [fresh] = await db.insert('fresh');
    await client.waitForIds([fresh as string]);
    assert.deepEqual(
      client.messages().map((m) => m.id),
      [fresh],
    );
    client.close();
  });
});

test('a stream sees only rows inserted after it opened, not earlier deliveries', async () => {
  await withApp(db.url, {}, async (app) => {
    const first = await openStream(app.streamUrl);
    const [early] = await db.insert('early');
    await first.waitForIds([early as string]);
    const second = await openStream(app.streamUrl);
    const [late] = await db.insert('late');
    await first.waitForIds([late as string]);
    await second.waitForIds([late as string]);
    assert.deepEqual(
      second.messages().map((m) => m.id),
      [late],
    );
    assert.deepEqual(
      first.messages().map((m) => m.id),
      [early, late],
    );
    first.close();
    second.close();
  });
});

test('a full batch drains the backlog without waiting for the next interval', async () => {
  // A 60 s interval: if each batch waited for the timer, only the first would arrive in time.
  await withApp(db.url, { BATCH_SIZE: '10', POLL_INTERVAL_MS: '60000' }, async (app) => {
    const client = await openStream(app.streamUrl);
    const ids = await db.insert(...Array.from({ length: 35 }, (_, i) => `backlog ${i}`));
    app.app.tailer.wake();
    await client.waitForIds(ids);
    // poll.batch is logged after the mark, which may trail the last write.
    const batches = await waitUntil(
      () => app.logs.events('poll.batch').length >= 4 && app.logs.events('poll.batch'),
      'four batch logs',
    );
    assert.deepEqual(
      batches.map((e) => e.rows),
      [10, 10, 10, 5],
    );
    assert.deepEqual(
      client.messages().map((m) => m.id),
      ids,
    );
    client.close();
  });
});

test('one SELECT per tick whatever the number of streams; UPDATE names exactly the ids read', async () => {
  await withDbProxy(async (proxy) => {
    await withApp(proxy.url(db.name), { POLL_INTERVAL_MS: '60000' }, async (app) => {
      const selectsPerTick = async (streams: number): Promise<number> => {
        await app.app.tailer.pollOnce(); // queued after the tick that start() ran
        const clients = await openStreams(app, streams);
        const before = proxy.queries.length;
        const ids = await db.insert('a', 'b');
        const ticks = 5;
        for (let i = 0; i < ticks; i++) await app.app.tailer.pollOnce();
        for (const client of clients) await client.waitForIds(ids);
        const sent = proxy.queries.slice(before);
        const selects = sent.filter((sql) => /^\s*SELECT/i.test(sql) && /flag = 0/.test(sql));
        const updates = sent.filter((sql) => /^\s*UPDATE/i.test(sql));
        assert.deepEqual(updates, [`UPDATE \`msg\` SET flag = 1 WHERE id IN (${ids.join(',')})`]);
        for (const client of clients) client.close();
        return selects.length / ticks;
      };
      assert.equal(await selectsPerTick(1), 1);
      assert.equal(await selectsPerTick(40), 1);
    });
  });
});
