/** A batch sent to a worker and not acknowledged yet. */
export interface Sent {
  readonly lastSeq: number;
  readonly bytes: number;
  readonly sentAt: number;
}

/** What the primary bounds a worker by: batches it was sent and has not written yet. */
export interface Backlog {
  /** Notes a batch sent. */
  sent(batch: Sent): void;
  /** The worker wrote every batch up to `lastSeq` (it merges, so one ack may cover several). */
  acked(lastSeq: number): void;
  /** Bytes not written yet, and how long the oldest has waited (0 when none), at `now`. */
  state(now: number): { batches: number; bytes: number; waitedMs: number };
  clear(): void;
}

export function createBacklog(): Backlog {
  let pending: Sent[] = [];
  let bytes = 0;
  return {
    sent(batch) {
      pending.push(batch);
      bytes += batch.bytes;
    },
    acked(lastSeq) {
      const keep = pending.findIndex((sent) => sent.lastSeq > lastSeq);
      const done = keep === -1 ? pending : pending.slice(0, keep);
      for (const sent of done) bytes -= sent.bytes;
      pending = keep === -1 ? [] : pending.slice(keep);
    },
    state(now) {
      const oldest = pending[0];
      return {
        batches: pending.length,
        bytes,
        waitedMs: oldest === undefined ? 0 : now - oldest.sentAt,
      };
    },
    clear() {
      pending = [];
      bytes = 0;
    },
  };
}
