import type http from 'node:http';
import net from 'node:net';

/** What the front read of a stream request it serves itself. */
export interface StreamRequest {
  readonly path: string;
  /** The query string without `?`, or ''. */
  readonly query: string;
  /** HTTP/1.1 (chunked body) or HTTP/1.0 (body delimited by the close). */
  readonly http11: boolean;
  /** Header names lower-cased; the last value wins. */
  readonly headers: ReadonlyMap<string, string>;
}

export interface FrontOptions {
  /** Everything the front does not serve itself goes here, bytes already read included. */
  readonly http: http.Server;
  /**
   * Serves this GET as a stream on the bare socket (response head, preamble, then keeps the
   * socket) and returns true; or returns false having written nothing, and node:http answers it.
   * A promise (authorization is asynchronous) holds the socket paused until it settles.
   */
  readonly serve: (socket: net.Socket, request: StreamRequest) => boolean | Promise<boolean>;
}

// Same bounds as node:http's defaults: 16 KiB of request head, 10 s to send all of it (slowloris).
const MAX_HEAD_BYTES = 16 * 1024;
const HEAD_TIMEOUT_MS = 10_000;
const REQUEST_LINE = /^GET (\/[^ ?]*)(?:\?([^ ]*))? HTTP\/1\.([01])$/;

/** The listening socket and the connections it has not passed on yet. */
export interface Front {
  readonly server: net.Server;
  /**
   * Stops accepting and drops the connections that have not sent a whole request head yet (they
   * would otherwise hold the close for up to HEAD_TIMEOUT_MS). Resolves once every connection the
   * front accepted has closed, handed-over ones included.
   */
  close(): Promise<void>;
}

/**
 * The listening socket. It reads the first request head of each connection itself: a plain
 * `GET` of a stream route is answered on the bare socket, which then holds nothing of node:http
 * (no parser, request or response objects: a few KB less per stream, which is what lets one
 * process hold tens of thousands). Anything else — other routes, other methods, bodies, odd
 * heads, later requests on a kept-alive connection — goes to node:http untouched.
 */
export function createFront(options: FrontOptions): Front {
  const { http, serve } = options;
  const reading = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (socket) => {
    let head: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1 && head.length <= MAX_HEAD_BYTES) return;
      stop();
      const request = end === -1 ? null : parseHead(head.toString('latin1', 0, end));
      const served = request !== null && end + 4 === head.length && serve(socket, request);
      if (served === true) return;
      if (served === false) return handOver(socket, head, http);
      // Bytes that come meanwhile wait in the socket, behind the head, for node:http.
      socket.pause();
      served.then(
        (done) => {
          if (!done && !socket.destroyed) handOver(socket, head, http);
        },
        () => socket.destroy(),
      );
    };
    // A plain timer, not socket.setTimeout(): that one leaves a Timeout and a bound function on
    // every socket for good (~170 bytes per stream), and it restarts on every byte.
    const deadline = setTimeout(() => socket.destroy(), HEAD_TIMEOUT_MS).unref();
    const stop = () => {
      reading.delete(socket);
      socket.off('data', onData);
      socket.off('close', stop);
      clearTimeout(deadline);
    };
    reading.add(socket);
    socket.on('data', onData);
    socket.on('close', stop);
    socket.on('error', ignore);
  });
  return {
    server,
    close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of reading) socket.destroy();
      return closed;
    },
  };
}

function handOver(socket: net.Socket, head: Buffer, http: http.Server): void {
  socket.off('error', ignore);
  socket.pause();
  socket.unshift(head);
  http.emit('connection', socket);
  socket.resume();
}

/**
 * A stream request the front may serve, or null. Heads that announce a body or an upgrade are
 * left to node:http, which knows what to answer.
 */
function parseHead(text: string): StreamRequest | null {
  const lines = text.split('\r\n');
  const line = REQUEST_LINE.exec(lines[0] ?? '');
  if (line === null) return null;
  const headers = new Map<string, string>();
  for (let i = 1; i < lines.length; i++) {
    const header = lines[i] as string;
    const colon = header.indexOf(':');
    if (colon <= 0) return null;
    headers.set(header.slice(0, colon).trim().toLowerCase(), header.slice(colon + 1).trim());
  }
  if (headers.has('content-length') || headers.has('transfer-encoding')) return null;
  if (headers.has('upgrade') || headers.has('expect')) return null;
  if (line[3] === '1' && !headers.has('host')) return null; // node:http answers 400
  return { path: line[1] as string, query: line[2] ?? '', http11: line[3] === '1', headers };
}

function ignore(): void {}
