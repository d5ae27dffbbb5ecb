import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startApp } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { withDbProxy } from './helpers/proxy.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// A restart of a server with a page per user: 1,100 streams, each on its own channel, resume at
// once (docs/delivery.md 3). Each gets exactly the rows of its channel it missed, and the round
// reads them in a few statements, not one per channel.

let db: TestDb;
before(async () => {
  db = await createTestDb('resumemany', { withTable: true });
});
after(async () => {
  await db.drop();
});

const USERS = 1_100;
const channelOf = (user: number) => `user:${user}`;

async function insertFor(users: readonly number[], label: string): Promise<string[]> {
  const result = await db.query<{ insertId: number }>(
    'INSERT INTO msg (content, channel) VALUES ?',
    [users.map((user) => [`${label} for ${user}`, channelOf(user)])],
  );
  return users.map((_, i) => String(result.insertId + i));
}

test('1,100 per-user streams resume together after a restart: each gets its missed rows, in a few reads', async () => {
  const users = Array.from({ length: USERS }, (_, i) => i);
  // Before the restart: every user saw one row of their own.
  const first = await startApp(db.url);
  let seen: string[];
  try {
    const pages = await Promise.all(
      users.map((user) =>
        openStream(new URL(`/stream.ndjson?channel=${channelOf(user)}`, first.url)),
      ),
    );
    seen = await insertFor(users, 'seen');
    await Promise.all(pages.map((page, user) => page.waitForIds([seen[user] as string])));
    for (const page of pages) page.close();
  } finally {
    await first.close();
  }
  // While it is down: two rows for every user, and one more for the even ones.
  const missed = new Map<number, string[]>(users.map((user) => [user, []]));
  for (const round of [users, users, users.filter((user) => user % 2 === 0)]) {
    const ids = await insertFor(round, 'missed');
    for (const [i, user] of round.entries()) missed.get(user)?.push(ids[i] as string);
  }
  await withDbProxy(async (proxy) => {
    const second = await startApp(proxy.url(db.name));
    let pages: StreamClient[] = [];
    try {
      // Claimed by the new server before anyone resumes (nobody is connected yet).
      await waitUntil(async () => {
        const [row] = await db.query<{ n: number }[]>(
          'SELECT COUNT(*) AS n FROM msg WHERE flag = 0',
        );
        return Number(row?.n) === 0;
      }, 'the missed rows claimed');
      const before = proxy.queries.length;
      pages = await Promise.all(
        users.map((user) =>
          openStream(
            new URL(`/stream.ndjson?channel=${channelOf(user)}&since=${seen[user]}`, second.url),
          ),
        ),
      );
      for (const [user, page] of pages.entries()) {
        const expected = missed.get(user) as string[];
        await page.waitForIds(expected);
        assert.deepEqual(page.ids(), expected, channelOf(user));
        assert.deepEqual(page.gaps(), [], `${channelOf(user)}: exact`);
      }
      const statements = proxy.queries.slice(before);
      // Each round places its ids (1,000 to a statement), then reads its subscriptions' rows, 100
      // to a statement: at most (position statements) + USERS / 100 reads.
      const rounds = statements.filter((sql) => /^SELECT \d+ AS id, p\.seq/.test(sql)).length;
      const reads = statements.filter((sql) => /ORDER BY seq DESC LIMIT/.test(sql)).length;
      assert.ok(rounds >= 1, 'resumes were read');
      assert.ok(
        reads <= rounds + Math.ceil(USERS / 100) && reads < USERS / 10,
        `${reads} replay reads in ${rounds} rounds for ${USERS} channels`,
      );
    } finally {
      for (const page of pages) page.close();
      await second.close();
    }
  });
});
