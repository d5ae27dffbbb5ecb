import { matches, type Subscription } from '../core/subscription.js';
import type { Replay, ResumeRequest } from '../core/types.js';
import type { Logger } from '../log.js';
import type { Transport } from '../transports/transport.js';
import type { Framed } from './framed.js';

/**
 * Reads the replays for these resumes, up to a cursor it picks when the read starts (the last seq
 * this process has been handed, or will be handed next): the Source directly, or the cluster
 * primary over IPC. Answers in request order.
 */
export type ReadReplays = (
  requests: readonly ResumeRequest[],
) => Promise<{ upto: number; replays: readonly Replay[] }>;

/** A stream waiting for its replay. */
export interface Resuming {
  readonly transport: Transport;
  readonly subscription: Subscription;
  /** Gets the replay and the live batches since, framed, and joins the hub at once; null: failed. */
  readonly done: (frame: Buffer | null) => void;
}

export interface Resumer {
  /** Queues a replay of the rows after `since` (a row id) for `waiter`. */
  request(since: string, waiter: Resuming): void;
  /** Every live batch handed to this process's streams, so a replay in flight can catch up. */
  hold(batch: Framed): void;
}

export interface ResumerOptions {
  readonly read: ReadReplays;
  readonly logger: Logger;
  /** `streams` resuming streams got their replay (`ok`) or were ended without one. */
  readonly replayed?: (result: 'ok' | 'failed', streams: number) => void;
}

// Live batches held for the streams of one replay round: far more than a read takes (its query
// times out after 10 s), bounded so a stalled read cannot hold memory without end.
export const MAX_HELD_BATCHES = 1000;

/** The resumes of one round that share a row id and a subscription: one answer for all. */
interface Slot {
  readonly request: ResumeRequest;
  readonly waiters: Resuming[];
}

/**
 * Resumes streams (delivery contract 3 and 4): a stream that asks for the rows after a row id gets
 * those of its subscription in seq order, then every live batch's rows of it that were handed over
 * while they were read, then joins the live streams, with no gap and no duplicate. The read is
 * bounded by the cursor `upto` it started at; held batches up to `upto` are in the replay already
 * and are skipped.
 *
 * Requests that arrive while a read is running wait for the next round; each round reads once for
 * all its resumes and frames each answer once per transport. `hold` must see each batch as it is
 * written to the streams, one by one (never merged: `upto` falls between batches).
 */
export function createResumer(options: ResumerOptions): Resumer {
  const { read } = options;
  const log = options.logger.child({ mod: 'resume' });
  const replayed = options.replayed ?? (() => {});
  let waiting = new Map<string, Slot>();
  let held: Framed[] | null = null;
  let overflowed = false;
  // A round is scheduled or running; requests meanwhile wait for the next one.
  let busy = false;

  async function round(): Promise<void> {
    const slots = [...waiting.values()];
    waiting = new Map();
    held = [];
    overflowed = false;
    try {
      const { upto, replays } = await read(slots.map((slot) => slot.request));
      if (overflowed) throw new Error(`more than ${MAX_HELD_BATCHES} batches arrived meanwhile`);
      const live = held.filter((batch) => batch.lastSeq > upto);
      slots.forEach((slot, i) => {
        serve(slot, replays[i] ?? { rows: [], gap: null }, live);
      });
    } catch (err) {
      const all = slots.flatMap((slot) => slot.waiters);
      log.warn({ event: 'replay.failed', err, streams: all.length }, 'replay failed; streams end');
      for (const waiter of all) waiter.done(null);
      replayed('failed', all.length);
    } finally {
      held = null;
      if (waiting.size > 0) setImmediate(round);
      else busy = false;
    }
  }

  function serve(slot: Slot, replay: Replay, live: readonly Framed[]): void {
    const { since, subscription } = slot.request;
    // The rows of each live batch this subscription reads (null: none).
    const liveRows = live.map((batch) => rowsOf(batch, subscription));
    const frames = new Map<Transport, Buffer>();
    for (const { transport, done } of slot.waiters) {
      let frame = frames.get(transport);
      if (frame === undefined) {
        const parts = replay.gap === null ? [] : [transport.gap(replay.gap)];
        if (replay.rows.length > 0) parts.push(transport.frame(replay.rows));
        live.forEach((batch, i) => {
          const rows = liveRows[i];
          if (rows !== null) parts.push(batch.frame(transport, rows));
        });
        frame = Buffer.concat(parts);
        frames.set(transport, frame);
      }
      done(frame);
    }
    replayed('ok', slot.waiters.length);
    const entry = {
      event: 'stream.replay',
      since,
      channels: subscription.key,
      rows: replay.rows.length,
      firstSeq: replay.rows[0]?.seq,
      lastSeq: replay.rows[replay.rows.length - 1]?.seq,
      gap: replay.gap?.reason ?? null,
      streams: slot.waiters.length,
    };
    // A gap is something the client sees; an operator may want a larger REPLAY_LIMIT.
    if (replay.gap !== null) {
      log.info(entry, `resume not exact (${replay.gap.reason}); gap frame sent`);
    } else log.debug(entry, 'replayed');
  }

  return {
    request(since, waiter) {
      const key = `${since} ${waiter.subscription.key}`;
      const slot = waiting.get(key);
      if (slot !== undefined) slot.waiters.push(waiter);
      else
        waiting.set(key, {
          request: { since, subscription: waiter.subscription },
          waiters: [waiter],
        });
      // Deferred, so that a burst of reconnects (a restart) shares one read.
      if (!busy) {
        busy = true;
        setImmediate(round);
      }
    },
    hold(batch) {
      if (held === null) return;
      if (held.length >= MAX_HELD_BATCHES) overflowed = true;
      else held.push(batch);
    },
  };
}

/** The indexes of the batch's rows the subscription reads: undefined for all, null for none. */
function rowsOf(batch: Framed, subscription: Subscription): number[] | undefined | null {
  if (subscription.all) return undefined;
  const rows: number[] = [];
  batch.channels.forEach((channel, i) => {
    if (matches(subscription, channel)) rows.push(i);
  });
  return rows.length === 0 ? null : rows;
}
