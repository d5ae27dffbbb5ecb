import { readFileSync } from 'node:fs';
import mysql from 'mysql2/promise';
import { waitUntil } from './wait.js';

/** Where the tests find MariaDB: TEST_DATABASE_URL, or root on 127.0.0.1:3306. */
export const SERVER_URL = new URL(process.env.TEST_DATABASE_URL ?? 'mysql://root@127.0.0.1:3306/');

export interface TestDb {
  readonly name: string;
  /** A DATABASE_URL for this database. */
  readonly url: string;
  /** A direct connection (not through any proxy), for setting up and checking rows. */
  readonly conn: mysql.Connection;
  query<T = unknown>(sql: string, values?: unknown[]): Promise<T>;
  /** Inserts rows into `msg` in one statement; returns their ids in order. */
  insert(...contents: (string | null)[]): Promise<string[]>;
  /** id → flag of every row in `msg`. */
  flags(): Promise<Map<string, number>>;
  /** Waits until every one of `ids` has `flag = 1` (the mark follows the write). */
  waitMarked(ids: readonly (string | undefined)[], timeoutMs?: number): Promise<void>;
  drop(): Promise<void>;
}

/**
 * Creates a fresh database of its own for one test file (dropped by `drop`). With `withTable`
 * sql/schema.sql is run too (msg, rowcast_state and msg's counter row), so a test may start a
 * server as a user that cannot create them.
 */
export async function createTestDb(label: string, options = { withTable: false }): Promise<TestDb> {
  const name = `rowcast_t_${label}_${process.pid}`;
  const admin = await mysql.createConnection(connectionOptions());
  await admin.query(`DROP DATABASE IF EXISTS \`${name}\``);
  await admin.query(`CREATE DATABASE \`${name}\` CHARACTER SET utf8mb4`);
  await admin.end();
  const conn = await mysql.createConnection({ ...connectionOptions(), database: name });
  if (options.withTable) {
    // sql/schema.sql is several statements: the table, the state table, its counter row.
    const setup = await mysql.createConnection({
      ...connectionOptions(),
      database: name,
      multipleStatements: true,
    });
    await setup.query(readFileSync(new URL('../../../sql/schema.sql', import.meta.url), 'utf8'));
    await setup.end();
  }
  const url = new URL(SERVER_URL.href);
  url.pathname = `/${name}`;
  const query = async <T>(sql: string, values?: unknown[]) =>
    (await conn.query(sql, values))[0] as T;
  const flags = async () => {
    const rows = await query<{ id: string; flag: number }[]>(
      'SELECT id, flag FROM msg ORDER BY id',
    );
    return new Map(rows.map((row) => [String(row.id), row.flag]));
  };
  return {
    name,
    url: url.href,
    conn,
    query,
    async insert(...contents) {
      const result = await query<{ insertId: number }>('INSERT INTO msg (content) VALUES ?', [
        contents.map((content) => [content]),
      ]);
      return contents.map((_, i) => String(result.insertId + i));
    },
    flags,
    async waitMarked(ids, timeoutMs) {
      await waitUntil(
        async () => {
          const marked = await flags();
          return ids.every((id) => id !== undefined && marked.get(id) === 1);
        },
        `rows ${ids.join(',')} marked`,
        timeoutMs,
      );
    },
    async drop() {
      await conn.query(`DROP DATABASE IF EXISTS \`${name}\``);
      await conn.end();
    },
  };
}

/**
 * Runs `body` with `baseUrl` turned into the DATABASE_URL of a user of its own that may only
 * SELECT, INSERT and CREATE in the test database (so every UPDATE fails for real until the body
 * grants it). The user is dropped afterwards.
 */
export async function withoutUpdate(
  db: TestDb,
  baseUrl: string,
  body: (url: string, user: string) => Promise<void>,
): Promise<void> {
  const user = `rowcast_nu_${process.pid}`;
  const password = `pw-${process.pid}`;
  await db.query(`DROP USER IF EXISTS ?@'%'`, [user]);
  await db.query(`CREATE USER ?@'%' IDENTIFIED BY ?`, [user, password]);
  try {
    await db.query(`GRANT SELECT, INSERT, CREATE ON \`${db.name}\`.* TO ?@'%'`, [user]);
    const url = new URL(baseUrl);
    url.username = user;
    url.password = password;
    await body(url.href, user);
  } finally {
    await db.query(`DROP USER IF EXISTS ?@'%'`, [user]);
  }
}

/** A DATABASE_URL for `database` that reaches MariaDB through a relay on 127.0.0.1:`port`. */
export function databaseUrlVia(port: number, database: string): string {
  const url = new URL(SERVER_URL.href);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  url.pathname = `/${database}`;
  return url.href;
}

export function connectionOptions(): mysql.ConnectionOptions {
  return {
    host: SERVER_URL.hostname,
    port: Number(SERVER_URL.port || 3306),
    user: decodeURIComponent(SERVER_URL.username || 'root'),
    password: decodeURIComponent(SERVER_URL.password),
    charset: 'utf8mb4',
    supportBigNumbers: true,
    bigNumberStrings: true,
  };
}
