import { once } from 'node:events';
import http, { type IncomingMessage } from 'node:http';
import { waitUntil } from './wait.js';

/** A `curl -N`-like client of one stream: it accumulates the body as it arrives. */
export interface StreamClient {
  readonly res: IncomingMessage;
  /** Everything received so far (decoded as UTF-8). */
  readonly text: string;
  /** Resolves when the server ended the body cleanly; rejects if the connection broke. */
  readonly ended: Promise<void>;
  /** The `<div class="msg">` fragments received so far, in order. */
  messages(): Message[];
  /** Waits until `predicate(text)` holds. */
  waitFor(predicate: (text: string) => boolean, what: string, timeoutMs?: number): Promise<void>;
  /** Waits until the fragments with these ids have all arrived. */
  waitForIds(ids: readonly string[], timeoutMs?: number): Promise<void>;
  close(): void;
}

export interface Message {
  readonly id: string;
  /** The fragment's inner HTML, as sent (escaped). */
  readonly html: string;
}

/** One `<div class="msg">` fragment: id and inner HTML. */
export const FRAGMENT = /<div class="msg" data-id="(\d+)">([\s\S]*?)<\/div>\n/g;

export function parseMessages(text: string): Message[] {
  return [...text.matchAll(FRAGMENT)].map((m) => ({ id: m[1] as string, html: m[2] as string }));
}

/** Opens GET `url` and resolves once the response headers have arrived. */
export async function openStream(url: URL | string): Promise<StreamClient> {
  const req = http.get(url, { agent: false });
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  const chunks: Buffer[] = [];
  let text = '';
  let dirty = false;
  res.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    dirty = true;
  });
  const ended = new Promise<void>((resolve, reject) => {
    res.on('end', resolve);
    res.on('aborted', () => reject(new Error('stream aborted')));
    res.on('error', reject);
  });
  ended.catch(() => undefined);
  const read = () => {
    if (dirty) {
      text = Buffer.concat(chunks).toString('utf8');
      dirty = false;
    }
    return text;
  };
  const client: StreamClient = {
    res,
    get text() {
      return read();
    },
    ended,
    messages: () => parseMessages(read()),
    waitFor: async (predicate, what, timeoutMs) => {
      await waitUntil(() => predicate(read()), what, timeoutMs);
    },
    waitForIds: async (ids, timeoutMs) => {
      await waitUntil(
        () => {
          const seen = new Set(parseMessages(read()).map((m) => m.id));
          return ids.every((id) => seen.has(id));
        },
        `rows ${ids.join(',')}`,
        timeoutMs,
      );
    },
    close: () => {
      req.destroy();
    },
  };
  return client;
}
