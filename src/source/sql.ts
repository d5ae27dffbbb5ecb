import type { Subscription } from '../core/subscription.js';

/**
 * The SQL of the table as a log, as pure functions of names and bounds: every statement rowcast
 * sends is built here, so unit tests can read them without a database. Identifiers are checked
 * by config (plain names only); ids and seqs spliced in are integers the database gave us.
 */

/** The state table beside the streamed ones: one row per table, holding the next seq. */
export const STATE_TABLE = 'rowcast_state';

// Content bytes per batch. Escaping can make a batch six times larger and a JS string holds at
// most ~512 M characters: BATCH_SIZE rows of MAX_CONTENT_BYTES each must not become one frame.
export const BATCH_MAX_BYTES = 8 * 1024 * 1024;

export interface TableSql {
  /** The streamed table's name (MSG_TABLE). */
  readonly table: string;
  /** MAX_CONTENT_BYTES: content is cut to this many bytes on the server. */
  readonly maxContentBytes: number;
  /** Whether the table has a created_at column. */
  readonly hasCreatedAt: boolean;
  /** Its channel column (CHANNEL_COLUMN), or null when it has none: one implicit channel. */
  readonly channelColumn: string | null;
}

const q = (name: string) => `\`${name}\``;
const utf8 = (column: string) => `CONVERT(${column} USING utf8mb4)`;

/** CREATE TABLE for a new streamed table (as sql/schema.sql, named `table`). */
export function createTableSql(table: string, channelColumn = 'channel'): string {
  const channel = q(channelColumn);
  return `CREATE TABLE IF NOT EXISTS ${q(table)} (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  content MEDIUMTEXT NOT NULL,
  flag TINYINT NOT NULL DEFAULT 0,
  created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  seq BIGINT UNSIGNED NULL DEFAULT NULL,
  ${channel} VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
  KEY flag_id (flag, id),
  UNIQUE KEY seq (seq),
  KEY channel_seq (${channel}, seq)
) DEFAULT CHARSET = utf8mb4`;
}

/**
 * The online ALTER that gives an existing table what the log needs: the seq column and/or its
 * unique index. Null when it has both.
 */
export function migrateTableSql(table: string, has: { seq: boolean; seqIndex: boolean }) {
  const changes: string[] = [];
  if (!has.seq) changes.push('ADD COLUMN seq BIGINT UNSIGNED NULL DEFAULT NULL');
  if (!has.seqIndex) changes.push('ADD UNIQUE KEY seq (seq)');
  if (changes.length === 0) return null;
  return `ALTER TABLE ${q(table)} ${changes.join(', ')},\n  ALGORITHM = INPLACE, LOCK = NONE`;
}

export function createStateTableSql(): string {
  return `CREATE TABLE IF NOT EXISTS ${STATE_TABLE} (
  tbl VARCHAR(64) NOT NULL PRIMARY KEY,
  next_seq BIGINT UNSIGNED NOT NULL
) DEFAULT CHARSET = utf8mb4`;
}

/** The table's counter row, starting after any seq already in it (a recreated state table). */
export function createStateRowSql(table: string): string {
  return `INSERT IGNORE INTO ${STATE_TABLE} (tbl, next_seq) SELECT '${table}', COALESCE(MAX(seq), 0) + 1 FROM ${q(table)}`;
}

/**
 * The pending check of every tick, one statement: the next seq to hand out (so the last one
 * claimed), and the oldest row still at flag = 0 with its age in ms (by the database's clock;
 * null without created_at).
 */
export function headSql(t: TableSql): string {
  const age = t.hasCreatedAt
    ? `(SELECT TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)) DIV 1000 FROM ${q(t.table)} WHERE flag = 0 ORDER BY id LIMIT 1)`
    : 'NULL';
  return `SELECT (SELECT next_seq FROM ${STATE_TABLE} WHERE tbl = '${t.table}') AS next_seq,
  (SELECT MIN(id) FROM ${q(t.table)} WHERE flag = 0) AS pending_id, ${age} AS pending_age_ms`;
}

/** The claim's first statement: locks the counter row; every claim waits here for the last. */
export function lockCounterSql(table: string): string {
  return `SELECT next_seq FROM ${STATE_TABLE} WHERE tbl = '${table}' FOR UPDATE`;
}

/**
 * The pending rows a claim takes: ids in id order, the first `limit` (+1, to tell whether more
 * wait) within BATCH_MAX_BYTES (always at least one). A plain, non-locking read: at READ
 * COMMITTED it sees every commit up to now and takes no gap lock that would hold up INSERTs.
 */
export function pickSql(t: TableSql, limit: number): string {
  const max = t.maxContentBytes;
  return `SELECT p.id, p.upto FROM (
  SELECT id, SUM(LEAST(bytes, ${max})) OVER (ORDER BY id) AS upto, bytes FROM (
    SELECT id, COALESCE(OCTET_LENGTH(${utf8('content')}), 0) AS bytes
    FROM ${q(t.table)} WHERE flag = 0 ORDER BY id LIMIT ${limit + 1}
  ) AS n
) AS p WHERE p.upto - LEAST(p.bytes, ${max}) < ${BATCH_MAX_BYTES} ORDER BY p.id`;
}

/**
 * Claims exactly these ids: flag = 1 and consecutive seqs from `firstSeq`, in the order given,
 * only where flag = 0 still holds (the affected-row count must equal ids.length).
 */
export function claimSql(table: string, ids: readonly string[], firstSeq: number): string {
  const cases = ids.map((id, i) => `WHEN ${id} THEN ${firstSeq + i}`).join(' ');
  return `UPDATE ${q(table)} SET flag = 1, seq = CASE id ${cases} END WHERE id IN (${ids.join(',')}) AND flag = 0`;
}

export function advanceCounterSql(table: string, nextSeq: number): string {
  return `UPDATE ${STATE_TABLE} SET next_seq = ${nextSeq} WHERE tbl = '${table}'`;
}

/**
 * Claimed rows in seq order, with `seq` between `after` (exclusive) and `upto` (inclusive, or
 * none): the first `limit` of them (the tail), or with `newest` the last (a replay), as many as
 * fit in BATCH_MAX_BYTES (at least one). One row beyond `limit` is asked for to tell whether the
 * limit left any out. Content is converted to UTF-8 on the server (latin1 tables exist), cut to
 * MAX_CONTENT_BYTES there so a huge row never crosses the wire whole, and sent as bytes.
 */
export interface RowRange {
  readonly after: number;
  readonly upto: number | null;
  readonly limit: number;
  readonly newest: boolean;
  /** Only the rows of these channels (a replay); every row when absent. */
  readonly subscription?: Subscription;
}

export function rowsSql(t: TableSql, range: RowRange): string {
  const max = t.maxContentBytes;
  const order = range.newest ? 'DESC' : 'ASC';
  const upto = range.upto === null ? '' : ` AND seq <= ${range.upto}`;
  const filter =
    range.subscription === undefined ? null : channelFilterSql(t.channelColumn, range.subscription);
  const only = filter === null ? '' : ` AND ${filter}`;
  const createdAt = t.hasCreatedAt ? 'ROUND(UNIX_TIMESTAMP(m.created_at) * 1000)' : 'NULL';
  const channel = t.channelColumn === null ? "''" : `m.${q(t.channelColumn)}`;
  return `SELECT b.id, b.seq, b.bytes, b.upto, ${createdAt} AS created_ms, ${channel} AS channel,
  LEFT(CAST(${utf8('m.content')} AS BINARY), ${max}) AS content
FROM (
  SELECT p.id, p.seq, p.bytes, SUM(LEAST(p.bytes, ${max})) OVER (ORDER BY p.seq ${order}) AS upto
  FROM (
    SELECT id, seq, COALESCE(OCTET_LENGTH(${utf8('content')}), 0) AS bytes
    FROM ${q(t.table)} WHERE seq > ${range.after}${upto}${only} ORDER BY seq ${order} LIMIT ${range.limit + 1}
  ) AS p
) AS b JOIN ${q(t.table)} AS m ON m.id = b.id
WHERE b.upto - LEAST(b.bytes, ${max}) < ${BATCH_MAX_BYTES}
ORDER BY b.seq`;
}

/**
 * Several reads of rowsSql in one statement (the replays of many subscriptions), each row tagged
 * with the index of its read as `part`. Rows come in no particular order.
 */
export function rowsManySql(t: TableSql, ranges: readonly RowRange[]): string {
  return ranges
    .map((range, part) => `SELECT ${part} AS part, r.* FROM (\n${rowsSql(t, range)}\n) AS r`)
    .join('\nUNION ALL\n');
}

/**
 * Where each row id a client resumes from stands in the delivery order: its seq, or null when it
 * has none (deleted, never claimed, or delivered before the migration); then the seq of the first
 * row after it by id, where a resume from a row without seq starts.
 */
export function positionsSql(table: string, ids: readonly string[]): string {
  // IF() evaluates only the branch it takes: the scan for the next row runs for ids without seq.
  return ids
    .map(
      (id) =>
        `SELECT ${id} AS id, p.seq, IF(p.seq IS NULL, ` +
        `(SELECT MIN(seq) FROM ${q(table)} WHERE id > ${id}), NULL) AS next_seq ` +
        `FROM (SELECT (SELECT seq FROM ${q(table)} WHERE id = ${id}) AS seq) AS p`,
    )
    .join('\nUNION ALL ');
}

export function insertSql(table: string, channelColumn: string | null): string {
  if (channelColumn === null) return `INSERT INTO ${q(table)} (content) VALUES (?)`;
  return `INSERT INTO ${q(table)} (content, ${q(channelColumn)}) VALUES (?, ?)`;
}

/**
 * The rows a subscription reads, as a condition on the channel column (null: every row). Names
 * and prefixes are spliced in: CHANNEL_NAME admits no quote or backslash. In a table without a
 * channel column every row is in the implicit channel '', which no name matches.
 */
export function channelFilterSql(column: string | null, subscription: Subscription): string | null {
  if (subscription.all) return null;
  if (column === null) return 'FALSE';
  const c = q(column);
  // The column's collation may ignore case or trailing spaces, as the live hub does not: each
  // condition the index serves is followed by the same one on the bytes.
  const bytes = `CAST(${c} AS BINARY)`;
  const parts: string[] = [];
  if (subscription.exact.length > 0) {
    const names = subscription.exact.map((name) => `'${name}'`).join(', ');
    parts.push(`(${c} IN (${names}) AND ${bytes} IN (${names}))`);
  }
  for (const prefix of subscription.prefixes) {
    // _ and % are LIKE wildcards; | is not a channel character, so it escapes them. Names are
    // ASCII: the prefix's length in characters is its length in bytes.
    const like = `${c} LIKE '${prefix.replace(/[_%|]/g, '|$&')}%' ESCAPE '|'`;
    parts.push(`(${like} AND LEFT(${bytes}, ${prefix.length}) = '${prefix}')`);
  }
  return parts.length === 1 ? (parts[0] as string) : `(${parts.join(' OR ')})`;
}

/** The seqs a claim hands out for `count` rows when the counter stands at `nextSeq`. */
export function seqRange(nextSeq: number, count: number): { first: number; next: number } {
  return { first: nextSeq, next: nextSeq + count };
}
