import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startApp, type TestApp } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { openTally } from './helpers/raw.js';
import { openStream, parseMessages, type StreamClient } from './helpers/stream.js';

// Rows that try to break the page, the encoding or the server: each arrives as a harmless
// fragment, and the rows after it still arrive.

let db: TestDb;
before(async () => {
  db = await createTestDb('hostile');
});
after(async () => {
  await db.drop();
});

async function withStream(
  env: Record<string, string>,
  body: (client: StreamClient, app: TestApp) => Promise<void>,
) {
  const app = await startApp(db.url, env);
  try {
    const client = await openStream(app.streamUrl);
    try {
      await body(client, app);
    } finally {
      client.close();
    }
  } finally {
    await app.close();
  }
}

/** Rows `ids` of `table` with the seq their claim gave them, in seq order. */
async function placedIn(
  table: string,
  ids: readonly (string | undefined)[],
): Promise<{ id: string; seq: number }[]> {
  const rows = await db.query<{ id: unknown; seq: unknown }[]>(
    `SELECT id, seq FROM \`${table}\` WHERE id IN (?) ORDER BY seq`,
    [ids],
  );
  return rows.map((row) => ({ id: String(row.id), seq: Number(row.seq) }));
}

function htmlOf(client: StreamClient, id: string | undefined): string | undefined {
  return client.messages().find((m) => m.id === id)?.html;
}

const TRUNCATED = (bytes: number) => `<span class="truncated"> … [cut from ${bytes} bytes]</span>`;

test('markup and quotes arrive escaped; no fragment can be forged', async () => {
  await withStream({}, async (client) => {
    const ids = await db.insert(
      '<script>alert(1)</script>',
      `"quoted" & 'single'`,
      '</div><div class="msg" data-id="999999">fake</div>',
    );
    await client.waitForIds(ids);
    assert.deepEqual(client.messages(), [
      { id: ids[0], html: '&lt;script&gt;alert(1)&lt;/script&gt;' },
      { id: ids[1], html: '&quot;quoted&quot; &amp; &#39;single&#39;' },
      {
        id: ids[2],
        html: '&lt;/div&gt;&lt;div class=&quot;msg&quot; data-id=&quot;999999&quot;&gt;fake&lt;/div&gt;',
      },
    ]);
    const body = client.text.slice(client.text.indexOf('<body>'));
    assert.equal(body.split('<div').length - 1, 3, 'one element per row, no injected one');
    assert.ok(!body.includes('<script'));
    assert.ok(!body.includes('data-id="999999"'));
  });
});

test('NULL content arrives as an empty fragment, is logged, and keeps its place; later rows follow', async () => {
  await withStream({}, async (client, app) => {
    await db.query('ALTER TABLE msg MODIFY content MEDIUMTEXT NULL');
    const [nullId, nextId] = await db.insert(null, 'after the NULL');
    await client.waitForIds([nullId as string, nextId as string]);
    assert.equal(htmlOf(client, nullId), '');
    assert.equal(htmlOf(client, nextId), 'after the NULL');
    const logged = await app.logs.waitFor('row.null');
    assert.equal(logged.id, nullId);
    assert.equal(app.logs.events('row.null').length, 1);
    const [later] = await db.insert('later still');
    await client.waitForIds([later as string]);
    // The NULL row took its seq like any other (docs/delivery.md 2): no hole in the order.
    const placed = await placedIn('msg', [nullId, nextId, later]);
    assert.deepEqual(client.rows(), placed);
    assert.deepEqual(
      placed.map((row) => row.seq - (placed[0]?.seq ?? 0)),
      [0, 1, 2],
    );
  });
});

test('a 1,000,000-byte row arrives whole under the default MAX_CONTENT_BYTES', async () => {
  await withStream({}, async (client, app) => {
    // 8 characters in 9 bytes, so a cut or a decoding by characters would show.
    const big = `${'abcdefgé'.repeat(111_111)}z`;
    assert.equal(Buffer.byteLength(big), 1_000_000);
    const [bigId] = await db.insert(big);
    const [nextId] = await db.insert('after the big one');
    await client.waitForIds([bigId as string, nextId as string], 20_000);
    const html = htmlOf(client, bigId) as string;
    assert.equal(Buffer.byteLength(html), 1_000_000);
    assert.ok(html === big, 'content intact');
    assert.equal(htmlOf(client, nextId), 'after the big one');
    assert.equal(app.logs.events('row.truncated').length, 0);
  });
});

test('a backlog of big rows is split into batches of at most BATCH_MAX_BYTES, none lost', async () => {
  // The reader is not the subject here: a high MAX_BUFFERED_BYTES keeps it from being cut while
  // it takes in 72 MB.
  const app = await startApp(db.url, { MAX_BUFFERED_BYTES: '268435456' });
  const client = await openTally(app.streamUrl);
  try {
    // Quotes grow sixfold when escaped: twelve such rows in one frame would be 72 MB of text.
    // One transaction, so one claim finds all twelve pending (one statement would exceed
    // max_allowed_packet).
    await db.conn.beginTransaction();
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) ids.push(...(await db.insert(`${i}${'"'.repeat(999_999)}`)));
    await db.conn.commit();
    await client.waitForCount(12, 60_000);
    assert.deepEqual(
      client.messages.map((m) => [m.id, m.length, m.head.slice(0, 12)]),
      ids.map((id, i) => [id, String(i).length + 6 * 999_999, `${i}&quot;&quot;`.slice(0, 12)]),
    );
    const batches = app.logs.events('poll.batch').map((e) => e.rows);
    assert.deepEqual(batches, [9, 3], 'rows per tick: 8 MiB of content, then the rest');
    // Two claims, one after the other: twelve consecutive seqs in id order.
    const placed = await placedIn('msg', ids);
    assert.deepEqual(
      placed.map((row) => row.id),
      ids,
    );
    assert.deepEqual(
      placed.map((row) => row.seq - (placed[0]?.seq ?? 0)),
      ids.map((_, i) => i),
    );
  } finally {
    client.close();
    await app.close();
  }
});

test('a row over MAX_CONTENT_BYTES is cut on a character boundary and marked', async () => {
  await withStream({ MAX_CONTENT_BYTES: '1000' }, async (client, app) => {
    const rows = [
      'b'.repeat(1500),
      // The cut at byte 1000 falls after the first byte of 'é' (2 bytes) …
      `${'a'.repeat(999)}${'é'.repeat(10)}`,
      // … and after the second byte of '😀' (4 bytes).
      `${'c'.repeat(998)}${'😀'.repeat(3)}`,
      'd'.repeat(1000),
    ];
    const ids = await db.insert(...rows);
    await client.waitForIds(ids);
    assert.equal(htmlOf(client, ids[0]), 'b'.repeat(1000) + TRUNCATED(1500));
    assert.equal(htmlOf(client, ids[1]), 'a'.repeat(999) + TRUNCATED(1019));
    assert.equal(htmlOf(client, ids[2]), 'c'.repeat(998) + TRUNCATED(1010));
    assert.equal(htmlOf(client, ids[3]), 'd'.repeat(1000), 'exactly the limit is not cut');
    assert.ok(!client.text.includes('\uFFFD'), 'no broken character');
    assert.deepEqual(
      app.logs.events('row.truncated').map((e) => [e.id, e.bytes, e.limit]),
      [
        [ids[0], 1500, 1000],
        [ids[1], 1019, 1000],
        [ids[2], 1010, 1000],
      ],
    );
  });
});

test('invalid UTF-8 from a binary content column becomes valid text; later rows follow', async () => {
  // A utf8mb4 TEXT column refuses invalid UTF-8; a BLOB column takes any bytes.
  await db.query(`CREATE TABLE msg_blob (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    content MEDIUMBLOB NOT NULL,
    flag TINYINT NOT NULL DEFAULT 0,
    KEY flag_id (flag, id))`);
  await withStream({ MSG_TABLE: 'msg_blob' }, async (client) => {
    await db.query(`INSERT INTO msg_blob (content) VALUES (X'61FF62C328')`);
    await db.query(`INSERT INTO msg_blob (content) VALUES (X'6F6B20C3A9')`); // 'ok é'
    const rows = await db.query<{ id: string }[]>('SELECT id FROM msg_blob ORDER BY id');
    const [bad, good] = rows.map((row) => String(row.id));
    await client.waitForIds([bad as string, good as string]);
    // MariaDB's CONVERT(… USING utf8mb4) turns each invalid byte sequence into '?'.
    assert.equal(htmlOf(client, bad), 'a?b?(');
    assert.equal(htmlOf(client, good), 'ok é');
    assert.ok(!client.text.includes('\uFFFD'), 'the stream is valid UTF-8');
    assert.deepEqual(
      parseMessages(client.text).map((m) => m.id),
      [bad, good],
    );
    // The table was given its seq column at start, and the frames carry the seqs it holds.
    assert.deepEqual(client.rows(), await placedIn('msg_blob', [bad, good]));
  });
});
