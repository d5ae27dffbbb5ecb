/** Base of every error rowcast raises on purpose. Tests and callers match on `code`, never on the message. */
export class RowcastError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** One or more environment variables are invalid; `problems` has one entry per variable. */
export class ConfigError extends RowcastError {
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super('ROWCAST_CONFIG_INVALID', `invalid configuration: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

/** The message table exists but cannot be streamed from (a required column is missing). */
export class SchemaError extends RowcastError {
  constructor(message: string) {
    super('ROWCAST_SCHEMA_INVALID', message);
  }
}

/** The database refused us for a reason retrying will not fix (bad credentials, unknown database). */
export class DbAccessError extends RowcastError {
  constructor(message: string, cause: unknown) {
    super('ROWCAST_DB_ACCESS', message, { cause });
  }
}

/**
 * The table needs DDL (create, the seq column, the state table) that the database user may not
 * run; the message carries the exact statements for an operator to run.
 */
export class MigrationError extends RowcastError {
  constructor(message: string, cause: unknown) {
    super('ROWCAST_MIGRATION_REQUIRED', message, { cause });
  }
}

/** The code of a publish with a channel to a table without a channel column (a 400). */
export const NO_CHANNEL_COLUMN = 'ROWCAST_NO_CHANNEL_COLUMN';

/** A row was published with a channel, but the table has no channel column to put it in. */
export class NoChannelColumnError extends RowcastError {
  constructor(table: string, column: string) {
    super(NO_CHANNEL_COLUMN, `table ${table} has no ${column} column: publish without a channel`);
  }
}
