import http, { type IncomingMessage } from 'node:http';
import net from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { FRAGMENT } from './stream.js';
import { waitUntil } from './wait.js';

/** The request a curl-like client sends for a stream. */
export const STREAM_REQUEST = 'GET /stream HTTP/1.1\r\nHost: x\r\n\r\n';

/**
 * A client on a bare TCP socket: it sends exactly `head` (a whole request, half of one, …) and
 * records the raw answer, so a test controls reading (pause/resume) and how the connection ends.
 */
export interface RawClient {
  readonly socket: net.Socket;
  /** Everything received so far, decoded as latin1 (byte for byte). */
  readonly text: string;
  /** Resolves once `head` is handed to the kernel. */
  readonly sent: Promise<void>;
  /** Waits (with a deadline) until the socket is closed: `end` if cleanly, `error` on a reset. */
  waitClosed(what: string, timeoutMs?: number): Promise<'end' | 'error'>;
  waitFor(predicate: (text: string) => boolean, what: string, timeoutMs?: number): Promise<void>;
}

export function connectRaw(url: URL, head: string): RawClient {
  const socket = net.connect(Number(url.port), url.hostname);
  const sent = new Promise<void>((resolve, reject) => {
    socket.write(head, (err) => (err ? reject(err) : resolve()));
  });
  sent.catch(() => undefined);
  const chunks: Buffer[] = [];
  let how: 'end' | 'error' = 'end';
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
  });
  socket.on('error', () => {
    how = 'error';
  });
  let ended: 'end' | 'error' | undefined;
  socket.on('close', () => {
    ended = how;
  });
  const text = () => Buffer.concat(chunks).toString('latin1');
  return {
    socket,
    get text() {
      return text();
    },
    sent,
    waitClosed: (what, timeoutMs) => waitUntil(() => ended, what, timeoutMs),
    waitFor: async (predicate, what, timeoutMs) => {
      await waitUntil(() => predicate(text()), what, timeoutMs);
    },
  };
}

/** One `<div class="msg">` fragment as a tally keeps it: the id, the size and the start. */
export interface Tallied {
  readonly id: string;
  /** Length of the inner HTML in UTF-16 code units. */
  readonly length: number;
  readonly head: string;
}

/**
 * A reading stream client for large volumes: it parses fragments as they arrive and keeps only a
 * summary of each, so megabytes of rows cost no re-parsing of everything received.
 */
export interface StreamTally {
  readonly res: IncomingMessage;
  readonly messages: readonly Tallied[];
  waitForCount(count: number, timeoutMs?: number): Promise<void>;
  close(): void;
}

export async function openTally(url: URL): Promise<StreamTally> {
  const req = http.get(url, { agent: false });
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    req.once('response', resolve).once('error', reject);
  });
  const decoder = new StringDecoder('utf8');
  const messages: Tallied[] = [];
  // Text since the last complete fragment, in pieces: joined only once a fragment has ended, so
  // a fragment of megabytes arriving in many chunks costs no repeated copying.
  let parts: string[] = [];
  let tail = '';
  res.on('data', (chunk: Buffer) => {
    const text = decoder.write(chunk);
    parts.push(text);
    const probe = tail + text;
    tail = probe.slice(-7);
    if (!probe.includes('</div>\n')) return;
    const rest = parts.join('');
    let consumed = 0;
    for (const m of rest.matchAll(FRAGMENT)) {
      const inner = m[2] as string;
      messages.push({ id: m[1] as string, length: inner.length, head: inner.slice(0, 32) });
      consumed = (m.index ?? 0) + m[0].length;
    }
    parts = [rest.slice(consumed)];
  });
  res.on('error', () => undefined);
  return {
    res,
    messages,
    waitForCount: (count, timeoutMs) =>
      waitUntil(() => messages.length >= count, `${count} fragments`, timeoutMs).then(() => {}),
    close: () => {
      req.destroy();
    },
  };
}
