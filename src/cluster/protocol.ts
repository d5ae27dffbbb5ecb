import type { Replay, ResumeRequest } from '../core/types.js';
import type { Figures } from '../metrics.js';
import type { TailerHealth } from '../source/tailer.js';
import type { FramedBatch } from './backlog.js';

/**
 * Every message between the cluster primary and its workers. The primary tails the table and
 * hands each batch, framed once per transport, to every worker once; workers own the sockets.
 */

/** Primary → worker. */
export type ToWorker =
  /** The next batch in seq order, framed per transport (by transport name), with its cursor. */
  | { readonly t: 'batch'; readonly batch: FramedBatch }
  /** The tailer's health, the cluster's streams, and whether the table has a channel column. */
  | {
      readonly t: 'health';
      readonly tail: TailerHealth;
      readonly streams: number;
      readonly channels: boolean;
    }
  /** The outcome of a worker's request (see rpc.ts), or why it failed. */
  | {
      readonly t: 'answer';
      readonly req: number;
      readonly value?: unknown;
      readonly error?: string;
      /** The error's stable code, when it has one (RowcastError). */
      readonly code?: string;
    }
  /** Send your figures (for a /metrics request some worker got). */
  | { readonly t: 'collect'; readonly req: number }
  | { readonly t: 'close' };

/** Worker → primary. */
export type ToPrimary =
  | { readonly t: 'ready'; readonly url: string }
  /** Every stream has the batches up to `lastSeq`; `streams`: how many it holds. */
  | { readonly t: 'ack'; readonly lastSeq: number; readonly streams: number }
  | { readonly t: 'streams'; readonly n: number }
  | { readonly t: 'collected'; readonly req: number; readonly figures: Figures }
  | Request;

/** A worker's request to the primary, answered with an 'answer' of the same `req`. */
export type Request =
  | { readonly t: 'replay'; readonly req: number; readonly requests: readonly ResumeRequest[] }
  | {
      readonly t: 'publish';
      readonly req: number;
      readonly content: string;
      readonly channel: string | null;
    }
  | { readonly t: 'scrape'; readonly req: number };

/** The value of the answer to each request. */
export interface Answers {
  replay: { upto: number; replays: readonly Replay[] };
  publish: string;
  scrape: string;
}
