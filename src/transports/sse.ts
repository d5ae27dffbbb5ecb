import { cutNote, type Gap, type Row, STREAM_HEADERS, type Transport } from './transport.js';

// EventSource waits this long before it reconnects after the stream ends (a restart, a dropped
// connection); it then sends Last-Event-ID and gets what it missed.
export const SSE_RETRY_MS = 2000;
const LINE_BREAK = /\r\n|\r|\n/;

/**
 * Server-Sent Events for the browser's EventSource: one event per row, `id:` the row id, the
 * content as `data:` lines. Every line break of the content (CRLF, CR or LF) starts a new `data:`
 * line, so content can never end the event early or inject a field. A resume that cannot be exact
 * gets an event named `gap` first, without `id:` (so Last-Event-ID stays the last row's).
 */
export function createSseTransport(): Transport {
  return {
    name: 'sse',
    headers: { 'Content-Type': 'text/event-stream; charset=utf-8', ...STREAM_HEADERS },
    preamble: Buffer.from(`retry: ${SSE_RETRY_MS}\n\n`),
    heartbeat: Buffer.from(':\n\n'),
    closing: Buffer.from(': server shutting down\n\n'),
    expired: Buffer.from(': token expired\n\n'),
    fragment: event,
    frame: (batch) => Buffer.from(batch.map(event).join('')),
    gap: (gap) => Buffer.from(gapEvent(gap)),
  };
}

function event(row: Row): string {
  const text = (row.content ?? '') + cutNote(row);
  return `id: ${row.id}\ndata: ${text.split(LINE_BREAK).join('\ndata: ')}\n\n`;
}

function gapEvent(gap: Gap): string {
  return `event: gap\ndata: {"since":${gap.since},"reason":"${gap.reason}"}\n\n`;
}
