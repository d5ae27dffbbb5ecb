import http from 'node:http';
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
  const post = keepAlivePoster(port, NCHAN_PUBLISH_SOCKETS);
  let next = 1;
  return {
    mode: 'post',
    overlapping: true,
    describe: () =>
      `POST /pub on schedule, up to ${NCHAN_PUBLISH_SOCKETS} keep-alive connections (a publish does not wait for the one before)`,
    nextId: async () => next,
    async publish(contents, channels) {
      if (channels !== undefined) throw new Error('the Nchan bench has one channel only');
      // Ids in send order, taken before any await: publishes may overlap.
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

// Publishes to Nchan in flight at once at most (each holds a connection until Nchan answers).
const NCHAN_PUBLISH_SOCKETS = 8;

/** POSTs over kept-alive connections to 127.0.0.1:port (node:http Agent, `sockets` at most). */
function keepAlivePoster(port: number, sockets = 1): Poster {
  const agent = new http.Agent({ keepAlive: true, maxSockets: sockets });
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
