import type { Row } from '../core/types.js';
import { frameRows, type RowFrames, type Transport } from '../transports/transport.js';

/**
 * A batch as the fan-out writes it: each row framed once per transport (lazily), any subset of
 * its rows available as one Buffer (slices of that frame, copied only when they are a subset).
 */
export interface Framed {
  /** The cursor after the batch. */
  readonly lastSeq: number;
  /** Each row's channel, in seq order ('' in a table without channels). */
  readonly channels: readonly string[];
  /** The rows at these indexes (ascending), or all of them, framed for `transport`. */
  frame(transport: Transport, rows?: readonly number[]): Buffer;
}

/** A batch framed from its rows in this process. */
export function framedRows(rows: readonly Row[], lastSeq: number): Framed {
  return framedFrom(
    lastSeq,
    rows.map((row) => row.channel),
    (transport) => frameRows(transport, rows),
  );
}

/** A batch framed elsewhere (the cluster primary), `framesOf` giving a transport's frames. */
export function framedFrom(
  lastSeq: number,
  channels: readonly string[],
  framesOf: (transport: Transport) => RowFrames,
): Framed {
  const frames = new Map<Transport, RowFrames>();
  return {
    lastSeq,
    channels,
    frame(transport, rows) {
      let framed = frames.get(transport);
      if (framed === undefined) {
        framed = framesOf(transport);
        frames.set(transport, framed);
      }
      const { bytes, ends } = framed;
      const all = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      if (rows === undefined || rows.length === ends.length) return all;
      return Buffer.concat(rows.map((i) => all.subarray(i === 0 ? 0 : ends[i - 1], ends[i])));
    },
  };
}
