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
  /** The row ids received so far, in order, whatever the stream's format. */
  ids(): string[];
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
export const FRAGMENT = /<div class="msg" data-id="(\d+)" data-seq="\d+">([\s\S]*?)<\/div>\n/g;

export function parseMessages(text: string): Message[] {
  return [...text.matchAll(FRAGMENT)].map((m) => ({ id: m[1] as string, html: m[2] as string }));
}

export interface SseEvent {
  readonly id: string | undefined;
  readonly data: string;
}

/** The events of an SSE body as EventSource dispatches them (complete events only). */
export function parseSse(text: string): SseEvent[] {
  const events: SseEvent[] = [];
  const blocks = text.split(/\r\n\r\n|\n\n|\r\r/);
  blocks.pop(); // not terminated yet
  for (const block of blocks) {
    let id: string | undefined;
    const data: string[] = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      if (field === 'data') data.push(value);
    }
    if (data.length > 0) events.push({ id, data: data.join('\n') });
  }
  return events;
}

/** The complete, non-empty lines of an NDJSON body, parsed. */
export function parseNdjson(text: string): Record<string, unknown>[] {
  const lines = text.split('\n');
  lines.pop(); // not terminated yet
  return lines.filter((line) => line !== '').map((line) => JSON.parse(line));
}

/** Row ids in a body of the given content type. */
function idsOf(contentType: string, text: string): string[] {
  if (contentType.startsWith('text/event-stream')) {
    return parseSse(text).map((event) => event.id as string);
  }
  if (contentType.startsWith('application/x-ndjson')) {
    // Ids are spliced in as digits: read them as digits, not as (rounded) numbers.
    return [...text.matchAll(/^\{"id":(\d+),/gm)].map((m) => m[1] as string);
  }
  return parseMessages(text).map((m) => m.id);
}

/** Opens GET `url` and resolves once the response headers have arrived. */
export async function openStream(
  url: URL | string,
  headers: Record<string, string> = {},
): Promise<StreamClient> {
  const req = http.get(url, { agent: false, headers });
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
    ids: () => idsOf(res.headers['content-type'] ?? '', read()),
    waitFor: async (predicate, what, timeoutMs) => {
      await waitUntil(() => predicate(read()), what, timeoutMs);
    },
    waitForIds: async (ids, timeoutMs) => {
      await waitUntil(
        () => {
          const seen = new Set(client.ids());
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
