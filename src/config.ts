import { availableParallelism } from 'node:os';
import { ConfigError } from './errors.js';

export interface DbConfig {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly database: string;
}

export interface Config {
  readonly db: DbConfig;
  readonly msgTable: string;
  readonly host: string;
  readonly port: number;
  readonly pollIntervalMs: number;
  readonly batchSize: number;
  readonly padBytes: number;
  readonly heartbeatMs: number;
  readonly maxStreams: number;
  readonly maxBufferedBytes: number;
  readonly maxContentBytes: number;
  readonly logLevel: LogLevel;
  readonly workers: number;
  /** Most rows replayed to a stream that resumes (`?since=` or `Last-Event-ID`). */
  readonly replayLimit: number;
  /** Bearer token for POST /messages; null leaves publishing over HTTP off. */
  readonly publishToken: string | null;
  /** Origins allowed to read the streams cross-origin (CORS): '*', a list, or null for none. */
  readonly allowOrigin: '*' | readonly string[] | null;
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** MEDIUMTEXT holds at most 2^24 - 1 bytes; a larger cap would never apply. */
const MEDIUMTEXT_MAX_BYTES = 16_777_215;

/**
 * Reads rowcast's configuration from environment variables (see README "Configuration").
 * Pure: the caller decides where `env` comes from. Every invalid variable is reported at once in a
 * single ConfigError; an empty value counts as unset.
 */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): Config {
  const problems: string[] = [];
  const read = (name: string): string | undefined => {
    const value = env[name];
    return value === undefined || value.trim() === '' ? undefined : value.trim();
  };
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = read(name);
    if (raw === undefined) return fallback;
    const value = /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
    if (Number.isSafeInteger(value) && value >= min && value <= max) return value;
    problems.push(`${name}=${JSON.stringify(raw)}: expected an integer from ${min} to ${max}`);
    return fallback;
  };

  const config: Config = {
    // The local MariaDB of a development machine; production sets its own.
    db: parseDatabaseUrl(read('DATABASE_URL') ?? 'mysql://root@127.0.0.1:3306/test', problems),
    msgTable: parseTable(read('MSG_TABLE') ?? 'msg', problems),
    // Loopback only by default: exposing the stream is a deliberate choice.
    host: read('HOST') ?? '127.0.0.1',
    port: int('PORT', 8080, 0, 65_535),
    // One SELECT per second is cheap for the database and fast enough for chat and dashboards.
    pollIntervalMs: int('POLL_INTERVAL_MS', 1000, 10, 3_600_000),
    batchSize: int('BATCH_SIZE', 500, 1, 10_000),
    // Chromium renders a fragment at once when the charset is declared; padding buys nothing
    // (measured by test/browser.test.ts, see README "Padding").
    padBytes: int('PAD_BYTES', 0, 0, 65_536),
    // Below the 60 s idle cut of nginx and most load balancers.
    heartbeatMs: int('HEARTBEAT_MS', 15_000, 50, 3_600_000),
    maxStreams: int('MAX_STREAMS', 10_000, 1, 1_000_000),
    maxBufferedBytes: int('MAX_BUFFERED_BYTES', 1_048_576, 1024, 1_073_741_824),
    // A row larger than this is cut to this many bytes, so one hostile row cannot exhaust memory.
    maxContentBytes: int('MAX_CONTENT_BYTES', 1_048_576, 1, MEDIUMTEXT_MAX_BYTES),
    logLevel: parseLogLevel(read('LOG_LEVEL') ?? 'info', problems),
    // One worker process per core; 1 serves from a single process (no cluster).
    workers: int('WORKERS', Math.min(availableParallelism(), MAX_WORKERS), 1, MAX_WORKERS),
    // Enough for a chat page's visible history; each replay is bounded by bytes as well.
    replayLimit: int('REPLAY_LIMIT', 1000, 1, 100_000),
    publishToken: parsePublishToken(read('PUBLISH_TOKEN'), problems),
    allowOrigin: parseAllowOrigin(read('ALLOW_ORIGIN'), problems),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

function parseDatabaseUrl(raw: string, problems: string[]): DbConfig {
  const fail = (why: string): DbConfig => {
    problems.push(`DATABASE_URL=${JSON.stringify(redactPassword(raw))}: ${why}`);
    return { host: '', port: 0, user: '', password: '', database: '' };
  };
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return fail('expected a URL such as mysql://user:password@host:3306/database');
  }
  if (url.protocol !== 'mysql:' && url.protocol !== 'mariadb:') {
    return fail('expected the scheme mysql:// or mariadb://');
  }
  if (url.hostname === '') return fail('expected a host name');
  const database = decodeURIComponent(url.pathname.slice(1));
  if (database === '' || database.includes('/')) {
    return fail('expected one database name as the path, as in mysql://host/test');
  }
  if (url.search !== '') return fail('query parameters are not supported');
  return Object.freeze({
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? 3306 : Number(url.port),
    user: decodeURIComponent(url.username) || 'root',
    password: decodeURIComponent(url.password),
    database,
  });
}

/** Hides the password of a DATABASE_URL for messages and logs. */
export function redactPassword(raw: string): string {
  return raw.replace(/^([a-z]+:\/\/[^:/@]*):[^@]*@/i, '$1:***@');
}

function parseTable(raw: string, problems: string[]): string {
  // Spliced into SQL as an identifier, so only a plain name is accepted.
  if (/^[A-Za-z_][A-Za-z0-9_]{0,63}$/.test(raw)) return raw;
  problems.push(
    `MSG_TABLE=${JSON.stringify(raw)}: expected a plain table name (letters, digits, _; at most 64)`,
  );
  return 'msg';
}

// More processes than this cost memory and IPC without serving more streams on one machine.
const MAX_WORKERS = 64;

// Guessable tokens defeat the point of asking for one.
const MIN_TOKEN_CHARS = 16;

function parsePublishToken(raw: string | undefined, problems: string[]): string | null {
  if (raw === undefined) return null;
  if (raw.length >= MIN_TOKEN_CHARS && !/\s/.test(raw)) return raw;
  // The value itself is a secret: it is not repeated in the message.
  problems.push(
    `PUBLISH_TOKEN: expected at least ${MIN_TOKEN_CHARS} characters without spaces (e.g. openssl rand -hex 24)`,
  );
  return null;
}

function parseAllowOrigin(
  raw: string | undefined,
  problems: string[],
): '*' | readonly string[] | null {
  if (raw === undefined) return null;
  if (raw === '*') return '*';
  const origins = raw.split(',').map((origin) => origin.trim());
  const bad = origins.find((origin) => {
    try {
      return new URL(origin).origin !== origin;
    } catch {
      return true;
    }
  });
  if (bad === undefined) return Object.freeze(origins);
  problems.push(
    `ALLOW_ORIGIN=${JSON.stringify(raw)}: expected * or comma-separated origins such as https://example.com (${JSON.stringify(bad)} is not one)`,
  );
  return null;
}

function parseLogLevel(raw: string, problems: string[]): LogLevel {
  const level = LOG_LEVELS.find((name) => name === raw);
  if (level !== undefined) return level;
  problems.push(`LOG_LEVEL=${JSON.stringify(raw)}: expected one of ${LOG_LEVELS.join(', ')}`);
  return 'info';
}
