import { DbAccessError, MigrationError, SchemaError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  createStateRowSql,
  createStateTableSql,
  createTableSql,
  migrateTableSql,
  STATE_TABLE,
} from './sql.js';

/** Runs one statement (with values) and resolves with its result rows. */
export type Run = <T>(sql: string, values?: unknown[]) => Promise<T>;

/** What start learnt of the table. */
export interface TableShape {
  readonly hasCreatedAt: boolean;
  readonly hasChannel: boolean;
}

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
// A statement the user may not run (CREATE, ALTER, INSERT into the state table).
const DENIED_ERRORS = new Set([
  'ER_TABLEACCESS_DENIED_ERROR',
  'ER_DBACCESS_DENIED_ERROR',
  'ER_SPECIFIC_ACCESS_DENIED_ERROR',
  'ER_COLUMNACCESS_DENIED_ERROR',
]);

/**
 * Makes `table` a log: creates it when missing; gives an existing one (rowcast v1's, or the
 * classic id/content/flag table) its seq column and unique index with an online ALTER; creates
 * the state table and the table's counter row. Runs only the statements that are missing, so a
 * second start runs none. Rejects with SchemaError when a required column is missing,
 * MigrationError (with the statements to run) when the user may not run them, DbAccessError when
 * the database refuses us.
 */
export async function prepareTable(
  run: Run,
  table: string,
  channelColumn: string,
  database: string,
  logger: Logger,
): Promise<TableShape> {
  try {
    const columns = await run<{ name: string }[]>(
      `SELECT COLUMN_NAME AS name FROM information_schema.COLUMNS
        WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
      [table],
    );
    const have = new Set(columns.map((c) => c.name.toLowerCase()));
    const statements = await missingStatements(run, table, channelColumn, have);
    if (statements.length > 0) {
      await runAll(run, statements, table);
      const created = have.size === 0;
      logger.info(
        { event: created ? 'schema.created' : 'schema.migrated', table, statements },
        created ? `created ${table}` : `migrated ${table} to the delivery order (seq)`,
      );
      if (created) return { hasCreatedAt: true, hasChannel: true };
    }
    const missing = REQUIRED_COLUMNS.filter((name) => !have.has(name));
    if (missing.length > 0) {
      throw new SchemaError(
        `table \`${table}\` in database \`${database}\` has no column ${missing.join(', ')}; ` +
          'rowcast needs id, content and flag (see sql/schema.sql)',
      );
    }
    return {
      hasCreatedAt: have.has('created_at'),
      hasChannel: have.has(channelColumn.toLowerCase()),
    };
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && ACCESS_ERRORS.has(code)) {
      throw new DbAccessError(`database refused access: ${(err as Error).message}`, err);
    }
    throw err;
  }
}

/** The DDL (and the counter row) the table and its state still lack, in the order to run. */
async function missingStatements(
  run: Run,
  table: string,
  channelColumn: string,
  have: ReadonlySet<string>,
) {
  const statements: string[] = [];
  if (have.size === 0) {
    statements.push(createTableSql(table, channelColumn));
  } else if (REQUIRED_COLUMNS.every((name) => have.has(name))) {
    const [index] = await run<unknown[]>(
      `SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
        AND TABLE_NAME = ? AND COLUMN_NAME = 'seq' AND SEQ_IN_INDEX = 1 AND NON_UNIQUE = 0`,
      [table],
    );
    const alter = migrateTableSql(table, { seq: have.has('seq'), seqIndex: index !== undefined });
    if (alter !== null) statements.push(alter);
  } else {
    return statements; // SchemaError follows; nothing is changed
  }
  const [state] = await run<unknown[]>(
    `SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?`,
    [STATE_TABLE],
  );
  if (state === undefined) statements.push(createStateTableSql());
  const counter =
    state === undefined
      ? undefined
      : (await run<unknown[]>(`SELECT 1 FROM ${STATE_TABLE} WHERE tbl = ?`, [table]))[0];
  if (counter === undefined) statements.push(createStateRowSql(table));
  return statements;
}

async function runAll(run: Run, statements: readonly string[], table: string): Promise<void> {
  for (const [i, sql] of statements.entries()) {
    try {
      await run(sql);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code !== 'string' || !DENIED_ERRORS.has(code)) throw err;
      throw new MigrationError(
        `the database user may not prepare table \`${table}\` (${(err as Error).message}); ` +
          `run these statements as a user who may (sql/migrate.sql has them for msg), then start again:\n` +
          `${statements
            .slice(i)
            .map((s) => `${s};`)
            .join('\n')}`,
        err,
      );
    }
  }
}
