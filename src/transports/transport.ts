import type { Gap, Row } from '../core/types.js';

export type { Gap, Row };

/**
 * A wire format. A transport only turns rows into bytes; it never touches a socket. Each batch is
 * framed once per transport and the same Buffer is written to every stream of that transport.
 */
export interface Transport {
  readonly name: TransportName;
  readonly headers: Readonly<Record<string, string>>;
  /** Sent once when a stream opens (may be empty). */
  readonly preamble: Buffer;
  /** Sent to idle streams so proxies and clients keep the connection. */
  readonly heartbeat: Buffer;
  /** Sent last when the server shuts down (may be empty). */
  readonly closing: Buffer;
  /** Sent last when the stream's subscriber token expires (may be empty). */
  readonly expired: Buffer;
  /** One row's bytes as text: a batch's frame is its rows' fragments, one after another. */
  fragment(row: Row): string;
  frame(batch: readonly Row[]): Buffer;
  /** What a resume that cannot be exact gets before its rows (delivery contract 4). */
  gap(gap: Gap): Buffer;
}

export type TransportName = 'html' | 'sse' | 'ndjson';

/** What a row cut to MAX_CONTENT_BYTES carries after its text, so a reader sees it is not whole. */
export function cutNote(row: Row): string {
  return row.truncatedFrom === null ? '' : ` … [cut from ${row.truncatedFrom} bytes]`;
}

/** The headers every stream carries: no caching or compressing proxies, no buffering in nginx. */
export const STREAM_HEADERS = {
  'Cache-Control': 'no-cache, no-transform',
  'X-Accel-Buffering': 'no',
  'X-Content-Type-Options': 'nosniff',
} as const;

/** What a gap frame tells a person, by reason. */
export function gapNote(gap: Gap): string {
  return gap.reason === 'limit'
    ? `older rows after ${gap.since} left out (REPLAY_LIMIT)`
    : `row ${gap.since} is not in the delivery order; rows after it by id follow, some may be missing or repeated`;
}

/** A batch's frame for one transport, and where each row's fragment ends in it (byte offsets). */
export interface RowFrames {
  readonly bytes: Uint8Array;
  readonly ends: readonly number[];
}

/** Frames each row once: the batch's bytes, with every row's fragment addressable. */
export function frameRows(transport: Transport, rows: readonly Row[]): RowFrames {
  const fragments = rows.map((row) => transport.fragment(row));
  const ends: number[] = [];
  let end = 0;
  for (const fragment of fragments) {
    end += Buffer.byteLength(fragment);
    ends.push(end);
  }
  return { bytes: Buffer.from(fragments.join('')), ends };
}
