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
 * The batches on their way to one worker. One message is in flight at a time; batches that come
 * while the worker is still writing wait here and go out together in the next message, so a busy
 * worker writes once per stream for all of them (Node's IPC hands a worker one message per
 * event-loop turn, so merging on the worker's side would not happen).
 */
export interface Backlog {
  /** Sends the batch now when the worker is idle, else keeps it for the next message. */
  push(batch: FramedBatch): void;
  /** The worker wrote the message up to `lastSeq`: the next one goes out. */
  acked(lastSeq: number): void;
  /** Sends what waits now, in flight or not: before a message that must come after it. */
  flush(): void;
  /** Batches and bytes not written yet, and how long the oldest has waited (0 when none). */
  state(now: number): { batches: number; bytes: number; waitedMs: number };
  /** Forgets everything (the worker is gone). */
  clear(): void;
}

export function createBacklog(
  send: (batches: readonly FramedBatch[]) => void,
  now: () => number = Date.now,
): Backlog {
  let waiting: FramedBatch[] = [];
  let waitingSince = 0;
  // The messages sent and not acknowledged, oldest first.
  let inFlight: { lastSeq: number; batches: number; bytes: number; sentAt: number }[] = [];

  function sendWaiting(): void {
    if (waiting.length === 0) return;
    const batches = waiting;
    waiting = [];
    const last = batches[batches.length - 1] as FramedBatch;
    const bytes = batches.reduce((sum, batch) => sum + batch.bytes, 0);
    inFlight.push({ lastSeq: last.lastSeq, batches: batches.length, bytes, sentAt: waitingSince });
    send(batches);
  }

  return {
    push(batch) {
      if (waiting.length === 0) waitingSince = now();
      waiting.push(batch);
      if (inFlight.length === 0) sendWaiting();
    },
    acked(lastSeq) {
      inFlight = inFlight.filter((message) => message.lastSeq > lastSeq);
      if (inFlight.length === 0) sendWaiting();
    },
    flush: sendWaiting,
    state(at) {
      let batches = waiting.length;
      let bytes = waiting.reduce((sum, batch) => sum + batch.bytes, 0);
      for (const message of inFlight) {
        batches += message.batches;
        bytes += message.bytes;
      }
      const oldest = inFlight[0]?.sentAt ?? (waiting.length > 0 ? waitingSince : at);
      return { batches, bytes, waitedMs: at - oldest };
    },
    clear() {
      waiting = [];
      inFlight = [];
    },
  };
}
