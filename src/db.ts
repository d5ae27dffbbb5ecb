import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import mysql from 'mysql2/promise';
import type { Config } from './config.js';
import { DbAccessError, SchemaError } from './errors.js';
import type { Logger } from './log.js';
import type { Row } from './transports/transport.js';

/** The database work of rowcast: one table, a handful of statements. */
export interface Db {
  /** Creates the table when missing and checks that an existing one has the columns we need. */
  ensureSchema(): Promise<void>;
  /**
   * The oldest rows with `flag = 0` in id order: at most `limit`, and no more content than
   * BATCH_MAX_BYTES (always at least one row). `more` is true when a bound stopped the read.
   */
  fetchPending(limit: number): Promise<Batch>;
  /**
   * The newest rows with an id above `since` that were delivered (`flag = 1`, or in `unmarked`:
   * written but not marked yet), in id order: at most `limit`, and no more content than
   * BATCH_MAX_BYTES. `more` is true when older ones were left out.
   */
  fetchDelivered(since: string, limit: number, unmarked: readonly string[]): Promise<Batch>;
  /**
   * These rows (ids of the table, as decimal digits), in id order; rows deleted since are
   * missing. No more content than BATCH_MAX_BYTES: the newest are kept, `more` says so.
   */
  fetchRows(ids: readonly string[]): Promise<Batch>;
  /** Inserts a row with `flag = 0`; resolves with its id. */
  insert(content: string): Promise<string>;
  /** Sets `flag = 1` on exactly these rows. */
  markDelivered(ids: readonly string[]): Promise<void>;
  close(): Promise<void>;
}

export interface Batch {
  readonly rows: Row[];
  readonly more: boolean;
}

// Content bytes per batch. Escaping can make a batch six times larger and a JS string holds at
// most ~512 M characters: BATCH_SIZE rows of MAX_CONTENT_BYTES each must not become one frame.
export const BATCH_MAX_BYTES = 8 * 1024 * 1024;

// A query on a connection that stopped answering (a network black hole) would otherwise wait for
// the kernel's TCP timeout, minutes; the tick must fail and back off instead.
export const QUERY_TIMEOUT_MS = 10_000;
const CONNECT_TIMEOUT_MS = 5_000;
const REQUIRED_COLUMNS = ['id', 'content', 'flag'] as const;
// Errors that retrying cannot fix: the operator has to change the configuration or the grants.
const ACCESS_ERRORS = new Set([
  'ER_ACCESS_DENIED_ERROR',
  // MariaDB checks an unknown user against one of its accounts picked by the name; when that one
  // allows unix_socket (Debian's root, mysql) the refusal is this code, e.g. for 'nobody'.
  'ER_ACCESS_DENIED_NO_PASSWORD_ERROR',
  'ER_DBACCESS_DENIED_ERROR',
  'ER_BAD_DB_ERROR',
  'ER_TABLEACCESS_DENIED_ERROR',
]);

/** `onError` hears of every statement that fails, whoever ran it (for rowcast_db_errors_total). */
export function createDb(config: Config, logger: Logger, onError: () => void = () => {}): Db {
  const log = logger.child({ mod: 'db' });
  const pool = mysql.createPool({
    host: config.db.host,
    port: config.db.port,
    user: config.db.user,
    password: config.db.password,
    database: config.db.database,
    charset: 'utf8mb4',
    connectTimeout: CONNECT_TIMEOUT_MS,
    connectionLimit: 2,
    maxIdle: 2,
    enableKeepAlive: true,
    supportBigNumbers: true,
    bigNumberStrings: true,
  });
  const table = `\`${config.msgTable}\``;
  const max = config.maxContentBytes;
  // One statement, however large the rows. Innermost: the next BATCH_SIZE pending ids and their
  // sizes. Then a running total, so only the rows within BATCH_MAX_BYTES come back. Content is
  // converted to UTF-8 on the server (latin1 tables exist), cut to MAX_CONTENT_BYTES there so a
  // huge row never crosses the wire whole, and sent as bytes so the cut may fall inside a
  // character: decode() below drops such a partial tail.
  const utf8 = (column: string) => `CONVERT(${column} USING utf8mb4)`;
  // Found by ensureSchema: only id, content and flag are required of an existing table.
  let createdAt = 'NULL';
  /**
   * The rows matching `where`, in id order: the first (or with `newest`, the last) `limit` of
   * them, as many as fit in BATCH_MAX_BYTES (at least one).
   */
  const selectRows = (where: string, newest: boolean) => {
    const order = newest ? 'DESC' : 'ASC';
    return `SELECT b.id, b.bytes, b.upto, ${createdAt} AS created_ms,
      LEFT(CAST(${utf8('m.content')} AS BINARY), ${max}) AS content
    FROM (
      SELECT p.id, p.bytes, SUM(LEAST(p.bytes, ${max})) OVER (ORDER BY p.id ${order}) AS upto
      FROM (
        SELECT id, COALESCE(OCTET_LENGTH(${utf8('content')}), 0) AS bytes
        FROM ${table} WHERE ${where} ORDER BY id ${order} LIMIT ?
      ) AS p
    ) AS b JOIN ${table} AS m ON m.id = b.id
    WHERE b.upto - LEAST(b.bytes, ${max}) < ${BATCH_MAX_BYTES}
    ORDER BY b.id`;
  };

  /**
   * Reads the oldest (or the newest) rows matching `where`, at most `limit`, through selectRows;
   * `more` is true when a bound (rows or bytes) left rows out. Odd rows are logged on their first
   * delivery only (`warn`), not again on every replay.
   */
  async function readRows(
    where: string,
    newest: boolean,
    values: unknown[],
    limit: number,
    warn: boolean,
  ) {
    // One row beyond the limit tells whether the limit left any out; it is not returned.
    const found = await run<FoundRow[]>(selectRows(where, newest), [...values, limit + 1]);
    const overLimit = found.length > limit;
    if (overLimit) newest ? found.shift() : found.pop();
    const upto = Math.max(0, ...found.map((raw) => Number(raw.upto)));
    const more = overLimit || upto >= BATCH_MAX_BYTES;
    const rows = found.map(toRow);
    if (warn) rows.forEach(warnIfOdd);
    return { rows, more };
  }

  function toRow(raw: FoundRow): Row {
    return {
      id: String(raw.id),
      content: raw.content === null ? null : decode(raw.content),
      truncatedFrom: Number(raw.bytes) > max ? Number(raw.bytes) : null,
      createdAt: raw.created_ms === null ? null : Number(raw.created_ms),
    };
  }

  function warnIfOdd(row: Row): void {
    if (row.content === null) {
      log.warn({ event: 'row.null', id: row.id }, 'row has NULL content; sent as empty');
    } else if (row.truncatedFrom !== null) {
      log.warn(
        { event: 'row.truncated', id: row.id, bytes: row.truncatedFrom, limit: max },
        'row content over MAX_CONTENT_BYTES; sent cut',
      );
    }
  }

  async function run<T>(sql: string, values: unknown[] = []): Promise<T> {
    const conn = await pool.getConnection().catch(failed);
    try {
      const [result] = await conn.query({ sql, values, timeout: QUERY_TIMEOUT_MS });
      conn.release();
      return result as T;
    } catch (err) {
      // The connection may be half-dead (timeout) or in an unknown state: never reuse it.
      conn.destroy();
      return failed(err);
    }
  }
  function failed(err: unknown): never {
    onError();
    throw err;
  }

  return {
    async ensureSchema() {
      try {
        await run(schemaSql(config.msgTable));
        const columns = await run<{ name: string }[]>(
          `SELECT COLUMN_NAME AS name FROM information_schema.COLUMNS
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
          [config.msgTable],
        );
        const have = new Set(columns.map((c) => c.name.toLowerCase()));
        const missing = REQUIRED_COLUMNS.filter((name) => !have.has(name));
        createdAt = have.has('created_at') ? 'ROUND(UNIX_TIMESTAMP(m.created_at) * 1000)' : 'NULL';
        if (missing.length > 0) {
          throw new SchemaError(
            `table ${table} in database \`${config.db.database}\` has no column ${missing.join(', ')}; ` +
              'rowcast needs id, content and flag (see sql/schema.sql)',
          );
        }
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        if (typeof code === 'string' && ACCESS_ERRORS.has(code)) {
          throw new DbAccessError(`database refused access: ${(err as Error).message}`, err);
        }
        throw err;
      }
    },

    fetchPending(limit) {
      return readRows('flag = 0', false, [], limit, true);
    },

    fetchDelivered(since, limit, unmarked) {
      // Rows written but whose mark has not reached the table yet count as delivered too.
      const delivered =
        unmarked.length === 0 ? 'flag = 1' : `(flag = 1 OR id IN (${unmarked.join(',')}))`;
      return readRows(`id > ? AND ${delivered}`, true, [since], limit, false);
    },

    fetchRows(ids) {
      if (ids.length === 0) return Promise.resolve({ rows: [], more: false });
      // Ids are decimal digits the poller read from the table, spliced in as numbers.
      return readRows(`id IN (${ids.join(',')})`, true, [], ids.length, false);
    },

    async insert(content) {
      const result = await run<{ insertId: number | string }>(
        `INSERT INTO ${table} (content) VALUES (?)`,
        [content],
      );
      return String(result.insertId);
    },

    async markDelivered(ids) {
      if (ids.length === 0) return;
      // Ids are decimal digits read from the table, so they are spliced in as numbers.
      await run(`UPDATE ${table} SET flag = 1 WHERE id IN (${ids.join(',')})`);
    },

    async close() {
      // A connection to a host that stopped answering would hold pool.end() forever.
      await Promise.race([pool.end(), sleep(CONNECT_TIMEOUT_MS, undefined, { ref: false })]);
    },
  };
}

interface FoundRow {
  readonly id: unknown;
  /** `created_at` in ms since the epoch, as DECIMAL text, or null. */
  readonly created_ms: unknown;
  readonly content: Buffer | null;
  /** Size of the whole content in UTF-8 bytes (0 for NULL). */
  readonly bytes: unknown;
  /** Running total of the (cut) content sizes up to this row. */
  readonly upto: unknown;
}

function schemaSql(tableName: string): string {
  const file = new URL('../../sql/schema.sql', import.meta.url);
  return readFileSync(file, 'utf8')
    .replace(/^--.*$/gm, '')
    .replace(/CREATE TABLE IF NOT EXISTS msg\b/, `CREATE TABLE IF NOT EXISTS \`${tableName}\``);
}

/** UTF-8 bytes to text; a sequence cut at the end is dropped, other invalid bytes become U+FFFD. */
function decode(bytes: Buffer): string {
  return new TextDecoder('utf-8').decode(bytes, { stream: true });
}
