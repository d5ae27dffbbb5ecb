import { once } from 'node:events';
import http from 'node:http';
import { type App, createApp } from '../../src/app.js';
import { type Config, loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { createLogRecorder, type LogRecorder, testEnv } from './app.js';
import { waitUntil } from './wait.js';

/** A wired app that has not been started: for tests that watch `start()` itself. */
export interface UnstartedApp {
  readonly app: App;
  readonly config: Config;
  readonly logs: LogRecorder;
}

/** Like `startApp`, with the same test defaults, but leaves `app.start()` to the test. */
export function createUnstartedApp(
  databaseUrl: string,
  env: Record<string, string> = {},
): UnstartedApp {
  const config = loadConfig(testEnv(databaseUrl, env));
  const logs = createLogRecorder();
  const app = createApp(config, createLogger(config.logLevel, logs.stream));
  return { app, config, logs };
}

/** An answer of GET /healthz or /readyz (the same body; /readyz says `ready` or `closing`). */
export interface Health {
  readonly status: number;
  readonly body: {
    readonly status: string;
    readonly poll: string;
    /** Since the last good tick; null before the first. */
    readonly lastPollAgeMs: number | null;
    readonly failures: number;
    /** The tailer's cursor: the last seq handed to the streams (null before the first tick). */
    readonly seq: number | null;
    /** Claimed rows this instance has not tailed yet. */
    readonly lagRows: number;
    readonly streams: number;
  };
}

/** GET /healthz (or /readyz) on a connection of its own (no keep-alive left behind). */
export async function getHealth(
  baseUrl: URL,
  path: '/healthz' | '/readyz' = '/healthz',
): Promise<Health> {
  const req = http.get(new URL(path, baseUrl), { agent: false });
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  let body = '';
  res.setEncoding('utf8');
  for await (const chunk of res) body += chunk;
  return { status: res.statusCode ?? 0, body: JSON.parse(body) as Health['body'] };
}

/** Open TCP sockets of this process (both ends of a loopback connection count). */
export function tcpSockets(): number {
  return process.getActiveResourcesInfo().filter((name) => name === 'TCPSocketWrap').length;
}

/**
 * Waits until this process has no more TCP sockets than `baseline`: the connections of a closed
 * app, through a DbProxy too, are fully gone. Call it before `DbProxy.cut()` or `close()` after
 * an app was closed: `resetAndDestroy()` on a socket whose FIN is still being sent fails with
 * EINVAL in Node 20 and leaks its handle, and the process then spins forever at exit.
 */
export async function waitForSockets(baseline: number): Promise<void> {
  await waitUntil(() => tcpSockets() <= baseline, `at most ${baseline} open TCP sockets`);
}
