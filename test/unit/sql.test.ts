import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { EVERY_ROW, parseChannels } from '../../src/core/subscription.js';
import {
  channelFilterSql,
  claimSql,
  createStateRowSql,
  createStateTableSql,
  createTableSql,
  insertSql,
  migrateTableSql,
  pickSql,
  type RowRange,
  rowsManySql,
  rowsSql,
  seqRange,
  type TableSql,
} from '../../src/source/sql.js';

// The statements of the table as a log (docs/delivery.md 1, 3 and 6), read without a database,
// and the SQL files an operator runs by hand, which must say what the code does.

const MSG: TableSql = {
  table: 'msg',
  maxContentBytes: 1000,
  hasCreatedAt: true,
  channelColumn: 'channel',
};

/** The `WHEN id THEN seq` pairs of a claim, in the order written. */
function claimedSeqs(sql: string): [string, number][] {
  return [...sql.matchAll(/WHEN (\d+) THEN (\d+)/g)].map((m) => [m[1] as string, Number(m[2])]);
}

/**
 * The statements of a .sql file or of the code, comparable: `--` comments dropped, statements
 * split at `;`, runs of whitespace made one space, and identifier quotes (`msg` / msg) dropped.
 */
function statements(sql: string): string[] {
  return sql
    .replace(/--[^\n]*/g, '')
    .split(';')
    .map((statement) => statement.replace(/`/g, '').replace(/\s+/g, ' ').trim())
    .filter((statement) => statement !== '');
}

function sqlFile(name: string): string {
  return readFileSync(new URL(`../../../sql/${name}`, import.meta.url), 'utf8');
}

test('claimSql gives the ids consecutive seqs from firstSeq, in the order given', () => {
  const sql = claimSql('msg', ['7', '3', '12'], 41);
  assert.deepEqual(claimedSeqs(sql), [
    ['7', 41],
    ['3', 42],
    ['12', 43],
  ]);
  assert.match(sql, /^UPDATE `msg` SET flag = 1, seq = CASE id /);
  assert.match(sql, / WHERE id IN \(7,3,12\) AND flag = 0$/);
});

test('claimSql only ever touches the ids given that are still at flag = 0', () => {
  // Ids past 2^53 stay digits; a claim of one row is still qualified by id and flag.
  const big = '18446744073709551615';
  for (const [ids, first] of [
    [['1'], 1],
    [[big], 9_007_199_254_740_000],
    [Array.from({ length: 500 }, (_, i) => String(1000 + i)), 12],
  ] as const) {
    const sql = claimSql('t_1', ids, first);
    assert.deepEqual(
      claimedSeqs(sql),
      ids.map((id, i) => [id, first + i]),
    );
    assert.ok(sql.endsWith(`WHERE id IN (${ids.join(',')}) AND flag = 0`), sql.slice(-80));
    assert.equal(sql.match(/WHERE/g)?.length, 1, 'one WHERE, the qualified one');
  }
});

test('seqRange: count rows from the counter get first .. next - 1, and next is the new counter', () => {
  assert.deepEqual(seqRange(1, 3), { first: 1, next: 4 });
  assert.deepEqual(seqRange(41, 1), { first: 41, next: 42 });
  assert.deepEqual(seqRange(7, 0), { first: 7, next: 7 });
  // One claim after another leaves no gap and no overlap.
  const a = seqRange(1, 5);
  const b = seqRange(a.next, 2);
  assert.deepEqual([a.first, a.next - 1, b.first, b.next - 1], [1, 5, 6, 7]);
});

test('migrateTableSql adds only what is missing, online, and nothing when nothing is', () => {
  const both = migrateTableSql('msg', { seq: false, seqIndex: false });
  assert.equal(
    both,
    'ALTER TABLE `msg` ADD COLUMN seq BIGINT UNSIGNED NULL DEFAULT NULL, ADD UNIQUE KEY seq (seq),\n' +
      '  ALGORITHM = INPLACE, LOCK = NONE',
  );
  const indexOnly = migrateTableSql('php_loop', { seq: true, seqIndex: false }) ?? '';
  assert.match(indexOnly, /^ALTER TABLE `php_loop` ADD UNIQUE KEY seq \(seq\),/);
  assert.doesNotMatch(indexOnly, /ADD COLUMN/);
  const columnOnly = migrateTableSql('msg', { seq: false, seqIndex: true }) ?? '';
  assert.match(columnOnly, /^ALTER TABLE `msg` ADD COLUMN seq BIGINT UNSIGNED NULL DEFAULT NULL,/);
  assert.doesNotMatch(columnOnly, /ADD UNIQUE KEY/);
  for (const sql of [both, indexOnly, columnOnly]) {
    assert.match(sql ?? '', /ALGORITHM = INPLACE, LOCK = NONE$/);
  }
  assert.equal(migrateTableSql('msg', { seq: true, seqIndex: true }), null);
});

test('rowsSql reads after < seq <= upto, limit + 1 rows, oldest first or the newest', () => {
  const tail = rowsSql(MSG, { after: 10, upto: null, limit: 500, newest: false });
  assert.match(tail, /WHERE seq > 10 ORDER BY seq ASC LIMIT 501\b/);
  assert.doesNotMatch(tail, /seq <=/);

  const replay = rowsSql(MSG, { after: 3, upto: 2000, limit: 1000, newest: true });
  assert.match(replay, /WHERE seq > 3 AND seq <= 2000 ORDER BY seq DESC LIMIT 1001\b/);
  // The newest are picked, but the rows come back in seq order either way.
  for (const sql of [tail, replay]) {
    assert.match(sql, /\nORDER BY b\.seq$/);
    // Content is cut to MAX_CONTENT_BYTES on the server; a batch to BATCH_MAX_BYTES.
    assert.match(sql, /LEFT\(CAST\(CONVERT\(m\.content USING utf8mb4\) AS BINARY\), 1000\)/);
    assert.match(sql, /< 8388608\n/);
  }
  const plain = rowsSql(
    { ...MSG, hasCreatedAt: false },
    { after: 0, upto: 0, limit: 1, newest: false },
  );
  assert.match(plain, /WHERE seq > 0 AND seq <= 0 ORDER BY seq ASC LIMIT 2\b/);
  assert.match(plain, /NULL AS created_ms/);
  assert.doesNotMatch(plain, /created_at/);
});

test('pickSql picks pending rows only, in id order, limit + 1 of them', () => {
  const sql = pickSql(MSG, 500);
  assert.match(sql, /FROM `msg` WHERE flag = 0 ORDER BY id LIMIT 501\b/);
  assert.match(sql, /ORDER BY p\.id$/);
});

test('sql/schema.sql holds exactly the statements rowcast runs for a new table msg', () => {
  assert.deepEqual(
    statements(sqlFile('schema.sql')),
    statements(
      [createTableSql('msg'), createStateTableSql(), createStateRowSql('msg')].join(';\n'),
    ),
  );
  // The file has the log's column and index (a check that the comparison compares something).
  assert.match(sqlFile('schema.sql'), /seq BIGINT UNSIGNED NULL DEFAULT NULL,\s+channel VARCHAR/);
  assert.match(sqlFile('schema.sql'), /UNIQUE KEY seq \(seq\)/);
  assert.match(sqlFile('schema.sql'), /KEY channel_seq \(channel, seq\)/);
});

test('sql/migrate.sql holds exactly the statements rowcast runs to migrate a v1 table msg', () => {
  const migrate = migrateTableSql('msg', { seq: false, seqIndex: false });
  assert.notEqual(migrate, null);
  assert.deepEqual(
    statements(sqlFile('migrate.sql')),
    statements([migrate, createStateTableSql(), createStateRowSql('msg')].join(';\n')),
  );
});

test('the comparison of statements sees a changed statement', () => {
  // Whitespace, comments and identifier quotes do not count; a word does.
  assert.deepEqual(statements('-- x\nSELECT  1 FROM `msg`;\n'), ['SELECT 1 FROM msg']);
  assert.notDeepEqual(
    statements(createTableSql('msg')),
    statements(createTableSql('msg').replace('UNIQUE KEY seq', 'KEY seq')),
  );
});

test('channelFilterSql: names with IN, prefixes with an escaped LIKE, each also on the bytes', () => {
  const sub = parseChannels(['room_1', 'b', 'orders:*', 'a_b*'], 64);
  const bytes = 'CAST(`channel` AS BINARY)';
  assert.equal(
    channelFilterSql('channel', sub),
    `((\`channel\` IN ('b', 'room_1') AND ${bytes} IN ('b', 'room_1'))` +
      ` OR (\`channel\` LIKE 'a|_b%' ESCAPE '|' AND LEFT(${bytes}, 3) = 'a_b')` +
      ` OR (\`channel\` LIKE 'orders:%' ESCAPE '|' AND LEFT(${bytes}, 7) = 'orders:'))`,
  );
  assert.equal(
    channelFilterSql('channel', parseChannels(['x'], 64)),
    `(\`channel\` IN ('x') AND ${bytes} IN ('x'))`,
  );
  assert.equal(channelFilterSql('channel', EVERY_ROW), null);
  // A table without a channel column has only the implicit channel, which no name matches.
  assert.equal(channelFilterSql(null, sub), 'FALSE');
  const replay = rowsSql(MSG, { after: 1, upto: 9, limit: 10, newest: true, subscription: sub });
  assert.match(replay, /WHERE seq > 1 AND seq <= 9 AND \(\(`channel` IN/);
  assert.match(replay, /m\.`channel` AS channel/);
});

test('insertSql names the channel column only when the table has one', () => {
  assert.equal(insertSql('msg', null), 'INSERT INTO `msg` (content) VALUES (?)');
  assert.equal(insertSql('msg', 'room'), 'INSERT INTO `msg` (content, `room`) VALUES (?, ?)');
});

test('rowsManySql: each read tagged with its part, joined with UNION ALL', () => {
  const sub = parseChannels(['a'], 64);
  const ranges = [
    { after: 1, upto: 9, limit: 10, newest: true, subscription: sub },
    { after: 4, upto: 9, limit: 10, newest: true },
  ];
  const sql = rowsManySql(MSG, ranges);
  const parts = sql.split('\nUNION ALL\n');
  assert.equal(parts.length, 2);
  assert.equal(
    parts[0],
    `SELECT 0 AS part, r.* FROM (\n${rowsSql(MSG, ranges[0] as RowRange)}\n) AS r`,
  );
  assert.equal(
    parts[1],
    `SELECT 1 AS part, r.* FROM (\n${rowsSql(MSG, ranges[1] as RowRange)}\n) AS r`,
  );
});
