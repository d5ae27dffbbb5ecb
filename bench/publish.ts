import http from 'node:http';
import type { BenchDb } from './db.js';

/**
 * How the bench puts its rows out: INSERT into the table, POST /messages to rowcast, or POST /pub
 * to Nchan. One writer, each publish awaited, so ids are consecutive.
 */
export interface Publisher {
  /** `insert` or `post` (rowcast); Nchan's is always `post`. */
  readonly mode: PublishMode;
  /** What the record says about it. */
  readonly describe: (rowsPerStatement: number) => string;
  /** The id the next published row gets. */
  nextId(): Promise<number>;
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

// A publish that takes longer than this fails the run.
const REQUEST_TIMEOUT_MS = 10_000;

/** INSERT into the bench table, straight to MariaDB (not through rowcast). */
export function insertPublisher(db: BenchDb): Publisher {
  return {
    mode: 'insert',
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
  const post = keepAlivePoster(port);
  let next = 1;
  return {
    mode: 'post',
    describe: () => 'POST /pub, one keep-alive connection, each awaited',
    nextId: async () => next,
    async publish(contents, channels) {
      if (channels !== undefined) throw new Error('the Nchan bench has one channel only');
      const first = next;
      for (const content of contents) {
        const { status, text } = await post(
          '/pub',
          `<p data-id="${next}" data-seq="${next}">${content}</p>`,
          { 'Content-Type': 'text/html' },
        );
        if (status !== 201 && status !== 202) {
          throw new Error(
            `Nchan POST /pub answered ${status} ${JSON.stringify(text.slice(0, 200))}`,
          );
        }
        next++;
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
