/** Messages between the bench (parent) and its client processes (bench/client.ts). */

export type ToClient =
  | {
      readonly t: 'connect';
      readonly host: string;
      readonly port: number;
      readonly localAddress: string;
      readonly count: number;
      /** Connections in flight (connecting or waiting for the response head) at most. */
      readonly concurrency: number;
      /** A connection without a 200 head after this long counts as failed. */
      readonly timeoutMs: number;
      /** No connection is started after this long. */
      readonly deadlineMs: number;
      /**
       * The channel each stream subscribes to (`?channel=NAME`), one per stream; '' (or no list)
       * for a plain `GET /stream`, which reads every row.
       */
      readonly channels?: readonly string[];
      /** The request path of every stream: `/stream` (rowcast) or `/sub` (Nchan). */
      readonly path: string;
      /** Header lines sent with every stream's request besides Host and User-Agent. */
      readonly headers?: Readonly<Record<string, string>>;
    }
  | {
      /**
       * Starts a phase: rows with ids base … base+count-1, each expected on the streams of its
       * channel and on every stream without one.
       */
      readonly t: 'expect';
      readonly base: number;
      readonly count: number;
      /** The channel of each row (by offset from base); no list: every row is in ''. */
      readonly channels?: readonly string[];
    }
  | { readonly t: 'progress' }
  | { readonly t: 'collect' }
  | { readonly t: 'exit' };

export interface Connected {
  readonly t: 'connected';
  readonly established: number;
  /** Failed or never started connections, by reason (error code, `http_503`, `timeout`, …). */
  readonly failures: Record<string, number>;
  readonly ms: number;
}

export interface Progress {
  readonly t: 'progress';
  /** Distinct expected rows received, summed over streams. */
  readonly received: number;
  /** Streams open right now. */
  readonly open: number;
  /** Deliveries expected on the streams open now (and at the phase's start): the goal. */
  readonly expected: number;
}

export interface Collected {
  readonly t: 'collected';
  /** Insert → receipt, ms, one per distinct expected delivery. */
  readonly latencies: Float32Array;
  /** The row (offset from the phase's base) of each latency; empty when the rows had no channels. */
  readonly latencyOffsets: Uint32Array;
  /** Deliveries expected on the streams open when the phase started. */
  readonly expected: number;
  readonly received: number;
  /** Expected rows never received, summed over the streams open when the phase started. */
  readonly lost: number;
  readonly duplicated: number;
  /** Rows that came with a lower seq than the previous row on their stream. */
  readonly outOfOrder: number;
  /** Rows without a seq, or with another seq than the same row had on another stream here. */
  readonly seqMismatch: number;
  /** Per expected row (offset from the phase's base), the seq it came with; 0 if never seen. */
  readonly seqs: Float64Array;
  /** Rows outside the expected range, or of a channel the stream did not ask for. */
  readonly unexpected: number;
  /** Of those, rows of the phase that belong to another channel than the stream's. */
  readonly wrongChannel: number;
  /** Rows of the phase whose `data-channel` (none for '') is not the channel they were inserted to. */
  readonly channelLabelMismatch: number;
  /** Streams that closed during the phase. */
  readonly closed: number;
  /** Monotonic ms (the same clock in every process) of the first and last receipt; 0 if none. */
  readonly firstReceipt: number;
  readonly lastReceipt: number;
  /** CPU seconds this client used during the phase. */
  readonly cpuS: number;
  /** Event-loop delay of this client during the phase, ms. */
  readonly loopDelayP99Ms: number;
  readonly loopDelayMaxMs: number;
}

export type FromClient =
  | Connected
  | Progress
  | Collected
  | { readonly t: 'error'; message: string };

// performance.now() and process.hrtime() read the same monotonic clock; performance.now() is the
// cheaper call (no BigInt), so it is shifted once onto the machine-wide origin of hrtime.
const MONOTONIC_OFFSET_MS = Number(process.hrtime.bigint()) / 1e6 - performance.now();

/** Milliseconds on CLOCK_MONOTONIC, which every process on the machine shares. */
export function monotonicMs(): number {
  return performance.now() + MONOTONIC_OFFSET_MS;
}
