import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Config } from './config.js';
import { createFront, type StreamRequest } from './front.js';
import { chunk, type Hub } from './hub.js';
import type { Logger } from './log.js';
import type { Transports } from './transports/index.js';
import type { Transport } from './transports/transport.js';

export interface HealthReport {
  readonly healthy: boolean;
  readonly body: Readonly<Record<string, unknown>>;
}

export interface ServerDeps {
  readonly hub: Hub;
  readonly transports: Transports;
  readonly health: () => HealthReport;
  readonly logger: Logger;
}

export interface HttpServer {
  /** Listens on HOST:PORT (PORT 0 picks a free port); resolves with the base URL. */
  listen(): Promise<URL>;
  /**
   * Stops accepting, ends every stream with its closing frame, and resolves when all connections
   * are gone; connections still open after `graceMs` are destroyed.
   */
  close(graceMs: number): Promise<void>;
  readonly server: http.Server;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

// Seconds a client should wait before it retries a refused stream.
const RETRY_AFTER_S = '5';

export function createServer(config: Config, deps: ServerDeps): HttpServer {
  const { hub, logger } = deps;
  const log = logger.child({ mod: 'http' });
  let closing = false;
  let full = false;

  const server = http.createServer({
    // Slow or stalled request headers are cut (slowloris); once a stream is open it has no idle
    // timeout of its own: heartbeats keep it busy and 'close' removes it.
    headersTimeout: 10_000,
    requestTimeout: 30_000,
    keepAliveTimeout: 5_000,
    noDelay: true,
  });

  const streamRoutes = new Map<string, Transport>([['/stream', deps.transports.html]]);
  const routes: Record<string, Record<string, Handler>> = {
    '/healthz': { GET: healthz, HEAD: healthz },
  };
  for (const [path, transport] of streamRoutes) {
    const open = openStream(transport);
    routes[path] = { GET: open, HEAD: open };
  }
  // The front serves new streams on bare sockets whenever it can; requests it passes on
  // (including a stream asked for on a kept-alive connection) take the node:http path below.
  const front = createFront({
    http: server,
    takes: (path) => streamRoutes.has(path) && acceptsStream(),
    open: openBareStream,
  });

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const path = pathOf(req.url ?? '');
    if (path === null) return reply(res, 400, 'bad request target\n');
    const route = routes[path];
    if (route === undefined) return reply(res, 404, 'not found\n');
    const handler = route[req.method ?? ''];
    if (handler === undefined) {
      return reply(res, 405, 'method not allowed\n', { Allow: Object.keys(route).join(', ') });
    }
    handler(req, res);
  });

  function acceptsStream(): boolean {
    return !closing && hub.size < config.maxStreams;
  }

  function openStream(transport: Transport): Handler {
    return (req, res) => {
      if (closing) {
        return reply(res, 503, 'server is shutting down\n', { 'Retry-After': RETRY_AFTER_S });
      }
      if (req.method === 'HEAD') {
        res.writeHead(200, transport.headers).end();
        return;
      }
      if (!acceptsStream()) {
        // Logged when the limit is reached, not for every refused client.
        if (!full) {
          log.warn({ event: 'stream.rejected', limit: config.maxStreams }, 'MAX_STREAMS reached');
        }
        full = true;
        return reply(res, 503, 'too many open streams\n', { 'Retry-After': RETRY_AFTER_S });
      }
      full = false;
      req.socket.setTimeout(0);
      res.writeHead(200, transport.headers);
      res.write(transport.preamble);
      hub.add(res, transport, 'raw');
    };
  }

  function openBareStream(socket: Socket, request: StreamRequest): void {
    const transport = streamRoutes.get(request.path) as Transport;
    full = false;
    const head = responseHead(transport, request.http11);
    socket.write(
      request.http11
        ? Buffer.concat([head, chunk(transport.preamble)])
        : Buffer.concat([head, transport.preamble]),
    );
    hub.add(socket, transport, request.http11 ? 'chunked' : 'raw');
  }

  function healthz(_req: IncomingMessage, res: ServerResponse): void {
    const report = deps.health();
    reply(res, report.healthy ? 200 : 503, `${JSON.stringify(report.body)}\n`, {
      'Content-Type': 'application/json',
    });
  }

  return {
    listen() {
      return new Promise((resolve, reject) => {
        front.once('error', reject);
        front.listen(config.port, config.host, () => {
          front.off('error', reject);
          const { address, port } = front.address() as AddressInfo;
          const host = address.includes(':') ? `[${address}]` : address;
          resolve(new URL(`http://${host}:${port}/`));
        });
      });
    },
    close(graceMs) {
      closing = true;
      // Resolves once every connection the front accepted has closed, handed-over ones included.
      const closed = new Promise<void>((resolve) => front.close(() => resolve()));
      hub.closeAll();
      server.closeIdleConnections();
      const grace = setTimeout(() => {
        hub.destroyAll();
        server.closeAllConnections();
      }, graceMs);
      return closed.finally(() => clearTimeout(grace));
    },
    server,
  };
}

/** The status line and headers of a stream served on a bare socket, as node:http would write them. */
function responseHead(transport: Transport, http11: boolean): Buffer {
  const lines = ['HTTP/1.1 200 OK'];
  for (const [name, value] of Object.entries(transport.headers)) lines.push(`${name}: ${value}`);
  lines.push(`Date: ${new Date().toUTCString()}`);
  lines.push(http11 ? 'Transfer-Encoding: chunked' : 'Connection: close');
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
}

/** The path of an origin-form (`/stream?x`) or absolute-form (`http://h/stream`) target. */
function pathOf(target: string): string | null {
  if (target.startsWith('/')) {
    const query = target.indexOf('?');
    return query === -1 ? target : target.slice(0, query);
  }
  try {
    const url = new URL(target);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.pathname : null;
  } catch {
    return null;
  }
}

/** A small plain-text (or given type) answer with an exact length; HEAD gets no body. */
function reply(
  res: ServerResponse,
  status: number,
  body: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    ...headers,
  });
  res.end(body);
}
