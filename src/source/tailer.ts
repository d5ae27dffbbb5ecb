import type { Row, Rows, Source } from '../core/types.js';
import type { Logger } from '../log.js';

export type TailerState = 'starting' | 'ok' | 'failing' | 'stopped';

export interface TailerHealth {
  readonly state: TailerState;
  /** When the last tick succeeded (ms since epoch), or null before the first. */
  readonly lastOkAt: number | null;
  /** Consecutive failed ticks. */
  readonly failures: number;
  /** The cursor: the last seq handed to the fan-out (null before the first tick). */
  readonly seq: number | null;
  /** Claimed rows this instance has not tailed yet, as of the last tick. */
  readonly lagRows: number;
  /** How long the oldest row at flag = 0 has waited (s), as of the last tick; 0 when none. */
  readonly unclaimedOldestSeconds: number;
}

/** Claimed rows in seq order, and the cursor after them (the seqs up to it are all covered). */
export interface Batch {
  readonly rows: readonly Row[];
  readonly lastSeq: number;
}

export interface Tailer {
  /** Starts the tick loop; the first tick runs at once. */
  start(): void;
  /** Runs one tick now (after any running one). Rejects when the tick fails. For tests and tools. */
  pollOnce(): Promise<void>;
  /**
   * A row was just committed (a publish): the loop ticks now instead of at the end of the
   * interval, and that tick claims without a pending check first.
   */
  wake(): void;
  /** Stops the loop; resolves once the running tick has handed its batch over. */
  stop(): Promise<void>;
  /** The cursor now, or null before the first tick: what a replay must reach up to. */
  readonly cursor: number | null;
  /** Resolves once the cursor is known (the first pending check succeeded). */
  readonly started: Promise<void>;
  health(): TailerHealth;
}

export interface TailerOptions {
  readonly source: Pick<Source, 'head' | 'claim' | 'tail'>;
  /**
   * Hands a batch to the fan-out and returns how many streams got it (or were handed it). Called
   * synchronously with the cursor's move, never awaited: the next tick does not wait for writes.
   */
  readonly deliver: (batch: Batch) => number;
  readonly intervalMs: number;
  readonly batchSize: number;
  readonly logger: Logger;
  readonly metrics?: TailerMetrics;
}

/** What the tailer counts: once per tick. */
export interface TailerMetrics {
  /** A tick ended, having taken `seconds`. */
  tick(result: 'ok' | 'failed', seconds: number): void;
  /** This instance claimed `rows` rows. */
  claimed(rows: number): void;
  /** A tick handed `rows` rows to the fan-out (each row once, whatever the number of streams). */
  delivered(rows: number): void;
}

const NO_METRICS: TailerMetrics = { tick() {}, claimed() {}, delivered() {} };

/** Longest wait between two attempts while the database fails. */
export const MAX_BACKOFF_MS = 5_000;

/**
 * The tick loop of every instance (delivery contract 1, 2, 5 and 7): one pending check; a claim
 * only when rows are pending (with the tail in its commit's round trip); a tail only when the
 * counter is past the cursor. An idle tick is one statement. Whoever ticks first claims; every
 * instance tails, so all see every row in one order.
 */
export function createTailer(options: TailerOptions): Tailer {
  const { source, deliver, intervalMs, batchSize } = options;
  const log = options.logger.child({ mod: 'tailer' });
  const metrics = options.metrics ?? NO_METRICS;
  let state: TailerState = 'starting';
  let lastOkAt: number | null = null;
  let failures = 0;
  let failingSince = 0;
  let cursor: number | null = null;
  let headSeq = 0;
  // Without created_at, the oldest pending row's age is how long this instance has seen it.
  let pending: { id: string; since: number } | null = null;
  let unclaimedOldestSeconds = 0;
  let timer: NodeJS.Timeout | null = null;
  let running = false;
  let woken = false;
  // A publish committed a row since the last tick began: the next one claims at once.
  let published = false;
  let tickStartedAt = 0;
  // Ticks run one after another, never overlapping, whoever asks for them.
  let queue: Promise<unknown> = Promise.resolve();
  let markStarted = () => {};
  const started = new Promise<void>((resolve) => {
    markStarted = resolve;
  });

  /**
   * Returns true when a bound stopped the claim or the tail: more rows are waiting. `claimNow`:
   * a row is known to be pending (a publish), so the pending check is skipped once the cursor is
   * known (the claim reads the counter itself).
   */
  async function tick(claimNow: boolean): Promise<boolean> {
    const started = Date.now();
    let lastSeq: number;
    let pendingSeen: boolean;
    if (claimNow && cursor !== null) {
      lastSeq = cursor;
      pendingSeen = true;
    } else {
      const head = await source.head();
      // A stream is live-only unless it resumes: the first cursor is the table's last seq.
      if (cursor === null) {
        cursor = head.lastSeq;
        markStarted();
      }
      noteUnclaimed(head.pendingId, head.pendingAgeMs);
      lastSeq = head.lastSeq;
      pendingSeen = head.pendingId !== null;
    }
    let again = false;
    let tailed: Rows | null = null;
    if (pendingSeen) {
      const claim = await source.claim(batchSize, cursor);
      tailed = claim.tail;
      if (claim.rows > 0) {
        metrics.claimed(claim.rows);
        log.debug({ event: 'claim', rows: claim.rows, lastSeq: claim.lastSeq }, 'rows claimed');
      }
      lastSeq = Math.max(lastSeq, claim.lastSeq);
      again = claim.more;
      // It took every row that was pending: none has been waiting since.
      if (claim.rows > 0 && !claim.more) noteUnclaimed(null, null);
    }
    headSeq = Math.max(headSeq, lastSeq);
    if (lastSeq <= cursor) return again;
    const { rows, more } = tailed ?? (await source.tail(cursor, batchSize));
    const last = rows[rows.length - 1]?.seq ?? cursor;
    // Every seq up to the counter read above is visible: without `more` the cursor passes rows
    // that were deleted since their claim, too.
    cursor = more ? last : Math.max(last, lastSeq);
    headSeq = Math.max(headSeq, cursor);
    if (rows.length === 0) return again;
    const streams = deliver({ rows, lastSeq: cursor });
    metrics.delivered(rows.length);
    log.info(
      {
        event: 'poll.batch',
        rows: rows.length,
        firstSeq: rows[0]?.seq,
        lastSeq: last,
        firstId: rows[0]?.id,
        lastId: rows[rows.length - 1]?.id,
        streams,
        ms: Date.now() - started,
      },
      'batch delivered',
    );
    return again || more;
  }

  function noteUnclaimed(id: string | null, ageMs: number | null): void {
    const now = Date.now();
    if (id === null) pending = null;
    else if (pending?.id !== id) pending = { id, since: now };
    const age = id === null ? 0 : (ageMs ?? now - (pending?.since ?? now));
    unclaimedOldestSeconds = Math.max(0, age) / 1000;
  }

  function runTick(claimNow = false): Promise<boolean> {
    const result = queue
      .then(() => timedTick(claimNow))
      .then(
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

  function timedTick(claimNow: boolean): Promise<boolean> {
    tickStartedAt = performance.now();
    return tick(claimNow);
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
      { event: 'poll.failed', err, seq: cursor },
      'tick failed; streams stay open, retrying with backoff',
    );
  }

  async function loop(): Promise<void> {
    timer = null;
    woken = false;
    const claimNow = published;
    published = false;
    const started = Date.now();
    let delay = 0;
    try {
      // Ticks start POLL_INTERVAL_MS apart, not that long after the previous one ended.
      if (!(await runTick(claimNow))) delay = Math.max(0, intervalMs - (Date.now() - started));
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
      published = true;
      if (timer === null) {
        woken = true; // a tick is running: the next one follows at once
        return;
      }
      clearTimeout(timer);
      timer = setTimeout(loop, 0);
    },
    async stop() {
      running = false;
      state = 'stopped';
      if (timer !== null) clearTimeout(timer);
      timer = null;
      await queue;
    },
    get cursor() {
      return cursor;
    },
    started,
    health: () => ({
      state,
      lastOkAt,
      failures,
      seq: cursor,
      lagRows: cursor === null ? 0 : Math.max(0, headSeq - cursor),
      unclaimedOldestSeconds,
    }),
  };
}
