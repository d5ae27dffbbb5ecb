import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import mysql from 'mysql2/promise';
import type { Config } from './config.js';
import { DbAccessError, SchemaError } from './errors.js';
import type { Logger } from './log.js';
import type { Row } from './transports/transport.js';

/** The database work of rowcast: one table, three statements. */
export interface Db {
  /** Creates the table when missing and checks that an existing one has the columns we need. */
  ensureSchema(): Promise<void>;
  /** The oldest rows with `flag = 0`, at most `limit`, in id order. */
  fetchPending(limit: number): Promise<Row[]>;
  /** Sets `flag = 1` on exactly these rows. */
  markDelivered(ids: readonly string[]): Promise<void>;
  close(): Promise<void>;
}

// A query on a connection that stopped answering (a network black hole) would otherwise wait for
// the kernel's TCP timeout, minutes; the tick must fail and back off instead.
export const QUERY_TIMEOUT_MS = 10_000;
const CONNECT_TIMEOUT_MS = 5_000;
const REQUIRED_COLUMNS = ['id', 'content', 'flag'] as const;
// Errors that retrying cannot fix: the operator has to change the configuration or the grants.
const ACCESS_ERRORS = new Set([
  'ER_ACCESS_DENIED_ERROR',
  'ER_DBACCESS_DENIED_ERROR',
  'ER_BAD_DB_ERROR',
  'ER_TABLEACCESS_DENIED_ERROR',
]);

export function createDb(config: Config, logger: Logger): Db {
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
  // The content is converted to UTF-8 on the server (tables in latin1 exist), cut to
  // MAX_CONTENT_BYTES there so a huge row never crosses the wire whole, and sent as bytes so the
  // cut may fall inside a character: decode() below drops such a partial tail.
  const selectPending = `SELECT id,
      LEFT(CAST(CONVERT(content USING utf8mb4) AS BINARY), ${max}) AS content,
      OCTET_LENGTH(CONVERT(content USING utf8mb4)) AS bytes
    FROM ${table} WHERE flag = 0 ORDER BY id LIMIT ?`;

  async function run<T>(sql: string, values: unknown[] = []): Promise<T> {
    const conn = await pool.getConnection();
    try {
      const [result] = await conn.query({ sql, values, timeout: QUERY_TIMEOUT_MS });
      conn.release();
      return result as T;
    } catch (err) {
      // The connection may be half-dead (timeout) or in an unknown state: never reuse it.
      conn.destroy();
      throw err;
    }
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

    async fetchPending(limit) {
      const rows = await run<{ id: unknown; content: Buffer | null; bytes: unknown }[]>(
        selectPending,
        [limit],
      );
      return rows.map((raw) => {
        const row: Row = {
          id: String(raw.id),
          content: raw.content === null ? null : decode(raw.content),
          truncatedFrom: Number(raw.bytes) > max ? Number(raw.bytes) : null,
        };
        if (row.content === null) {
          log.warn({ event: 'row.null', id: row.id }, 'row has NULL content; sent as empty');
        } else if (row.truncatedFrom !== null) {
          log.warn(
            { event: 'row.truncated', id: row.id, bytes: row.truncatedFrom, limit: max },
            'row content over MAX_CONTENT_BYTES; sent cut',
          );
        }
        return row;
      });
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
