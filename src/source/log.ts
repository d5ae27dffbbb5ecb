import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config.js';
import { DbAccessError, MigrationError, SchemaError } from '../errors.js';
import type { ReadReplays } from '../fanout/resumer.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { createTableSource, QUERY_TIMEOUT_MS } from './table.js';
import {
  type Batch,
  createTailer,
  MAX_BACKOFF_MS,
  type Tailer,
  type TailerHealth,
} from './tailer.js';

/** The database side of an instance: the table as a log, its tick loop, replays and publishes. */
export interface TableLog {
  readonly tailer: Tailer;
  /** Whether the table has a channel column (known once the schema is prepared). */
  readonly hasChannels: boolean;
  /**
   * Prepares the table (create or migrate), retrying while the database is unreachable. Rejects
   * with SchemaError, MigrationError or DbAccessError when retrying cannot help, or with an
   * AbortError once `close` was called.
   */
  waitForSchema(): Promise<void>;
  /** Inserts a row and wakes the tailer, so it goes out now rather than at the next tick. */
  publish(content: string, channel: string | null): Promise<string>;
  /** Replays up to the tailer's cursor when the read starts (see Resumer). */
  readonly readReplays: ReadReplays;
  /** Stops the loop after the running tick, then closes the pool. */
  close(): Promise<void>;
}

export function createTableLog(
  config: Config,
  logger: Logger,
  deliver: (batch: Batch) => number,
  metrics: Metrics,
): TableLog {
  const log = logger.child({ mod: 'app' });
  const source = createTableSource(config, logger, metrics.dbError);
  const tailer = createTailer({
    source,
    deliver,
    intervalMs: config.pollIntervalMs,
    batchSize: config.batchSize,
    logger,
    metrics,
  });
  metrics.watchTail(() => tailer.health());
  const stopping = new AbortController();

  return {
    tailer,
    get hasChannels() {
      return source.hasChannels;
    },
    async waitForSchema() {
      for (let attempt = 1; ; attempt++) {
        try {
          await source.prepare();
          if (attempt > 1)
            log.info({ event: 'db.reachable', attempts: attempt }, 'database reachable');
          return;
        } catch (err) {
          const final =
            err instanceof SchemaError ||
            err instanceof DbAccessError ||
            err instanceof MigrationError;
          if (final) throw err;
          const retryInMs = Math.min(500 * 2 ** attempt, MAX_BACKOFF_MS);
          const entry = { event: 'db.unreachable', err, attempt, retryInMs };
          if (attempt === 1)
            log.warn(entry, 'database unreachable at start; retrying until it answers');
          else log.debug(entry, 'database still unreachable');
          await sleep(retryInMs, undefined, { signal: stopping.signal });
        }
      }
    },
    async publish(content, channel) {
      const id = await source.insert(content, channel);
      tailer.wake();
      metrics.published();
      return id;
    },
    async readReplays(requests) {
      await tailer.started;
      // A client may resume from a row another instance delivered and this one has not tailed
      // yet: its replay would be empty and the tail would then send it the rows up to that one a
      // second time. Every row a client can have seen is claimed, so at most the counter: tail up
      // to it first.
      const { lastSeq } = await source.head();
      const deadline = Date.now() + QUERY_TIMEOUT_MS;
      while ((tailer.cursor ?? 0) < lastSeq) {
        if (Date.now() > deadline) throw new Error(`tail behind seq ${lastSeq}; replay given up`);
        await tailer.pollOnce();
      }
      // Read now, before the query: batches handed over from here on are past it.
      const upto = tailer.cursor ?? 0;
      return { upto, replays: await source.replay(requests, upto, config.replayLimit) };
    },
    async close() {
      stopping.abort();
      await tailer.stop();
      await source.close();
    },
  };
}

/** What /healthz and /readyz answer. */
export interface HealthReport {
  readonly healthy: boolean;
  readonly body: Readonly<Record<string, unknown>>;
}

/**
 * What /healthz answers: healthy while the last tick succeeded recently. A tick that has not
 * succeeded for 3 intervals plus a query timeout means the tailer is stuck, whatever its state.
 */
export function healthReport(config: Config, tail: TailerHealth, streams: number): HealthReport {
  const staleAfterMs = 3 * config.pollIntervalMs + QUERY_TIMEOUT_MS;
  const ageMs = tail.lastOkAt === null ? null : Date.now() - tail.lastOkAt;
  const healthy = tail.state === 'ok' && ageMs !== null && ageMs <= staleAfterMs;
  return {
    healthy,
    body: {
      status: healthy ? 'ok' : 'unavailable',
      poll: tail.state,
      lastPollAgeMs: ageMs,
      failures: tail.failures,
      seq: tail.seq,
      lagRows: tail.lagRows,
      streams,
    },
  };
}
