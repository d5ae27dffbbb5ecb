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
  /** The row ids received so far, in order, whatever the stream's format (gap frames left out). */
  ids(): string[];
  /** The row and gap frames received so far, in order, whatever the stream's format. */
  frames(): Frame[];
  /** The gap frames received so far. */
  gaps(): GapFrame['gap'][];
  /** The rows received so far with their seq (HTML and NDJSON only: SSE frames carry no seq). */
  rows(): { id: string; seq: number }[];
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
export const FRAGMENT =
  /<div class="msg" data-id="(\d+)" data-seq="\d+"(?: data-channel="[^"]*")?>([\s\S]*?)<\/div>\n/g;

export function parseMessages(text: string): Message[] {
  return [...text.matchAll(FRAGMENT)].map((m) => ({ id: m[1] as string, html: m[2] as string }));
}

export interface SseEvent {
  readonly id: string | undefined;
  /** The `event:` field, present only when the event has one (a gap); rows have none. */
  readonly event?: string;
  readonly data: string;
}

/** The events of an SSE body as EventSource dispatches them (complete events only). */
export function parseSse(text: string): SseEvent[] {
  const events: SseEvent[] = [];
  const blocks = text.split(/\r\n\r\n|\n\n|\r\r/);
  blocks.pop(); // not terminated yet
  for (const block of blocks) {
    let id: string | undefined;
    let event: string | undefined;
    const data: string[] = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      if (field === 'event') event = value;
      if (field === 'data') data.push(value);
    }
    if (data.length === 0) continue;
    events.push(
      event === undefined ? { id, data: data.join('\n') } : { id, event, data: data.join('\n') },
    );
  }
  return events;
}

/** The complete, non-empty lines of an NDJSON body, parsed. */
export function parseNdjson(text: string): Record<string, unknown>[] {
  const lines = text.split('\n');
  lines.pop(); // not terminated yet
  return lines.filter((line) => line !== '').map((line) => JSON.parse(line));
}

/** A row frame: its id. */
export interface RowFrame {
  readonly id: string;
}

/** A gap frame (docs/delivery.md 4): the row id the stream resumed from, and why it is not exact. */
export interface GapFrame {
  readonly gap: { readonly since: string; readonly reason: string };
}

export type Frame = RowFrame | GapFrame;

export function isGap(frame: Frame): frame is GapFrame {
  return 'gap' in frame;
}

/**
 * The JSON of a gap (SSE `data:`, or the NDJSON line's `gap` member): `{"since":R,"reason":"…"}`
 * with exactly those members. `since` is read as digits, not as a (rounded) number.
 */
function gapOf(json: string): GapFrame {
  const parsed = JSON.parse(json) as Record<string, unknown>;
  const since = /^\{"since":(\d+),/.exec(json)?.[1];
  if (
    since === undefined ||
    Object.keys(parsed).join() !== 'since,reason' ||
    typeof parsed.reason !== 'string'
  ) {
    throw new Error(`not a gap: ${json}`);
  }
  return { gap: { since, reason: parsed.reason } };
}

// A row or a gap fragment of the HTML stream, in the order they were sent.
const HTML_FRAME =
  /<div class="msg" data-id="(\d+)" data-seq="(\d+)"(?: data-channel="[^"]*")?>[\s\S]*?<\/div>\n|<div class="gap" data-since="(\d+)" data-reason="([a-z]+)">[^<]*<\/div>\n/g;

/**
 * The row and gap frames of a body of the given content type, in order: SSE events (`gap` by
 * its `event:`), NDJSON lines (`{"gap":…}`), HTML `<div class="msg">` / `<div class="gap">`.
 */
export function parseFrames(contentType: string, text: string): Frame[] {
  if (contentType.startsWith('text/event-stream')) {
    return parseSse(text).map((event) => {
      if (event.event === undefined && event.id !== undefined) return { id: event.id };
      // A gap has no id: line, so Last-Event-ID stays the last row's.
      if (event.event === 'gap' && event.id === undefined) return gapOf(event.data);
      throw new Error(`neither a row nor a gap: ${JSON.stringify(event)}`);
    });
  }
  if (contentType.startsWith('application/x-ndjson')) {
    // The same lines as parseNdjson, read as text so ids and since stay digits.
    const lines = text.split('\n');
    lines.pop(); // not terminated yet
    return lines.filter((line) => line !== '').map(ndjsonFrame);
  }
  return [...text.matchAll(HTML_FRAME)].map((m) =>
    m[1] !== undefined ? { id: m[1] } : { gap: { since: m[3] as string, reason: m[4] as string } },
  );
}

function ndjsonFrame(line: string): Frame {
  const gap = /^\{"gap":(\{.*\})\}$/.exec(line);
  if (gap !== null) return gapOf(gap[1] as string);
  const id = /^\{"id":(\d+),/.exec(line)?.[1];
  if (id === undefined) throw new Error(`neither a row nor a gap: ${line}`);
  return { id };
}

/** Rows and their seqs in an HTML or NDJSON body. */
function rowsOf(contentType: string, text: string): { id: string; seq: number }[] {
  if (contentType.startsWith('text/event-stream')) throw new Error('SSE frames carry no seq');
  const pattern = contentType.startsWith('application/x-ndjson')
    ? /^\{"id":(\d+),"seq":(\d+),/gm
    : /<div class="msg" data-id="(\d+)" data-seq="(\d+)"(?: data-channel="[^"]*")?>/g;
  return [...text.matchAll(pattern)].map((m) => ({ id: m[1] as string, seq: Number(m[2]) }));
}

/** Row ids in a body of the given content type (gap frames left out). */
function idsOf(contentType: string, text: string): string[] {
  if (contentType.startsWith('text/event-stream')) {
    return parseSse(text)
      .filter((event) => event.event === undefined)
      .map((event) => event.id as string);
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
    frames: () => parseFrames(res.headers['content-type'] ?? '', read()),
    gaps: () =>
      parseFrames(res.headers['content-type'] ?? '', read())
        .filter(isGap)
        .map((frame) => frame.gap),
    rows: () => rowsOf(res.headers['content-type'] ?? '', read()),
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
