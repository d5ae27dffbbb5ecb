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
 * a later tick, which the stream joins in time for because `serve` runs before that tick. All
 * requests waiting for the same slot share one query, from the smallest `since`: the newest
 * REPLAY_LIMIT rows above a larger `since` are exactly the suffix of that answer above it.
 */
export interface Replayer<W> {
  /** Queues a replay of the rows after `since` (decimal digits) for `waiter`. */
  request(since: string, waiter: W): void;
}

export interface ReplayerOptions<W> {
  readonly db: Pick<Db, 'fetchDelivered'>;
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
  const { db, poller, limit, serve, fail } = options;
  const log = options.logger.child({ mod: 'replay' });
  let waiting = new Map<string, W[]>();

  async function run(unmarked: readonly string[]): Promise<void> {
    const groups = waiting;
    waiting = new Map();
    const sinces = [...groups.keys()].sort(compareIds);
    const from = sinces[0] as string;
    let rows: readonly Row[];
    let more: boolean;
    try {
      ({ rows, more } = await db.fetchDelivered(from, limit, unmarked));
    } catch (err) {
      const all = [...groups.values()].flat();
      log.warn({ event: 'replay.failed', err, streams: all.length }, 'replay failed; streams end');
      fail(all);
      return;
    }
    for (const since of sinces) {
      const start = rows.findIndex((row) => compareIds(row.id, since) > 0);
      serve(groups.get(since) as W[], start === -1 ? [] : rows.slice(start));
    }
    const streams = [...groups.values()].reduce((n, group) => n + group.length, 0);
    const entry = { event: 'stream.replay', since: from, rows: rows.length, streams, more };
    // Left-out rows are a gap the client sees; an operator may want a larger REPLAY_LIMIT.
    if (more) log.info(entry, 'replay reached REPLAY_LIMIT; older rows left out');
    else log.debug(entry, 'replayed');
  }

  return {
    request(since, waiter) {
      const group = waiting.get(since);
      if (group !== undefined) {
        group.push(waiter);
        return;
      }
      // The first request of a slot schedules the query; later ones join it until it starts.
      if (waiting.size === 0) {
        poller.exclusive(run).catch((err: unknown) => {
          log.error({ event: 'replay.error', err }, 'replay could not hand over its rows');
        });
      }
      waiting.set(since, [waiter]);
    },
  };
}

/** Orders row ids given as decimal digits without leading zeros (they may pass 2^53). */
export function compareIds(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}
