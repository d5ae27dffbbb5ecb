import type { Config } from '../config.js';
import { createHtmlTransport } from './html.js';
import { createNdjsonTransport } from './ndjson.js';
import { createSseTransport } from './sse.js';
import {
  frameRows,
  type Row,
  type RowFrames,
  type Transport,
  type TransportName,
} from './transport.js';

/** Every wire format the server offers, by name. Primary and workers build the same set. */
export type Transports = Readonly<Record<TransportName, Transport>>;

export function createTransports(config: Config): Transports {
  return {
    html: createHtmlTransport({ padBytes: config.padBytes }),
    sse: createSseTransport(),
    ndjson: createNdjsonTransport(),
  };
}

/** A batch framed once per transport, each row addressable, keyed by transport name. */
export function frameAll(transports: Transports, batch: readonly Row[]): Map<string, RowFrames> {
  const frames = new Map<string, RowFrames>();
  for (const transport of Object.values(transports)) {
    frames.set(transport.name, frameRows(transport, batch));
  }
  return frames;
}
