import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import mysql, { type ResultSetHeader } from 'mysql2/promise';
import { startApp, type TestApp, withApp } from './helpers/app.js';
import { connectionOptions, createTestDb, type TestDb } from './helpers/db.js';
import { withDbProxy } from './helpers/proxy.js';
import { assertGapFree, placedOf, tableRows } from './helpers/seq.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// Delivery contract 1 (claimed exactly once), 2 (every stream gets every claimed row once, in seq
// order) and 7 (statements per idle tick) of docs/delivery.md, seen from curl-like clients on real
// sockets and from the statements that reach the database.

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

/** The seq of each of `ids` in the table (null when it has none). */
async function seqsOf(ids: readonly string[]): Promise<(number | null)[]> {
  const rows = new Map((await tableRows(db)).map((row) => [row.id, row.seq]));
  return ids.map((id) => rows.get(id) ?? null);
}

test('a new row reaches every open stream once, escaped, claimed with a seq that the frame carries', async () => {
  await withApp(db.url, {}, async (app) => {
    const clients = await openStreams(app, 3);
    const [id] = (await db.insert('hi <b>there</b>')) as [string];
    for (const client of clients) await client.waitForIds([id]);
    // The claim (flag = 1 and a seq) commits before the row goes to any stream.
    const [row] = (await tableRows(db)).filter((r) => r.id === id);
    assert.equal(row?.flag, 1);
    assert.ok(row?.seq !== null && row?.seq !== undefined && row.seq > 0, 'the row has a seq');
    for (const client of clients) {
      assert.deepEqual(client.messages(), [{ id, html: 'hi &lt;b&gt;there&lt;/b&gt;' }]);
      assert.deepEqual(placedOf(client.text), [{ id, seq: row.seq }]);
      assert.ok(!client.text.includes('<b>'), 'markup must arrive escaped');
    }
    for (const client of clients) client.close();
  });
});

test('fifty rows inserted at once arrive on every stream, in id order, each once; their seqs are consecutive', async () => {
  await withApp(db.url, {}, async (app) => {
    const clients = await openStreams(app, 3);
    const ids = await db.insert(...Array.from({ length: 50 }, (_, i) => `row ${i}`));
    for (const client of clients) await client.waitForIds(ids);
    // One INSERT commits the fifty at once, so one claim takes them all, in id order.
    const seqs = await seqsOf(ids);
    const first = seqs[0] as number;
    assert.deepEqual(
      seqs,
      ids.map((_, i) => first + i),
    );
    assertGapFree(await tableRows(db));
    for (const client of clients) {
      assert.deepEqual(
        placedOf(client.text),
        ids.map((id, i) => ({ id, seq: first + i })),
      );
      client.close();
    }
  });
});

test('rows already flagged are never claimed nor sent', async () => {
  await withApp(db.url, {}, async (app) => {
    const client = await openStream(app.streamUrl);
    // Inserted flagged: an insert and a later UPDATE could straddle a tick.
    const inserted = await db.query<ResultSetHeader>(
      "INSERT INTO msg (content, flag) VALUES ('already delivered', 1)",
    );
    const flagged = String(inserted.insertId);
    const [fresh] = (await db.insert('fresh')) as [string];
    await client.waitForIds([fresh]);
    assert.deepEqual(
      client.messages().map((m) => m.id),
      [fresh],
    );
    assert.deepEqual(await seqsOf([flagged]), [null], 'a flagged row gets no seq');
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
    // poll.batch is logged right after the batch is handed to the streams.
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

// The statements of a claim, in order (src/source/sql.ts builds them).
const PENDING_CHECK =
  /^SELECT \(SELECT next_seq FROM rowcast_state WHERE tbl = 'msg'\) AS next_seq,\s+\(SELECT MIN\(id\) FROM `msg` WHERE flag = 0\) AS pending_id/;
// The claim's commit carries the tail after it in the same round trip.
const COMMIT_AND_TAIL =
  /^COMMIT;\nSELECT b\.id, b\.seq, .* WHERE seq > (\d+) ORDER BY seq ASC LIMIT \d+/s;

test('an idle tick is one statement whatever the number of streams; a tick with rows pending claims exactly them, then tails once', async () => {
  await withDbProxy(async (proxy) => {
    await withApp(proxy.url(db.name), { POLL_INTERVAL_MS: '60000' }, async (app) => {
      await app.app.tailer.pollOnce(); // queued after the tick that start() ran
      const sentBy = async (tick: () => Promise<void>): Promise<string[]> => {
        const before = proxy.queries.length;
        await tick();
        return proxy.queries.slice(before);
      };
      const ticks = async (n: number) => {
        for (let i = 0; i < n; i++) await app.app.tailer.pollOnce();
      };

      for (const streams of [1, 40]) {
        const clients = await openStreams(app, streams);
        // Delivery contract 7: an idle tick is the pending check and nothing else.
        const idle = await sentBy(() => ticks(5));
        assert.equal(idle.length, 5, `5 idle ticks, ${streams} streams: ${idle.join('\n')}`);
        for (const sql of idle) assert.match(sql, PENDING_CHECK);

        const ids = await db.insert('a', 'b');
        const [counter] = await db.query<{ next_seq: string }[]>(
          "SELECT next_seq FROM rowcast_state WHERE tbl = 'msg'",
        );
        const nextSeq = Number(counter?.next_seq);
        const busy = await sentBy(() => ticks(1));
        const [a, b] = ids as [string, string];
        // The claim is three round trips of several statements each, the tail in the last.
        const expected: (string | RegExp)[] = [
          PENDING_CHECK,
          new RegExp(
            [
              'SET TRANSACTION ISOLATION LEVEL READ COMMITTED',
              'START TRANSACTION',
              "SELECT next_seq FROM rowcast_state WHERE tbl = 'msg' FOR UPDATE",
              'SELECT p\\.id, p\\.upto FROM \\(',
            ].join(';\\n'),
          ),
          `UPDATE \`msg\` SET flag = 1, seq = CASE id WHEN ${a} THEN ${nextSeq} WHEN ${b} THEN ${nextSeq + 1} END WHERE id IN (${a},${b}) AND flag = 0;\nUPDATE rowcast_state SET next_seq = ${nextSeq + 2} WHERE tbl = 'msg'`,
          COMMIT_AND_TAIL,
        ];
        assert.equal(busy.length, expected.length, busy.join('\n'));
        busy.forEach((sql, i) => {
          const want = expected[i] as string | RegExp;
          if (typeof want === 'string') assert.equal(sql, want);
          else assert.match(sql, want);
        });
        // The tail reads after the cursor, which stood at the last seq before the claim.
        assert.equal(COMMIT_AND_TAIL.exec(busy[3] as string)?.[1], String(nextSeq - 1));

        for (const client of clients) {
          await client.waitForIds(ids);
          assert.deepEqual(placedOf(client.text), [
            { id: a, seq: nextSeq },
            { id: b, seq: nextSeq + 1 },
          ]);
        }
        assert.deepEqual(await seqsOf(ids), [nextSeq, nextSeq + 1]);
        // Caught up: the next tick is idle again.
        const after = await sentBy(() => ticks(1));
        assert.equal(after.length, 1);
        for (const client of clients) client.close();
      }

      // Whatever ran, no UPDATE reached the database without naming its rows.
      const updates = proxy.queries
        .flatMap((sql) => sql.split(';\n'))
        .filter((sql) => /^\s*UPDATE/i.test(sql));
      assert.ok(updates.length >= 4);
      for (const sql of updates) {
        assert.match(
          sql,
          /^UPDATE `msg` SET .* WHERE id IN \([\d,]+\) AND flag = 0$|^UPDATE rowcast_state SET next_seq = \d+ WHERE tbl = 'msg'$/,
        );
      }
    });
  });
});

/** A connection of its own to `database`, as another program writing to the table would use. */
function writer(database: string): Promise<mysql.Connection> {
  return mysql.createConnection({ ...connectionOptions(), database });
}

test('claims racing inserts, some committed late, give every row exactly one seq; every stream of every instance gets every row once in one seq order', {
  timeout: 120_000,
}, async () => {
  // A database of its own, so that its seqs start at 1.
  const race = await createTestDb('delivery_race', { withTable: true });
  const apps: TestApp[] = [];
  const writers: mysql.Connection[] = [];
  try {
    // Three instances on one table; the test runs their ticks (a one-minute interval), several
    // at once, while other connections insert.
    for (let i = 0; i < 3; i++) {
      apps.push(await startApp(race.url, { POLL_INTERVAL_MS: '60000', BATCH_SIZE: '7' }));
    }
    for (const app of apps) await app.app.tailer.started;
    const clients = new Map<TestApp, StreamClient[]>();
    for (const app of apps) clients.set(app, await openStreams(app, 2));
    for (let i = 0; i < 5; i++) writers.push(await writer(race.name));
    const [lateA, lateB, ...plain] = writers as [
      mysql.Connection,
      mysql.Connection,
      ...mysql.Connection[],
    ];
    const insert = async (conn: mysql.Connection, ...contents: string[]) => {
      const [result] = await conn.query<ResultSetHeader>('INSERT INTO msg (content) VALUES ?', [
        contents.map((content) => [content]),
      ]);
      return contents.map((_, i) => String(result.insertId + i));
    };

    // Two transactions take their ids now and commit only after rows with larger ids went out.
    const late: string[] = [];
    for (const conn of [lateA, lateB]) {
      await conn.query('START TRANSACTION');
      late.push(...(await insert(conn, 'late 1', 'late 2')));
    }
    // Each instance claims on its own once...
    for (const [i, app] of apps.entries()) {
      await insert(plain[0] as mysql.Connection, `alone ${i}`);
      await app.app.tailer.pollOnce();
      assert.equal(app.logs.events('claim').length, 1, `instance ${i} claimed`);
    }
    // ...then all of them at once, while the writers insert and the late ones commit.
    for (let round = 0; round < 8; round++) {
      await Promise.all([
        ...plain.map((conn, w) => insert(conn, `r${round} w${w} a`, `r${round} w${w} b`)),
        ...apps.map((app) => app.app.tailer.pollOnce()),
        round === 2 ? lateA.query('COMMIT') : null,
        round === 5 ? lateB.query('COMMIT') : null,
      ]);
    }
    const total = apps.length + late.length + 8 * plain.length * 2;
    await waitUntil(
      async () => {
        await Promise.all(apps.map((app) => app.app.tailer.pollOnce()));
        const rows = await tableRows(race);
        return rows.length === total && rows.every((row) => row.seq !== null);
      },
      'every row claimed',
      30_000,
    );

    const rows = await tableRows(race);
    const order = assertGapFree(rows, 1);
    assert.equal(order.length, total);
    // Delivery contract 1: the claims of all instances add up to the rows, each claimed once.
    const claimed = apps.map((app) =>
      app.logs.events('claim').reduce((sum, e) => sum + Number(e.rows), 0),
    );
    assert.equal(
      claimed.reduce((a, b) => a + b),
      total,
      `claims per instance: ${claimed.join(', ')}`,
    );
    // The late rows were claimed after rows with larger ids: the race did happen.
    const seqOf = new Map(order.map((row) => [row.id, row.seq]));
    for (const id of late) {
      assert.ok(
        order.some((row) => BigInt(row.id) > BigInt(id) && row.seq < (seqOf.get(id) as number)),
        `late row ${id} went out after a row with a larger id`,
      );
    }
    // Delivery contract 2: every stream of every instance, every row once, in the one seq order.
    for (const [i, app] of apps.entries()) {
      for (const client of clients.get(app) ?? []) {
        await waitUntil(() => placedOf(client.text).length >= total, `instance ${i}: all rows`);
        assert.deepEqual(placedOf(client.text), order, `instance ${i}`);
        client.close();
      }
    }
  } finally {
    for (const conn of writers) await conn.end().catch(() => undefined);
    for (const app of apps) await app.close();
    await race.drop();
  }
});

test('a row flagged by another program while the claim waits for its lock: the claim is rolled back, the counter stays, the next tick goes on', {
  timeout: 60_000,
}, async () => {
  await withApp(db.url, { POLL_INTERVAL_MS: '60000' }, async (app) => {
    await app.app.tailer.pollOnce(); // after the tick start() ran
    const [counterBefore] = await db.query<{ next_seq: string }[]>(
      "SELECT next_seq FROM rowcast_state WHERE tbl = 'msg'",
    );
    const [id] = await db.insert('taken elsewhere');
    // Another program marks the row in a transaction it has not committed: the claim's pick (a
    // plain read) still sees the row pending, and its UPDATE waits for this lock.
    const other = await writer(db.name);
    try {
      await other.query('START TRANSACTION');
      await other.query('UPDATE msg SET flag = 1 WHERE id = ?', [id]);
      const tick = app.app.tailer.pollOnce();
      await waitUntil(
        async () => {
          const [waiting] = await db.query<{ n: number }[]>(
            "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE `msg` SET flag = 1, seq = CASE%'",
          );
          return Number(waiting?.n) > 0;
        },
        'the claim waits for the row lock',
        10_000,
      );
      await other.query('COMMIT');
      await tick;
      const conflict = await app.logs.waitFor('claim.conflict');
      assert.equal(conflict.picked, 1);
      assert.equal(conflict.changed, 0);
    } finally {
      await other.end();
    }
    // Rolled back: the counter did not move, and the row has no seq.
    const [counterAfter] = await db.query<{ next_seq: string }[]>(
      "SELECT next_seq FROM rowcast_state WHERE tbl = 'msg'",
    );
    assert.equal(counterAfter?.next_seq, counterBefore?.next_seq);
    const [row] = await db.query<{ seq: unknown }[]>('SELECT seq FROM msg WHERE id = ?', [id]);
    assert.equal(row?.seq, null);
    // The next row is claimed as usual, with the seq the counter held.
    const [next] = await db.insert('after the conflict');
    await app.app.tailer.pollOnce();
    const [claimed] = await db.query<{ seq: string }[]>('SELECT seq FROM msg WHERE id = ?', [next]);
    assert.equal(String(claimed?.seq), String(counterBefore?.next_seq));
  });
});
