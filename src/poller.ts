import type { Db } from './db.js';
import type { Logger } from './log.js';
import type { Row } from './transports/transport.js';

export type PollerState = 'starting' | 'ok' | 'failing' | 'stopped';

export interface PollerHealth {
  readonly state: PollerState;
  /** When the last tick succeeded (ms since epoch), or null before the first. */
  readonly lastOkAt: number | null;
  /** Consecutive failed ticks. */
  readonly failures: number;
  /** Rows written to the streams whose `flag = 1` has not reached the database yet. */
  readonly pendingMarks: number;
}

export interface Poller {
  /** Starts the tick loop; the first tick runs at once. */
  start(): void;
  /** Runs one tick now (after any running one). Rejects when the tick fails. For tests and tools. */
  pollOnce(): Promise<void>;
  /** Makes the loop tick now instead of at the end of the interval (say, after a publish). */
  wake(): void;
  /**
   * Runs `job` between two ticks, none running meanwhile, and resolves with its result. `job` gets
   * the ids written to the streams whose mark has not reached the table yet: with those, every row
   * is either delivered or still pending while it runs.
   */
  exclusive<T>(job: (unmarked: readonly string[]) => Promise<T>): Promise<T>;
  /** Stops the loop; resolves once the running tick has delivered and marked. */
  stop(): Promise<void>;
  health(): PollerHealth;
}

export interface PollerOptions {
  readonly db: Pick<Db, 'fetchPending' | 'markDelivered'>;
  /**
   * Writes a batch to every open stream and returns how many streams got it. The poller marks the
   * rows once this has returned (or its promise has resolved).
   */
  readonly deliver: (batch: readonly Row[]) => number | Promise<number>;
  readonly intervalMs: number;
  readonly batchSize: number;
  readonly logger: Logger;
  /** Counts ticks and rows delivered (rowcast_ticks_total, …). */
  readonly metrics?: PollerMetrics;
}

/** What the poller counts: once per tick. */
export interface PollerMetrics {
  /** A tick ended, having taken `seconds`. */
  tick(result: 'ok' | 'failed', seconds: number): void;
  /** A tick wrote `rows` rows to the streams (each row once, whatever the number of streams). */
  delivered(rows: number): void;
}

const NO_METRICS: PollerMetrics = { tick() {}, delivered() {} };

/** Longest wait between two attempts while the database fails. */
export const MAX_BACKOFF_MS = 5_000;

/**
 * The tick loop and the delivery contract: one SELECT per tick, write the batch to all streams,
 * then mark exactly those ids. A failed mark keeps the ids in memory and is retried before any
 * new rows are read, so those rows are never sent twice and at most one batch waits for its mark.
 */
export function createPoller(options: PollerOptions): Poller {
  const { db, deliver, intervalMs, batchSize } = options;
  const log = options.logger.child({ mod: 'poller' });
  const metrics = options.metrics ?? NO_METRICS;
  let state: PollerState = 'starting';
  let lastOkAt: number | null = null;
  let failures = 0;
  let failingSince = 0;
  let unmarked: readonly string[] = [];
  let timer: NodeJS.Timeout | null = null;
  let running = false;
  let woken = false;
  // When the running tick started (performance.now()): ticks never overlap.
  let tickStartedAt = 0;
  // Ticks run one after another, never overlapping, whoever asks for them.
  let queue: Promise<unknown> = Promise.resolve();

  /** Returns true when the batch was full (rows or bytes), i.e. more rows are probably waiting. */
  async function tick(): Promise<boolean> {
    const started = Date.now();
    if (unmarked.length > 0) {
      await db.markDelivered(unmarked);
      log.info({ event: 'mark.retried', rows: unmarked.length }, 'delayed mark succeeded');
      unmarked = [];
    }
    const { rows: batch, more } = await db.fetchPending(batchSize);
    if (batch.length === 0) {
      log.debug({ event: 'poll.empty' }, 'no new rows');
      return false;
    }
    const streams = await deliver(batch);
    metrics.delivered(batch.length);
    unmarked = batch.map((row) => row.id);
    await db.markDelivered(unmarked);
    unmarked = [];
    log.info(
      {
        event: 'poll.batch',
        rows: batch.length,
        firstId: batch[0]?.id,
        lastId: batch[batch.length - 1]?.id,
        streams,
        ms: Date.now() - started,
      },
      'batch delivered',
    );
    return more;
  }

  function runTick(): Promise<boolean> {
    const result = queue.then(timedTick).then(
      (full) => {
        succeeded();
        return full;
      },
      (err: unknown) => {
        failed(err);
        throw err;
      },
    );
    queue = result.catch(() => undefined);
    return result;
  }

  function timedTick(): Promise<boolean> {
    tickStartedAt = performance.now();
    return tick();
  }
  const tickSeconds = () => (performance.now() - tickStartedAt) / 1000;

  function succeeded(): void {
    metrics.tick('ok', tickSeconds());
    if (state === 'failing') {
      log.info(
        { event: 'poll.recovered', failures, downMs: Date.now() - failingSince },
        'database reachable again; delivery resumed',
      );
    }
    if (state !== 'stopped') state = 'ok';
    failures = 0;
    lastOkAt = Date.now();
  }

  function failed(err: unknown): void {
    metrics.tick('failed', tickSeconds());
    failures++;
    if (state === 'failing') {
      log.debug({ event: 'poll.retry_failed', err, failures }, 'database still failing');
      return;
    }
    if (state !== 'stopped') state = 'failing';
    failingSince = Date.now();
    log.error(
      { event: 'poll.failed', err, pendingMarks: unmarked.length },
      'tick failed; streams stay open, retrying with backoff',
    );
  }

  async function loop(): Promise<void> {
    timer = null;
    woken = false;
    const started = Date.now();
    let delay = 0;
    try {
      // Ticks start POLL_INTERVAL_MS apart, not that long after the previous one ended: a tick
      // that writes to many streams would otherwise stretch the period, and the latency, by its
      // own length. Still never overlapping: the next one is scheduled only now.
      if (!(await runTick())) delay = Math.max(0, intervalMs - (Date.now() - started));
    } catch {
      delay = Math.min(intervalMs * 2 ** failures, Math.max(intervalMs, MAX_BACKOFF_MS));
    }
    if (woken && failures === 0) delay = 0;
    if (running) timer = setTimeout(loop, delay);
  }

  return {
    start() {
      if (running) return;
      running = true;
      void loop();
    },
    async pollOnce() {
      await runTick();
    },
    wake() {
      if (!running) return;
      if (timer === null) {
        woken = true; // a tick is running: the next one follows at once
        return;
      }
      clearTimeout(timer);
      timer = setTimeout(loop, 0);
    },
    exclusive(job) {
      const result = queue.then(() => job(unmarked));
      queue = result.catch(() => undefined);
      return result;
    },
    async stop() {
      running = false;
      state = 'stopped';
      if (timer !== null) clearTimeout(timer);
      timer = null;
      await queue;
    },
    health: () => ({ state, lastOkAt, failures, pendingMarks: unmarked.length }),
  };
}
