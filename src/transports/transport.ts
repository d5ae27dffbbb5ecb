/** One row as every transport sees it: already decoded, bounded and ready to frame. */
export interface Row {
  /** The row id as decimal digits (BIGINT UNSIGNED does not fit a JS number). */
  readonly id: string;
  /** The content as valid UTF-8 text; `null` when the column held NULL. */
  readonly content: string | null;
  /** The full size in bytes when `content` was cut to MAX_CONTENT_BYTES, else `null`. */
  readonly truncatedFrom: number | null;
  /** `created_at` in ms since the epoch; `null` when the table has no such column. */
  readonly createdAt: number | null;
}

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
  frame(batch: readonly Row[]): Buffer;
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
