import http from 'node:http';
import net from 'node:net';
import type { BenchDb } from './db.js';

/**
 * How the bench puts its rows out: INSERT into the table, POST /messages to rowcast, or POST /pub
 * to Nchan. One writer; ids are consecutive.
 */
export interface Publisher {
  /** `insert` or `post` (rowcast); Nchan's is always `post`. */
  readonly mode: PublishMode;
  /** What the record says about it. */
  readonly describe: (rowsPerStatement: number) => string;
  /** The id the next published row gets. */
  nextId(): Promise<number>;
  /**
   * Publishes may be in flight together: the bench sends each on its schedule without waiting
   * for the one before. Nchan answers a publish only once it has written the message to its
   * subscribers, so awaiting each would stretch the pace under load (20 rows took 7.7-11.2 s
   * instead of 3.8 at 35k). rowcast answers once the row is in the table, before any write, and
   * one connection keeps its ids in order, so its publishes are awaited.
   */
  readonly overlapping: boolean;
  /**
   * Publishes the rows (each with its content, to its channel when given) and resolves with the
   * first one's id; the others follow it. INSERT sends them in one statement; the others post
   * them one by one, each awaited.
   */
  publish(contents: readonly string[], channels?: readonly string[]): Promise<number>;
  /** Closes the publisher's connection. */
  close(): void;
}

export type PublishMode = 'insert' | 'post';

// A publish that takes longer than this fails the run. Long: Nchan answers a publish only once
// it has written the message to its subscribers, which took over 10 s at 100k streams.
const REQUEST_TIMEOUT_MS = 60_000;

/** INSERT into the bench table, straight to MariaDB (not through rowcast). */
export function insertPublisher(db: BenchDb): Publisher {
  return {
    mode: 'insert',
    overlapping: false,
    describe: (rows) =>
      rows === 1
        ? 'single-row INSERTs, one connection, each awaited'
        : `INSERTs of ${rows} rows, one connection`,
    nextId: () => db.nextId(),
    publish: (contents, channels) => db.insert(contents, channels),
    close: () => undefined,
  };
}

/**
 * POST /messages to rowcast (instance `port`) with `Authorization: Bearer token`, JSON
 * `{"content": …, "channel": …}`; it answers `201 {"id":N}`. The ids come from the same table the
 * bench would INSERT into, so `db.nextId()` still names the next one.
 */
export function postPublisher(db: BenchDb, port: number, token: string): Publisher {
  const post = keepAlivePoster(port);
  return {
    mode: 'post',
    overlapping: false,
    describe: () => 'POST /messages to instance 0, one keep-alive connection, each awaited',
    nextId: () => db.nextId(),
    async publish(contents, channels) {
      let first = 0;
      for (const [i, content] of contents.entries()) {
        const channel = channels?.[i];
        const body = JSON.stringify(channel === undefined ? { content } : { content, channel });
        const { status, text } = await post('/messages', body, {
          Authorization: `Bearer ${token}`,
          'Content-Type': 'application/json',
        });
        const id = status === 201 ? Number((JSON.parse(text) as { id?: unknown }).id) : Number.NaN;
        if (!Number.isSafeInteger(id)) {
          throw new Error(
            `POST /messages answered ${status} ${JSON.stringify(text.slice(0, 200))}`,
          );
        }
        if (i === 0) first = id;
        else if (id !== first + i)
          throw new Error(`POST /messages: id ${id}, expected ${first + i}`);
      }
      return first;
    },
    close: post.close,
  };
}

/**
 * POST /pub to Nchan: the body is the fragment the client parses for a row,
 * `<p data-id="ID" data-seq="ID">SENT_US</p>`, with ids from the bench's own counter (1, 2, …).
 * Nchan answers 201 (or 202 when the channel has no subscriber) with the channel's info.
 */
export function nchanPublisher(port: number): Publisher {
  const post = pipelinedPoster(port);
  let next = 1;
  return {
    mode: 'post',
    overlapping: true,
    describe: () =>
      'POST /pub on schedule, pipelined on one kept-alive connection (a publish does not wait for the answer to the one before)',
    nextId: async () => next,
    async publish(contents, channels) {
      if (channels !== undefined) throw new Error('the Nchan bench has one channel only');
      // Ids in send order, taken before any await: publishes overlap.
      const first = next;
      next += contents.length;
      for (const [i, content] of contents.entries()) {
        const id = first + i;
        const { status, text } = await post(
          '/pub',
          `<p data-id="${id}" data-seq="${id}">${content}</p>`,
          { 'Content-Type': 'text/html' },
        );
        if (status !== 201 && status !== 202) {
          throw new Error(
            `Nchan POST /pub answered ${status} ${JSON.stringify(text.slice(0, 200))}`,
          );
        }
      }
      return first;
    },
    close: post.close,
  };
}

type Poster = ((
  path: string,
  body: string,
  headers: Record<string, string>,
) => Promise<{ status: number; text: string }>) & { close(): void };

/** POSTs over one kept-alive connection to 127.0.0.1:port (node:http Agent, maxSockets 1). */
function keepAlivePoster(port: number): Poster {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const post = (path: string, body: string, headers: Record<string, string>) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port,
        method: 'POST',
        path,
        agent,
        timeout: REQUEST_TIMEOUT_MS,
        headers: { ...headers, 'Content-Length': Buffer.byteLength(body) },
      });
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }),
        );
        res.on('error', reject);
      });
      req.on('timeout', () =>
        req.destroy(new Error(`POST ${path}: no answer in ${REQUEST_TIMEOUT_MS} ms`)),
      );
      req.on('error', reject);
      req.end(body);
    });
  return Object.assign(post, { close: () => agent.destroy() });
}

/**
 * POSTs pipelined on one connection to 127.0.0.1:port: each request is written at once, whether
 * or not the ones before have been answered, and nginx handles them one after another, in
 * order. One publisher that sends on its schedule, as a program would; several connections
 * instead let Nchan's workers publish at once and out of order (70,000 to 210,000 deliveries out
 * of order at 35k).
 */
function pipelinedPoster(port: number): Poster {
  // Opened at the first publish, and again if it closed meanwhile: nginx closes a connection
  // that sends nothing for 60 s (client_header_timeout), which opening 100k streams outlasts.
  let socket: net.Socket | null = null;
  const waiting: {
    resolve: (answer: { status: number; text: string }) => void;
    reject: (err: Error) => void;
    timer: NodeJS.Timeout;
  }[] = [];
  let buffered: Buffer = Buffer.alloc(0);
  const failAll = (err: Error) => {
    for (const w of waiting.splice(0)) {
      clearTimeout(w.timer);
      w.reject(err);
    }
  };
  const open = (): net.Socket => {
    const opened = net.connect({ host: '127.0.0.1', port, noDelay: true });
    buffered = Buffer.alloc(0);
    opened.on('data', (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      for (;;) {
        const answer = parseResponse(buffered);
        if (answer === null) return;
        buffered = buffered.subarray(answer.length);
        const w = waiting.shift();
        if (w === undefined) return failAll(new Error('an answer to no request'));
        clearTimeout(w.timer);
        w.resolve(answer);
      }
    });
    opened.on('error', failAll);
    opened.on('close', () => failAll(new Error('the publishing connection closed')));
    return opened;
  };
  const post = (path: string, body: string, headers: Record<string, string>) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`POST ${path}: no answer in ${REQUEST_TIMEOUT_MS} ms`)),
        REQUEST_TIMEOUT_MS,
      );
      if (socket === null || socket.destroyed || socket.writableEnded) socket = open();
      waiting.push({ resolve, reject, timer });
      const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${lines.join('')}` +
          `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
    });
  return Object.assign(post, { close: () => socket?.destroy() });
}

/** The first whole HTTP/1.1 response in `bytes` (Content-Length or chunked body), or null. */
function parseResponse(bytes: Buffer): { status: number; text: string; length: number } | null {
  const headEnd = bytes.indexOf('\r\n\r\n');
  if (headEnd === -1) return null;
  const head = bytes.toString('latin1', 0, headEnd);
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0);
  const bodyStart = headEnd + 4;
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1];
  if (length !== undefined) {
    const end = bodyStart + Number(length);
    if (bytes.length < end) return null;
    return { status, text: bytes.toString('utf8', bodyStart, end), length: end };
  }
  if (!/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
    return { status, text: '', length: bodyStart };
  }
  const parts: Buffer[] = [];
  let at = bodyStart;
  for (;;) {
    const lineEnd = bytes.indexOf('\r\n', at);
    if (lineEnd === -1) return null;
    const size = Number.parseInt(bytes.toString('latin1', at, lineEnd), 16);
    if (size === 0) {
      const end = lineEnd + 4; // the empty trailer's CRLF
      if (bytes.length < end) return null;
      return { status, text: Buffer.concat(parts).toString(), length: end };
    }
    if (bytes.length < lineEnd + 2 + size + 2) return null;
    parts.push(bytes.subarray(lineEnd + 2, lineEnd + 2 + size));
    at = lineEnd + 2 + size + 2;
  }
}
