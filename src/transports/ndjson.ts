import { type Row, STREAM_HEADERS, type Transport } from './transport.js';

/**
 * Newline-delimited JSON for programs: one object per row and line,
 * `{"id":…,"seq":…,"channel":…,"content":…,"created_at":…}`, plus `"truncated_from"` when the content was
 * cut. A resume that cannot be exact gets `{"gap":{"since":…,"reason":…}}` first.
 * Heartbeats are empty lines, which NDJSON readers skip.
 */
export function createNdjsonTransport(): Transport {
  return {
    name: 'ndjson',
    headers: { 'Content-Type': 'application/x-ndjson; charset=utf-8', ...STREAM_HEADERS },
    preamble: Buffer.alloc(0),
    heartbeat: Buffer.from('\n'),
    closing: Buffer.alloc(0),
    expired: Buffer.alloc(0),
    fragment: line,
    frame: (batch) => Buffer.from(batch.map(line).join('')),
    gap: (gap) => Buffer.from(`{"gap":{"since":${gap.since},"reason":"${gap.reason}"}}\n`),
  };
}

function line(row: Row): string {
  // The id is spliced in as digits: a JSON number, exact even past 2^53 for readers that keep it.
  const createdAt = row.createdAt === null ? null : new Date(row.createdAt).toISOString();
  const cut = row.truncatedFrom === null ? '' : `,"truncated_from":${row.truncatedFrom}`;
  return `{"id":${row.id},"seq":${row.seq},"channel":${JSON.stringify(row.channel)},"content":${JSON.stringify(row.content)},"created_at":${JSON.stringify(createdAt)}${cut}}\n`;
}
