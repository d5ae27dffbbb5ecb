import type { Config } from '../config.js';
import { createHtmlTransport } from './html.js';
import { createNdjsonTransport } from './ndjson.js';
import { createSseTransport } from './sse.js';
import type { Row, Transport, TransportName } from './transport.js';

/** Every wire format the server offers, by name. Primary and workers build the same set. */
export type Transports = Readonly<Record<TransportName, Transport>>;

export function createTransports(config: Config): Transports {
  return {
    html: createHtmlTransport({ padBytes: config.padBytes }),
    sse: createSseTransport(),
    ndjson: createNdjsonTransport(),
  };
}

/** A batch framed once per transport, keyed by transport name. */
export function frameAll(transports: Transports, batch: readonly Row[]): Map<string, Buffer> {
  const frames = new Map<string, Buffer>();
  for (const transport of Object.values(transports)) {
    frames.set(transport.name, transport.frame(batch));
  }
  return frames;
}
