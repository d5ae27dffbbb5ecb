/** One row as every transport sees it: already decoded, bounded and ready to frame. */
export interface Row {
  /** The row id as decimal digits (BIGINT UNSIGNED does not fit a JS number). */
  readonly id: string;
  /** The content as valid UTF-8 text; `null` when the column held NULL. */
  readonly content: string | null;
  /** The full size in bytes when `content` was cut to MAX_CONTENT_BYTES, else `null`. */
  readonly truncatedFrom: number | null;
}

/**
 * A wire format. A transport only turns rows into bytes; it never touches a socket. Each batch is
 * framed once per transport and the same Buffer is written to every stream of that transport.
 */
export interface Transport {
  readonly name: string;
  readonly headers: Readonly<Record<string, string>>;
  /** Sent once when a stream opens. */
  readonly preamble: Buffer;
  /** Sent to idle streams so proxies and clients keep the connection. */
  readonly heartbeat: Buffer;
  /** Sent last when the server shuts down. */
  readonly closing: Buffer;
  frame(batch: readonly Row[]): Buffer;
}
