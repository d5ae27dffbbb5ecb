import type mysql from 'mysql2/promise';
import { type GapFrame, parseSse, type StreamClient } from './stream.js';

/**
 * Channels as a client sees them: the rows of a stream with their channel (the frame parsers of
 * stream.ts do not read HTML fragments that carry `data-channel`), the table's rows with theirs,
 * and which rows a list of `channel` parameters reads, worked out independently of src/.
 */

/** A row frame: its id, and its seq and channel where the format carries them (not SSE). */
export interface ChannelRowFrame {
  readonly id: string;
  readonly seq?: number;
  readonly channel?: string;
}

export type ChannelFrame = ChannelRowFrame | GapFrame;

/** A claimed row of the table: id, seq and channel. */
export interface ChannelRow {
  readonly id: string;
  readonly seq: number;
  readonly channel: string;
}

// A row (with or without data-channel: the implicit channel '' has none) or a gap fragment.
const HTML_FRAME =
  /<div class="msg" data-id="(\d+)" data-seq="(\d+)"( data-channel="([^"]*)")?>[\s\S]*?<\/div>\n|<div class="gap" data-since="(\d+)" data-reason="([a-z]+)">[^<]*<\/div>\n/g;
const NDJSON_ROW = /^\{"id":(\d+),"seq":(\d+),"channel":/;
const NDJSON_GAP = /^\{"gap":\{"since":(\d+),"reason":"([a-z]+)"\}\}$/;

/** Every row and gap frame of a body of this content type, in order, with channels. */
export function channelFramesOf(contentType: string, text: string): ChannelFrame[] {
  if (contentType.startsWith('text/event-stream')) {
    return parseSse(text).map((event): ChannelFrame => {
      if (event.event === undefined && event.id !== undefined) return { id: event.id };
      if (event.event === 'gap' && event.id === undefined) {
        const gap = /^\{"since":(\d+),"reason":"([a-z]+)"\}$/.exec(event.data);
        if (gap !== null) return { gap: { since: gap[1] as string, reason: gap[2] as string } };
      }
      throw new Error(`neither a row nor a gap: ${JSON.stringify(event)}`);
    });
  }
  if (contentType.startsWith('application/x-ndjson')) {
    const lines = text.split('\n');
    lines.pop(); // not terminated yet
    return lines
      .filter((line) => line !== '')
      .map((line): ChannelFrame => {
        const gap = NDJSON_GAP.exec(line);
        if (gap !== null) return { gap: { since: gap[1] as string, reason: gap[2] as string } };
        const row = NDJSON_ROW.exec(line);
        if (row === null) throw new Error(`neither a row nor a gap: ${line}`);
        const { channel } = JSON.parse(line) as { channel: unknown };
        if (typeof channel !== 'string') throw new Error(`a row without a channel: ${line}`);
        return { id: row[1] as string, seq: Number(row[2]), channel };
      });
  }
  return [...text.matchAll(HTML_FRAME)].map((m): ChannelFrame => {
    if (m[1] !== undefined) {
      if (m[3] !== undefined && m[4] === '') throw new Error(`an empty data-channel: ${m[0]}`);
      return { id: m[1], seq: Number(m[2]), channel: m[4] ?? '' };
    }
    return { gap: { since: m[5] as string, reason: m[6] as string } };
  });
}

/** The frames a stream client has received so far. */
export function framesOf(client: StreamClient): ChannelFrame[] {
  return channelFramesOf(client.res.headers['content-type'] ?? '', client.text);
}

export function isRow(frame: ChannelFrame): frame is ChannelRowFrame {
  return !('gap' in frame);
}

/** The ids of the row frames a stream client has received so far. */
export function rowIdsOf(client: StreamClient): string[] {
  return framesOf(client)
    .filter(isRow)
    .map((frame) => frame.id);
}

/** Whether the stream's format carries seq and channel in its frames (HTML, NDJSON: not SSE). */
export function carriesChannel(client: StreamClient): boolean {
  return !(client.res.headers['content-type'] ?? '').startsWith('text/event-stream');
}

/** What a stream of this format shows for these rows: one row frame each. */
export function expectedFrames(client: StreamClient, rows: readonly ChannelRow[]): ChannelFrame[] {
  return carriesChannel(client)
    ? rows.map(({ id, seq, channel }) => ({ id, seq, channel }))
    : rows.map(({ id }) => ({ id }));
}

/**
 * Whether a stream asking for these `channel` parameters reads a row of `channel`: no parameter
 * or `*` reads every row, `NAME*` the channels starting with NAME, anything else that name only.
 */
export function reads(params: readonly string[], channel: string): boolean {
  if (params.length === 0) return true;
  return params.some((param) => {
    if (param === '*') return true;
    if (param.endsWith('*')) return channel.startsWith(param.slice(0, -1));
    return param === channel;
  });
}

/** `?channel=…&channel=…` (and any other parameters) for these values. */
export function channelQuery(params: readonly string[], extra: Record<string, string> = {}) {
  const query = new URLSearchParams(params.map((param) => ['channel', param]));
  for (const [name, value] of Object.entries(extra)) query.append(name, value);
  const text = query.toString();
  return text === '' ? '' : `?${text}`;
}

/** Inserts rows of (content, channel) in one statement on `conn`; returns their ids in order. */
export async function insertTo(
  conn: Pick<mysql.Connection, 'query'>,
  rows: readonly (readonly [content: string, channel: string])[],
  table = 'msg',
): Promise<string[]> {
  const [result] = await conn.query(`INSERT INTO \`${table}\` (content, channel) VALUES ?`, [
    rows.map(([content, channel]) => [content, channel]),
  ]);
  const { insertId } = result as { insertId: number };
  return rows.map((_, i) => String(insertId + i));
}

/** The claimed rows of `table` in seq order with their channels; only `ids` when given. */
export async function channelRows(
  conn: Pick<mysql.Connection, 'query'>,
  ids?: readonly string[],
  table = 'msg',
): Promise<ChannelRow[]> {
  const only = ids === undefined ? '' : ` AND id IN (${ids.length === 0 ? 'NULL' : ids.join(',')})`;
  const [found] = await conn.query(
    `SELECT id, seq, channel FROM \`${table}\` WHERE seq IS NOT NULL${only} ORDER BY seq`,
  );
  return (found as { id: unknown; seq: unknown; channel: unknown }[]).map((row) => ({
    id: String(row.id),
    seq: Number(row.seq),
    channel: String(row.channel),
  }));
}

/** A small deterministic generator (so a failing run can be repeated with its seed). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    // xorshift32
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
}
