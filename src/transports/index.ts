import type { Config } from '../config.js';
import { createHtmlTransport } from './html.js';
import type { Transport } from './transport.js';

/** Every wire format the server offers, by name. Primary and workers build the same set. */
export interface Transports {
  readonly html: Transport;
}

export function createTransports(config: Config): Transports {
  return { html: createHtmlTransport({ padBytes: config.padBytes }) };
}

/** Each batch framed once per transport, keyed by transport name. */
export function frameAll(transports: Transports, batch: Parameters<Transport['frame']>[0]) {
  const frames = new Map<string, Buffer>();
  for (const transport of Object.values(transports) as Transport[]) {
    frames.set(transport.name, transport.frame(batch));
  }
  return frames;
}
