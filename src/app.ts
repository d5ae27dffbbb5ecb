import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from './config.js';
import { createDb, QUERY_TIMEOUT_MS } from './db.js';
import { DbAccessError, SchemaError } from './errors.js';
import { createServer, type HealthReport } from './http.js';
import { createHub, type Hub } from './hub.js';
import type { Logger } from './log.js';
import { createPoller, MAX_BACKOFF_MS, type Poller } from './poller.js';
import { createHtmlTransport } from './transports/html.js';

/** The whole server, wired: what main.ts runs and what tests start in-process on port 0. */
export interface App {
  /**
   * Waits for the database (retrying while it is unreachable), applies the schema, listens and
   * starts polling. Resolves with the base URL. Rejects with SchemaError or DbAccessError when
   * retrying cannot help.
   */
  start(): Promise<URL>;
  /** Graceful stop; every call returns the same promise. */
  close(): Promise<void>;
  readonly hub: Hub;
  readonly poller: Poller;
}

// Streams that do not take their closing frame within this time are destroyed at shutdown.
const SHUTDOWN_GRACE_MS = 3_000;

export function createApp(config: Config, logger: Logger): App {
  const log = logger.child({ mod: 'app' });
  const db = createDb(config, logger);
  const hub = createHub({
    maxBufferedBytes: config.maxBufferedBytes,
    heartbeatMs: config.heartbeatMs,
    logger,
  });
  const html = createHtmlTransport({ padBytes: config.padBytes });
  const poller = createPoller({
    db,
    deliver: (batch) => hub.broadcast((transport) => transport.frame(batch)),
    intervalMs: config.pollIntervalMs,
    batchSize: config.batchSize,
    logger,
  });
  const http = createServer(config, { hub, html, health, logger });
  const stopping = new AbortController();
  let closed: Promise<void> | null = null;

  // A tick that has not succeeded for this long means the poller is stuck, whatever its state says.
  const staleAfterMs = 3 * config.pollIntervalMs + QUERY_TIMEOUT_MS;
  function health(): HealthReport {
    const poll = poller.health();
    const ageMs = poll.lastOkAt === null ? null : Date.now() - poll.lastOkAt;
    const healthy = poll.state === 'ok' && ageMs !== null && ageMs <= staleAfterMs;
    return {
      healthy,
      body: {
        status: healthy ? 'ok' : 'unavailable',
        poll: poll.state,
        lastPollAgeMs: ageMs,
        failures: poll.failures,
        pendingMarks: poll.pendingMarks,
        streams: hub.size,
      },
    };
  }

  async function waitForSchema(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await db.ensureSchema();
        if (attempt > 1)
          log.info({ event: 'db.reachable', attempts: attempt }, 'database reachable');
        return;
      } catch (err) {
        if (err instanceof SchemaError || err instanceof DbAccessError) throw err;
        const retryInMs = Math.min(500 * 2 ** attempt, MAX_BACKOFF_MS);
        const entry = { event: 'db.unreachable', err, attempt, retryInMs };
        if (attempt === 1)
          log.warn(entry, 'database unreachable at start; retrying until it answers');
        else log.debug(entry, 'database still unreachable');
        await sleep(retryInMs, undefined, { signal: stopping.signal });
      }
    }
  }

  return {
    async start() {
      await waitForSchema();
      const url = await http.listen();
      poller.start();
      log.info(
        { event: 'server.listening', url: new URL('stream', url).href, table: config.msgTable },
        `streaming ${config.msgTable} at ${new URL('stream', url).href}`,
      );
      return url;
    },
    close() {
      closed ??= (async () => {
        stopping.abort();
        // The running tick finishes and marks, so its rows reach the streams before they end.
        await poller.stop();
        await http.close(SHUTDOWN_GRACE_MS);
        await db.close();
        log.info({ event: 'shutdown.done' }, 'stopped');
      })();
      return closed;
    },
    hub,
    poller,
  };
}
