import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { withApp } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { openStream } from './helpers/stream.js';

// Channel names are compared byte for byte, live and in a replay alike, whatever the column's
// collation: a resume of `user:42` never gets the rows of `USER:42` or `user:42 `.

let db: TestDb;
before(async () => {
  db = await createTestDb('chbytes');
  // A channel column as an application may have made it: case- and pad-insensitive.
  await db.query(`CREATE TABLE msg (
    id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, content TEXT NOT NULL,
    flag TINYINT NOT NULL DEFAULT 0,
    channel VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL DEFAULT '',
    KEY flag_id (flag, id)) DEFAULT CHARSET = utf8mb4`);
});
after(async () => {
  await db.drop();
});

async function insert(channel: string, content: string): Promise<string> {
  const result = await db.query<{ insertId: number }>(
    'INSERT INTO msg (content, channel) VALUES (?, ?)',
    [content, channel],
  );
  return String(result.insertId);
}

const QUERIES = ['channel=user:42', 'channel=user:4*', 'channel=user:*', 'channel=USER:42'];

test('a resume gets exactly what a live stream of the same channels got, byte for byte', async () => {
  await withApp(db.url, {}, async (app) => {
    const early = await openStream(new URL('/stream.ndjson', app.url));
    const first = await insert('user:42', 'seen');
    await early.waitForIds([first]);
    early.close();
    const lives = await Promise.all(
      QUERIES.map((query) => openStream(new URL(`/stream.ndjson?${query}`, app.url))),
    );
    const ids = [
      await insert('USER:42', 'other case'),
      await insert('user:42 ', 'trailing space'),
      await insert('us_r:42', 'a LIKE wildcard'),
      await insert('user:42', 'mine'),
    ];
    const watcher = await openStream(new URL('/stream.ndjson', app.url));
    await watcher.waitForIds(ids);
    watcher.close();
    const expected = [[ids[3]], [ids[1], ids[3]], [ids[1], ids[3]], [ids[0]]];
    for (const [i, query] of QUERIES.entries()) {
      const live = lives[i] as (typeof lives)[number];
      await live.waitForIds(expected[i] as string[]);
      assert.deepEqual(live.ids(), expected[i], `live ${query}`);
      live.close();
      const resumed = await openStream(new URL(`/stream.ndjson?${query}&since=${first}`, app.url));
      await resumed.waitForIds(expected[i] as string[]);
      assert.deepEqual(resumed.ids(), expected[i], `resumed ${query}`);
      resumed.close();
    }
  });
});
