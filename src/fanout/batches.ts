import type { Transport } from '../transports/transport.js';
import type { Framed } from './resumer.js';

/**
 * Batches that are pending together (they reached a busy process one after another) as one:
 * one write per stream for all of them, the cursor of the last. Each is still framed once per
 * transport; the concatenation is built once per transport too.
 */
export function mergeFramed(batches: readonly Framed[]): Framed {
  const [first] = batches;
  if (first === undefined) throw new Error('mergeFramed needs at least one batch');
  if (batches.length === 1) return first;
  const frames = new Map<Transport, Buffer>();
  return {
    lastSeq: (batches[batches.length - 1] as Framed).lastSeq,
    frame(transport) {
      let frame = frames.get(transport);
      if (frame === undefined) {
        frame = Buffer.concat(batches.map((batch) => batch.frame(transport)));
        frames.set(transport, frame);
      }
      return frame;
    },
  };
}
