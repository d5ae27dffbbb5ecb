import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { ChannelError, parseChannels, type Subscription } from './core/subscription.js';
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
  /** The channel column of the table (used when the table has it). */
  readonly channelColumn: string;
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
  /** How subscribers' tokens are verified; null leaves authorization off (every stream reads every row). */
  readonly subscriberAuth: SubscriberAuth | null;
  /** The `iss` a subscriber token must carry, or null for any. */
  readonly jwtIssuer: string | null;
  /** The `aud` a subscriber token must carry, or null for any. */
  readonly jwtAudience: string | null;
  /** Channels a stream may read without a token, or null for none. */
  readonly publicChannels: Subscription | null;
  /** Most `channel` values one stream may ask for. */
  readonly maxChannels: number;
}

/** Algorithms of a public key; the algorithm comes from the configuration, never from a token. */
export const PUBLIC_KEY_ALGORITHMS = ['RS256', 'ES256', 'EdDSA'] as const;
export type PublicKeyAlgorithm = (typeof PUBLIC_KEY_ALGORITHMS)[number];

export type SubscriberAuth =
  | { readonly kind: 'hs256'; readonly secret: Uint8Array }
  | { readonly kind: 'public'; readonly algorithm: PublicKeyAlgorithm; readonly keyPem: string };

/** Most channels and patterns a grant (a token's `channels` claim, PUBLIC_CHANNELS) may list. */
export const MAX_GRANTED_CHANNELS = 1024;

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** MEDIUMTEXT holds at most 2^24 - 1 bytes; a larger cap would never apply. */
const MEDIUMTEXT_MAX_BYTES = 16_777_215;

/** What the defaults that follow the machine are computed from. */
export interface Machine {
  readonly cores: number;
  /** The process's limit of open files (its soft RLIMIT_NOFILE), null where unknown. */
  readonly openFiles: number | null;
}

/** This machine and process (Node raises the soft file limit to the hard one at start). */
export function readMachine(): Machine {
  let openFiles: number | null = null;
  try {
    const limits = readFileSync('/proc/self/limits', 'utf8');
    const soft = /^Max open files\s+(\d+)/m.exec(limits)?.[1];
    if (soft !== undefined) openFiles = Number(soft);
  } catch {
    // Not Linux: the fixed default below.
  }
  return { cores: availableParallelism(), openFiles };
}

// MAX_STREAMS where the file limit is unknown.
const FALLBACK_MAX_STREAMS = 10_000;

/**
 * MAX_STREAMS when it is not set: every stream holds a socket, so as many as the process may
 * open, less a reserve for everything else it opens (the listener, the pool, IPC, requests that
 * are not streams, streams waiting for their replay): 5 %, at least 64, at most 1,000.
 */
export function defaultMaxStreams(openFiles: number | null): number {
  if (openFiles === null) return FALLBACK_MAX_STREAMS;
  const reserve = Math.max(64, Math.min(1_000, Math.ceil(openFiles * 0.05)));
  return Math.max(1, openFiles - reserve);
}

/**
 * Reads rowcast's configuration from environment variables (see README "Configuration"), with
 * the defaults that follow the machine computed from `machine`. Pure: the caller decides where
 * `env` and `machine` come from. Every invalid variable is reported at once in a single
 * ConfigError; an empty value counts as unset.
 */
export function loadConfig(
  env: Readonly<Record<string, string | undefined>>,
  machine: Machine = readMachine(),
): Config {
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
    // New tables get this column; a table without it is one implicit channel.
    channelColumn: parseIdentifier('CHANNEL_COLUMN', read('CHANNEL_COLUMN') ?? 'channel', problems),
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
    maxStreams: int('MAX_STREAMS', defaultMaxStreams(machine.openFiles), 1, 1_000_000),
    maxBufferedBytes: int('MAX_BUFFERED_BYTES', 1_048_576, 1024, 1_073_741_824),
    // A row larger than this is cut to this many bytes, so one hostile row cannot exhaust memory.
    maxContentBytes: int('MAX_CONTENT_BYTES', 1_048_576, 1, MEDIUMTEXT_MAX_BYTES),
    logLevel: parseLogLevel(read('LOG_LEVEL') ?? 'info', problems),
    // One worker process per core; 1 serves from a single process (no cluster).
    workers: int('WORKERS', Math.min(machine.cores, MAX_WORKERS), 1, MAX_WORKERS),
    // Enough for a chat page's visible history; each replay is bounded by bytes as well.
    replayLimit: int('REPLAY_LIMIT', 1000, 1, 100_000),
    publishToken: parsePublishToken(read('PUBLISH_TOKEN'), problems),
    allowOrigin: parseAllowOrigin(read('ALLOW_ORIGIN'), problems),
    ...parseSubscriberAuth(read, problems),
    // Enough for a page that follows a few dozen rooms; each channel costs the hub a map entry.
    maxChannels: int('MAX_CHANNELS_PER_STREAM', 64, 1, MAX_GRANTED_CHANNELS),
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
  return parseIdentifier('MSG_TABLE', raw, problems, 'msg');
}

/** A table or column name: spliced into SQL as an identifier, so only a plain name is accepted. */
function parseIdentifier(name: string, raw: string, problems: string[], fallback = raw): string {
  if (/^[A-Za-z_][A-Za-z0-9_]{0,63}$/.test(raw)) return raw;
  const what = name === 'MSG_TABLE' ? 'table' : 'column';
  problems.push(
    `${name}=${JSON.stringify(raw)}: expected a plain ${what} name (letters, digits, _; at most 64)`,
  );
  return fallback;
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

type AuthFields = Pick<Config, 'subscriberAuth' | 'jwtIssuer' | 'jwtAudience' | 'publicChannels'>;

/**
 * The subscriber authorization variables. With neither key set, authorization is off, and the
 * variables that only mean something with a key are refused rather than ignored: an operator who
 * sets PUBLIC_CHANNELS (or an issuer) believes the other channels are closed.
 */
function parseSubscriberAuth(
  read: (name: string) => string | undefined,
  problems: string[],
): AuthFields {
  const secret = read('SUBSCRIBER_JWT_KEY');
  const pem = read('SUBSCRIBER_JWT_PUBLIC_KEY');
  const algorithm = read('SUBSCRIBER_JWT_ALGORITHM');
  let subscriberAuth: SubscriberAuth | null = null;
  if (secret !== undefined && pem !== undefined) {
    problems.push('SUBSCRIBER_JWT_KEY and SUBSCRIBER_JWT_PUBLIC_KEY: set one of them, not both');
  } else if (secret !== undefined) {
    subscriberAuth = parseSecret(secret, algorithm, problems);
  } else if (pem !== undefined) {
    subscriberAuth = parsePublicKey(pem, algorithm, problems);
  }
  const keySet = secret !== undefined || pem !== undefined;
  const needsKey = (name: string): string | null => {
    const value = read(name);
    if (value === undefined || keySet) return value ?? null;
    problems.push(`${name} needs SUBSCRIBER_JWT_KEY or SUBSCRIBER_JWT_PUBLIC_KEY`);
    return null;
  };
  if (!keySet && algorithm !== undefined) needsKey('SUBSCRIBER_JWT_ALGORITHM');
  const jwtIssuer = needsKey('SUBSCRIBER_JWT_ISSUER');
  const jwtAudience = needsKey('SUBSCRIBER_JWT_AUDIENCE');
  const publicRaw = needsKey('PUBLIC_CHANNELS');
  const publicChannels = publicRaw === null ? null : parsePublicChannels(publicRaw, problems);
  return { subscriberAuth, jwtIssuer, jwtAudience, publicChannels };
}

// RFC 7518 §3.2: an HS256 key shorter than the hash (32 bytes) weakens the MAC.
const MIN_HS256_SECRET_BYTES = 32;

function parseSecret(
  secret: string,
  algorithm: string | undefined,
  problems: string[],
): SubscriberAuth | null {
  // The secret key has one algorithm; naming it is allowed, naming another is a mistake.
  if (algorithm !== undefined && algorithm !== 'HS256') {
    problems.push(
      `SUBSCRIBER_JWT_ALGORITHM=${JSON.stringify(algorithm)}: SUBSCRIBER_JWT_KEY is an HS256 secret; ` +
        `${PUBLIC_KEY_ALGORITHMS.join(', ')} take SUBSCRIBER_JWT_PUBLIC_KEY`,
    );
  }
  const bytes = new TextEncoder().encode(secret);
  if (bytes.length >= MIN_HS256_SECRET_BYTES)
    return Object.freeze({ kind: 'hs256', secret: bytes });
  // The value itself is a secret: neither it nor its length is repeated in the message.
  problems.push(
    `SUBSCRIBER_JWT_KEY: expected an HS256 secret of at least ${MIN_HS256_SECRET_BYTES} bytes (e.g. openssl rand -base64 48)`,
  );
  return null;
}

const SPKI_PEM = /^-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\s]+\n-----END PUBLIC KEY-----$/;

function parsePublicKey(
  raw: string,
  algorithm: string | undefined,
  problems: string[],
): SubscriberAuth | null {
  const known = PUBLIC_KEY_ALGORITHMS.find((name) => name === algorithm);
  if (algorithm === undefined) {
    problems.push(
      `SUBSCRIBER_JWT_ALGORITHM: required with SUBSCRIBER_JWT_PUBLIC_KEY; expected one of ${PUBLIC_KEY_ALGORITHMS.join(', ')}`,
    );
  } else if (known === undefined) {
    problems.push(
      `SUBSCRIBER_JWT_ALGORITHM=${JSON.stringify(algorithm)}: expected one of ${PUBLIC_KEY_ALGORITHMS.join(', ')}`,
    );
  }
  // Env files often hold a PEM on one line, with \n for its line breaks.
  const keyPem = raw.replace(/\\n/g, '\n').replace(/\r\n/g, '\n').trim();
  const key = importSpki(keyPem);
  if (key === null) {
    // A private key would parse too (node derives its public half): the header is checked first,
    // so a private key never ends up in a public variable unnoticed.
    problems.push(
      'SUBSCRIBER_JWT_PUBLIC_KEY: expected a PEM public key (-----BEGIN PUBLIC KEY-----, SPKI); ' +
        '\\n may stand for its line breaks',
    );
    return null;
  }
  if (known === undefined) return null;
  const misfit = keyMisfit(key, known);
  if (misfit !== null) {
    problems.push(`SUBSCRIBER_JWT_PUBLIC_KEY: ${misfit}`);
    return null;
  }
  return Object.freeze({ kind: 'public', algorithm: known, keyPem });
}

/** The key of an SPKI PEM, or null when it is not one. */
function importSpki(pem: string): KeyObject | null {
  if (!SPKI_PEM.test(pem)) return null;
  try {
    return createPublicKey({ key: pem, format: 'pem' });
  } catch {
    return null;
  }
}

// jose refuses RSA keys under 2048 bits; refusing them here reports it at start, not per token.
const MIN_RSA_BITS = 2048;

/** Why `key` cannot verify `algorithm`, or null when it can. */
function keyMisfit(key: KeyObject, algorithm: PublicKeyAlgorithm): string | null {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails;
  const has = type === 'ec' ? `an EC key on ${details?.namedCurve}` : `a key of type ${type}`;
  switch (algorithm) {
    case 'RS256':
      if (type !== 'rsa') return `${has} does not fit RS256, which takes an RSA key`;
      if ((details?.modulusLength ?? 0) < MIN_RSA_BITS) {
        return `RS256 takes an RSA key of at least ${MIN_RSA_BITS} bits, not ${details?.modulusLength}`;
      }
      return null;
    case 'ES256':
      if (type === 'ec' && details?.namedCurve === 'prime256v1') return null;
      return `${has} does not fit ES256, which takes an EC P-256 key`;
    case 'EdDSA':
      if (type === 'ed25519') return null;
      return `${has} does not fit EdDSA, which takes an Ed25519 key`;
  }
}

function parsePublicChannels(raw: string, problems: string[]): Subscription | null {
  try {
    return parseChannels(
      raw.split(',').map((value) => value.trim()),
      MAX_GRANTED_CHANNELS,
    );
  } catch (err) {
    if (!(err instanceof ChannelError)) throw err;
    problems.push(`PUBLIC_CHANNELS=${JSON.stringify(raw)}: ${err.message}`);
    return null;
  }
}
