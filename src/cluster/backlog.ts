import type { RowFrames } from '../transports/transport.js';

/** A batch framed for the workers (each row addressable), its rows' channels, and its cursor. */
export interface FramedBatch {
  readonly lastSeq: number;
  readonly channels: readonly string[];
  /** By transport name. */
  readonly frames: Map<string, RowFrames>;
  /** All its frames' bytes. */
  readonly bytes: number;
}

/**
 * The batches sent to one worker and not yet written to all its streams. Each goes out at once:
 * a worker that is still writing takes it in between two slices of writes and merges it into
 * the writes it has not done yet (src/fanout/hub.ts), so nothing waits here for the worker.
 * What is counted here tells the primary when a worker no longer keeps up.
 */
export interface Backlog {
  /** Sends the batch now. */
  push(batch: FramedBatch): void;
  /** Every stream of the worker has the batches up to `lastSeq`. */
  acked(lastSeq: number): void;
  /** Batches and bytes not written yet, and how long the oldest has waited (0 when none). */
  state(now: number): { batches: number; bytes: number; waitedMs: number };
  /** Forgets everything (the worker is gone). */
  clear(): void;
}

export function createBacklog(
  send: (batch: FramedBatch) => void,
  now: () => number = Date.now,
): Backlog {
  // Sent and not acknowledged, oldest first.
  let unwritten: { lastSeq: number; bytes: number; sentAt: number }[] = [];

  return {
    push(batch) {
      unwritten.push({ lastSeq: batch.lastSeq, bytes: batch.bytes, sentAt: now() });
      send(batch);
    },
    acked(lastSeq) {
      const firstLeft = unwritten.findIndex((batch) => batch.lastSeq > lastSeq);
      unwritten = firstLeft === -1 ? [] : unwritten.slice(firstLeft);
    },
    state(at) {
      const bytes = unwritten.reduce((sum, batch) => sum + batch.bytes, 0);
      const oldest = unwritten[0]?.sentAt ?? at;
      return { batches: unwritten.length, bytes, waitedMs: at - oldest };
    },
    clear() {
      unwritten = [];
    },
  };
}
