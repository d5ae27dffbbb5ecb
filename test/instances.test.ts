import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import mysql from 'mysql2/promise';
import { connectionOptions, createTestDb, type TestDb } from './helpers/db.js';
import { type Instance, startInstance } from './helpers/instance.js';
import { openStream, parseNdjson, parseSse, type StreamClient } from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// Several rowcast instances, as separate processes, on one table (docs/delivery.md 1-3): every
// stream of every instance gets every row once, in the one seq order; an instance killed mid-burst
// loses nothing for clients that resume on another.

let db: TestDb;
before(async () => {
  db = await createTestDb('instances');
});
after(async () => {
  await db.drop();
});

/** Rows of `table` in delivery order, once all are claimed. */
async function deliveryOrder(table: string): Promise<{ id: string; seq: number }[]> {
  const rows = await db.query<{ id: string; seq: string | null }[]>(
    `SELECT id, seq FROM ${table} ORDER BY seq`,
  );
  return rows.map((row) => ({ id: String(row.id), seq: Number(row.seq) }));
}

/**
 * Inserts `count` rows into `table` from `writers` connections, one row per statement, while
 * another connection holds `late` rows in a transaction that commits after all the others.
 */
async function insertConcurrently(table: string, count: number, writers: number, late: number) {
  const open = () => mysql.createConnection({ ...connectionOptions(), database: db.name });
  const holder = await open();
  await holder.query('START TRANSACTION');
  for (let i = 0; i < late; i++) {
    await holder.query(`INSERT INTO ${table} (content) VALUES (?)`, [`late ${i}`]);
  }
  const conns = await Promise.all(Array.from({ length: writers }, open));
  await Promise.all(
    conns.map(async (conn, w) => {
      for (let i = w; i < count; i += writers) {
        await conn.query(`INSERT INTO ${table} (content) VALUES (?)`, [`row ${i}`]);
      }
    }),
  );
  await holder.query('COMMIT');
  await Promise.all([holder, ...conns].map((conn) => conn.end()));
}

function ndjsonRows(client: StreamClient): { id: string; seq: number }[] {
  return parseNdjson(client.text).map((row) => ({ id: String(row.id), seq: Number(row.seq) }));
}

const LAYOUTS = [
  { name: 'two instances, one a cluster of 2 workers', workers: ['1', '2'] },
  { name: 'three instances, one a cluster of 2 workers', workers: ['1', '1', '2'] },
];

for (const [n, layout] of LAYOUTS.entries()) {
  test(`${layout.name}: every stream gets every row once, all in one order`, async () => {
    const table = `shared_${n}`;
    const instances: Instance[] = [];
    const clients: StreamClient[] = [];
    try {
      for (const workers of layout.workers) {
        instances.push(await startInstance(db.url, { MSG_TABLE: table, WORKERS: workers }));
      }
      // Four streams per instance: a cluster's are spread over its workers.
      for (const instance of instances) {
        for (let i = 0; i < 4; i++) {
          clients.push(await openStream(new URL('/stream.ndjson', instance.url)));
        }
      }
      await insertConcurrently(table, 500, 4, 20);
      const expected = await waitUntil(async () => {
        const rows = await deliveryOrder(table);
        return rows.length === 520 && rows.every((row) => row.seq > 0) && rows;
      }, 'all 520 rows claimed');
      for (const client of clients) {
        await client.waitFor((text) => parseNdjson(text).length >= 520, '520 rows on a stream');
      }
      // seq is 1..520 with no hole, and each stream shows exactly that order.
      assert.deepEqual(
        expected.map((row) => row.seq),
        Array.from({ length: 520 }, (_, i) => i + 1),
      );
      for (const client of clients) assert.deepEqual(ndjsonRows(client), expected);
      const claimed = instances.map((instance) =>
        instance
          .logs()
          .filter((entry) => entry.event === 'claim')
          .reduce((sum, entry) => sum + Number(entry.rows), 0),
      );
      assert.equal(
        claimed.reduce((a, b) => a + b, 0),
        520,
        `each row claimed once (by instance: ${claimed.join(', ')})`,
      );
    } finally {
      for (const client of clients) client.close();
      await Promise.all(instances.map((instance) => instance.stop()));
    }
  });
}

/** An EventSource-like client: on a broken stream it reconnects to `next()` with Last-Event-ID. */
function resumingClient(first: URL, next: () => URL) {
  const ids: string[] = [];
  let current: StreamClient | null = null;
  let counted = 0;
  let stopped = false;
  const take = () => {
    if (current === null) return;
    const events = parseSse(current.text).filter((event) => event.id !== undefined);
    for (const event of events.slice(counted)) ids.push(event.id as string);
    counted = events.length;
  };
  const connect = async (url: URL) => {
    const last = ids.at(-1);
    current = await openStream(url, last === undefined ? {} : { 'Last-Event-ID': last });
    counted = 0;
    current.ended.then(
      () => reconnect(),
      () => reconnect(),
    );
  };
  const reconnect = () => {
    take();
    if (!stopped) void connect(next());
  };
  return {
    ids: () => {
      take();
      return ids;
    },
    start: () => connect(first),
    stop() {
      stopped = true;
      current?.close();
    },
  };
}

test('SIGKILL of an instance mid-burst: its SSE clients resume on another, nothing lost or twice', async () => {
  const table = 'killed';
  const a = await startInstance(db.url, { MSG_TABLE: table });
  const b = await startInstance(db.url, { MSG_TABLE: table });
  const clients = Array.from({ length: 5 }, () =>
    resumingClient(new URL('/events', a.url), () => new URL('/events', b.url)),
  );
  try {
    await Promise.all(clients.map((client) => client.start()));
    const writer = await mysql.createConnection({ ...connectionOptions(), database: db.name });
    const total = 300;
    let inserted = 0;
    const burst = (async () => {
      // Ten rows a statement, so the burst spans many ticks of both instances.
      for (; inserted < total; inserted += 10) {
        const rows = Array.from({ length: 10 }, (_, i) => [`burst ${inserted + i}`]);
        await writer.query(`INSERT INTO ${table} (content) VALUES ?`, [rows]);
        if (inserted === 100) {
          await waitUntil(
            () => clients.every((client) => client.ids().length > 0),
            'rows on every client before the kill',
          );
          a.child.kill('SIGKILL');
        }
      }
    })();
    await burst;
    await writer.end();
    assert.equal(await a.exited, null, 'killed by the signal');
    const expected = await waitUntil(async () => {
      const rows = await deliveryOrder(table);
      return rows.length === total && rows.every((row) => row.seq > 0) && rows;
    }, 'every row claimed');
    for (const client of clients) {
      await waitUntil(
        () => client.ids().length >= total,
        `all ${total} rows on a client (has ${client.ids().length})`,
      );
      assert.deepEqual(
        client.ids(),
        expected.map((row) => row.id),
      );
    }
  } finally {
    for (const client of clients) client.stop();
    a.child.kill('SIGKILL');
    await b.stop();
  }
});
