import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from './config.js';
import { createDb, QUERY_TIMEOUT_MS } from './db.js';
import { DbAccessError, SchemaError } from './errors.js';
import type { HealthReport } from './http.js';
import type { Logger } from './log.js';
import type { Metrics } from './metrics.js';
import {
  createPoller,
  MAX_BACKOFF_MS,
  type Poller,
  type PollerHealth,
  type PollerOptions,
} from './poller.js';
import {
  createDeliveryLog,
  createReplayer,
  type Replayer,
  type ReplayerOptions,
} from './replay.js';

/** The database side of a server: the pool, the schema check and the tick loop. */
export interface Polling {
  readonly poller: Poller;
  /**
   * Applies the schema, retrying while the database is unreachable. Rejects with SchemaError or
   * DbAccessError when retrying cannot help, or with an AbortError once `close` was called.
   */
  waitForSchema(): Promise<void>;
  /** Inserts a row and wakes the poller, so it goes out now rather than at the next tick. */
  publish(content: string): Promise<string>;
  /** A replayer for resuming streams, reading through this pool between this poller's ticks. */
  replayer<W>(serve: ReplayerOptions<W>['serve'], fail: ReplayerOptions<W>['fail']): Replayer<W>;
  /** Stops the loop after the running tick has delivered and marked, then closes the pool. */
  close(): Promise<void>;
}

export function createPolling(
  config: Config,
  logger: Logger,
  deliver: PollerOptions['deliver'],
  metrics: Metrics,
): Polling {
  const log = logger.child({ mod: 'app' });
  const db = createDb(config, logger, metrics.dbError);
  const deliveries = createDeliveryLog(config.replayLimit);
  const poller = createPoller({
    db,
    async deliver(batch) {
      const streams = await deliver(batch);
      deliveries.record(batch.map((row) => row.id));
      return streams;
    },
    intervalMs: config.pollIntervalMs,
    batchSize: config.batchSize,
    logger,
    metrics,
  });
  metrics.watchPendingMarks(() => poller.health().pendingMarks);
  const stopping = new AbortController();

  return {
    poller,
    async waitForSchema() {
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
    },
    async publish(content) {
      const id = await db.insert(content);
      poller.wake();
      metrics.published();
      return id;
    },
    replayer: (serve, fail) =>
      createReplayer({
        db,
        deliveries,
        poller,
        limit: config.replayLimit,
        logger,
        serve(waiters, rows) {
          metrics.replayed('ok', waiters.length);
          serve(waiters, rows);
        },
        fail(waiters) {
          metrics.replayed('failed', waiters.length);
          fail(waiters);
        },
      }),
    async close() {
      stopping.abort();
      await poller.stop();
      await db.close();
    },
  };
}

/**
 * What /healthz answers: healthy while the last tick succeeded recently. A tick that has not
 * succeeded for 3 intervals plus a query timeout means the poller is stuck, whatever its state.
 */
export function healthReport(config: Config, poll: PollerHealth, streams: number): HealthReport {
  const staleAfterMs = 3 * config.pollIntervalMs + QUERY_TIMEOUT_MS;
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
      streams,
    },
  };
}
