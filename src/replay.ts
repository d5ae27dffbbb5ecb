import type { Db } from './db.js';
import type { Logger } from './log.js';
import type { Poller } from './poller.js';
import type { Row } from './transports/transport.js';

/**
 * Resumes streams: a stream that asks for the rows after `since` gets the delivered ones first,
 * then joins the live streams, with no gap and no duplicate.
 *
 * The replay runs between two ticks (Poller.exclusive): every row is then either delivered
 * (`flag = 1`, or written and awaiting its mark) and in the replay, or still pending and sent by
 * a later tick, which the stream joins in time for because `serve` runs before that tick.
 *
 * "After `since`" means delivered after it. Rows become visible in commit order, so a row whose
 * transaction committed late goes out after rows with larger ids; a client that saw the larger
 * id must still get it, and one that saw it last must not get the larger ones again. The
 * DeliveryLog keeps the recent ids in the order the streams got them and answers that exactly.
 * A `since` it no longer holds (older than its last REPLAY_LIMIT rows, or from before a restart)
 * falls back to the rows with a larger id.
 *
 * All requests waiting for the same slot share one query per kind: the log's answers are
 * suffixes of the longest one, and the newest REPLAY_LIMIT rows above a larger `since` are
 * exactly the suffix above it of the answer for the smallest.
 */
export interface Replayer<W> {
  /** Queues a replay of the rows after `since` (decimal digits) for `waiter`. */
  request(since: string, waiter: W): void;
}

/** The ids written to every stream, in the order they went out. */
export interface DeliveryLog {
  /** Notes a batch once every stream has been written it. */
  record(ids: readonly string[]): void;
  /** The ids delivered after `id`, in order; null when `id` is not among the recent ones. */
  after(id: string): readonly string[] | null;
}

/** Holds at least the last `limit` ids (up to twice that: it trims in one go). */
export function createDeliveryLog(limit: number): DeliveryLog {
  let ids: string[] = [];
  return {
    record(batch) {
      for (const id of batch) ids.push(id);
      if (ids.length > 2 * limit) ids = ids.slice(-limit);
    },
    after(id) {
      const at = ids.lastIndexOf(id);
      return at === -1 ? null : ids.slice(at + 1);
    },
  };
}

export interface ReplayerOptions<W> {
  readonly db: Pick<Db, 'fetchDelivered' | 'fetchRows'>;
  readonly deliveries: DeliveryLog;
  readonly poller: Pick<Poller, 'exclusive'>;
  readonly limit: number;
  readonly logger: Logger;
  /**
   * Hands the rows to the waiters that asked from the same `since`; called between two ticks and
   * must write and join at once, before it returns.
   */
  readonly serve: (waiters: readonly W[], rows: readonly Row[]) => void;
  /** The database failed: the waiters get no replay (they should end, so clients retry). */
  readonly fail: (waiters: readonly W[]) => void;
}

export function createReplayer<W>(options: ReplayerOptions<W>): Replayer<W> {
  const { db, deliveries, poller, limit, serve, fail } = options;
  const log = options.logger.child({ mod: 'replay' });
  let waiting = new Map<string, W[]>();

  async function run(unmarked: readonly string[]): Promise<void> {
    const groups = waiting;
    waiting = new Map();
    const logged = new Map<string, readonly string[]>();
    const older: string[] = [];
    for (const since of groups.keys()) {
      const after = deliveries.after(since);
      if (after === null) older.push(since);
      else logged.set(since, after);
    }
    let replays: Replay[];
    try {
      replays = [await fromLog(logged), await byId(older.sort(compareIds), unmarked)];
    } catch (err) {
      const all = [...groups.values()].flat();
      log.warn({ event: 'replay.failed', err, streams: all.length }, 'replay failed; streams end');
      fail(all);
      return;
    }
    for (const replay of replays) {
      if (replay.rowsFor.size === 0) continue;
      let streams = 0;
      for (const [since, rows] of replay.rowsFor) {
        const waiters = groups.get(since) as W[];
        streams += waiters.length;
        serve(waiters, rows);
      }
      const entry = { event: 'stream.replay', since: replay.from, rows: replay.rows, streams };
      // Left-out rows are a gap the client sees; an operator may want a larger REPLAY_LIMIT.
      if (replay.more)
        log.info({ ...entry, more: true }, 'replay reached REPLAY_LIMIT; older rows left out');
      else log.debug({ ...entry, more: false }, 'replayed');
    }
  }

  /** Each `since` the log holds gets the rows delivered after it, in the order they went out. */
  async function fromLog(logged: ReadonlyMap<string, readonly string[]>): Promise<Replay> {
    // Every answer is a suffix of the longest; the newest REPLAY_LIMIT of it are read at once.
    let from = '';
    let longest: readonly string[] = [];
    for (const [since, ids] of logged) {
      if (from === '' || ids.length > longest.length) [from, longest] = [since, ids];
    }
    const wanted = longest.slice(-limit);
    const { rows, more } = await db.fetchRows(wanted);
    const byRowId = new Map(rows.map((row) => [row.id, row]));
    const rowsFor = new Map<string, Row[]>();
    for (const [since, ids] of logged) {
      const found: Row[] = [];
      for (const id of ids.slice(-limit)) {
        const row = byRowId.get(id);
        if (row !== undefined) found.push(row);
      }
      rowsFor.set(since, found);
    }
    return { rowsFor, from, rows: rows.length, more: more || longest.length > limit };
  }

  /** The others get the delivered rows with a larger id: one query from the smallest. */
  async function byId(sinces: readonly string[], unmarked: readonly string[]): Promise<Replay> {
    const rowsFor = new Map<string, readonly Row[]>();
    const from = sinces[0];
    if (from === undefined) return { rowsFor, from: '', rows: 0, more: false };
    const { rows, more } = await db.fetchDelivered(from, limit, unmarked);
    for (const since of sinces) {
      const start = rows.findIndex((row) => compareIds(row.id, since) > 0);
      rowsFor.set(since, start === -1 ? [] : rows.slice(start));
    }
    return { rowsFor, from, rows: rows.length, more };
  }

  return {
    request(since, waiter) {
      const group = waiting.get(since);
      if (group !== undefined) {
        group.push(waiter);
        return;
      }
      // The first request of a slot schedules the queries; later ones join them until they start.
      if (waiting.size === 0) {
        poller.exclusive(run).catch((err: unknown) => {
          log.error({ event: 'replay.error', err }, 'replay could not hand over its rows');
        });
      }
      waiting.set(since, [waiter]);
    },
  };
}

/** One query's answer: the rows for each `since` it served, and what to log about it. */
interface Replay {
  readonly rowsFor: ReadonlyMap<string, readonly Row[]>;
  /** The `since` furthest back it served. */
  readonly from: string;
  /** Rows read. */
  readonly rows: number;
  /** A bound (REPLAY_LIMIT, bytes) left older rows out. */
  readonly more: boolean;
}

/** Orders row ids given as decimal digits without leading zeros (they may pass 2^53). */
export function compareIds(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}
