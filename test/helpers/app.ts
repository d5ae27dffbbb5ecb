import { Writable } from 'node:stream';
import { type App, createApp, type SingleApp } from '../../src/app.js';
import { createClusterPrimary } from '../../src/cluster/primary.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { waitUntil } from './wait.js';

export interface LogEntry {
  readonly level: string;
  readonly event?: string;
  readonly [field: string]: unknown;
}

/** Collects the server's pino lines, parsed, so tests can assert on events. */
export interface LogRecorder {
  readonly entries: LogEntry[];
  events(name: string): LogEntry[];
  waitFor(name: string, timeoutMs?: number): Promise<LogEntry>;
}

export interface TestApp {
  readonly app: SingleApp;
  /** Base URL, e.g. http://127.0.0.1:39123/ */
  readonly url: URL;
  /** The URL of GET /stream. */
  readonly streamUrl: URL;
  readonly logs: LogRecorder;
  close(): Promise<void>;
}

/**
 * Starts the real server in-process on an ephemeral port against `databaseUrl`. `env` overrides
 * the test defaults (50 ms ticks, debug logs). Set ROWCAST_TEST_LOGS=1 to see the logs on stderr.
 */
/** The environment every test server starts from: port 0, 50 ms ticks, debug logs; `env` wins. */
export function testEnv(databaseUrl: string, env: Record<string, string>): Record<string, string> {
  return {
    DATABASE_URL: databaseUrl,
    PORT: '0',
    POLL_INTERVAL_MS: '50',
    LOG_LEVEL: 'debug',
    ...env,
  };
}

export async function startApp(
  databaseUrl: string,
  env: Record<string, string> = {},
): Promise<TestApp> {
  const config = loadConfig(testEnv(databaseUrl, { WORKERS: '1', ...env }));
  const logs = createLogRecorder();
  const app = createApp(config, createLogger(config.logLevel, logs.stream));
  const url = await app.start();
  return {
    app,
    url,
    streamUrl: new URL('/stream', url),
    logs,
    close: () => app.close(),
  };
}

/** Runs `body` against a test server of its own, closed afterwards whatever happens. */
export async function withApp(
  databaseUrl: string,
  env: Record<string, string>,
  body: (app: TestApp) => Promise<void>,
): Promise<void> {
  const app = await startApp(databaseUrl, env);
  try {
    await body(app);
  } finally {
    await app.close();
  }
}

export function createLogRecorder(): LogRecorder & { stream: Writable } {
  const entries: LogEntry[] = [];
  const echo = process.env.ROWCAST_TEST_LOGS === '1';
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line === '') continue;
        entries.push(parseLine(line));
        if (echo) process.stderr.write(`${line}\n`);
      }
      done();
    },
  });
  const events = (name: string) => entries.filter((entry) => entry.event === name);
  return {
    entries,
    events,
    waitFor: (name, timeoutMs) => waitUntil(() => events(name)[0], `log event ${name}`, timeoutMs),
    stream,
  };
}

export interface TestCluster {
  readonly app: App;
  readonly url: URL;
  readonly streamUrl: URL;
  /** The primary's and the workers' log lines. */
  readonly logs: LogRecorder;
  close(): Promise<void>;
}

/**
 * Starts the multi-process server: the primary runs in this process, the workers are forked from
 * dist/src/worker.js. Their log lines are collected with the primary's.
 */
export async function startCluster(
  databaseUrl: string,
  workers: number,
  env: Record<string, string> = {},
): Promise<TestCluster> {
  const fullEnv = testEnv(databaseUrl, { ...env, WORKERS: String(workers) });
  const config = loadConfig(fullEnv);
  const logs = createLogRecorder();
  const app = createClusterPrimary(config, createLogger(config.logLevel, logs.stream), {
    env: fullEnv,
    workerOutput: (line) => logs.stream.write(`${line}\n`),
  });
  const url = await app.start();
  return { app, url, streamUrl: new URL('/stream', url), logs, close: () => app.close() };
}

/** A log line as an entry; a line that is not JSON (a crash trace) is kept as `raw`. */
function parseLine(line: string): LogEntry {
  try {
    return JSON.parse(line) as LogEntry;
  } catch {
    return { level: 'raw', line };
  }
}
