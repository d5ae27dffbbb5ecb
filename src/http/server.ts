import { readFileSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Config } from '../config.js';
import type { Subscription } from '../core/subscription.js';
import {
  chunk,
  type Framing,
  finalBytes,
  type Hub,
  type Joining,
  type Stream,
} from '../fanout/hub.js';
import type { Logger } from '../log.js';
import { METRICS_CONTENT_TYPE, type Metrics } from '../metrics.js';
import type { HealthReport } from '../source/log.js';
import type { Transports } from '../transports/index.js';
import type { Transport } from '../transports/transport.js';
import { type AuthOutcome, createAuthorizer } from './auth.js';
import { createFront, type StreamRequest } from './front.js';
import { createPublishHandler } from './publish.js';
import { reply } from './reply.js';
import {
  corsHeaders,
  header,
  responseHead,
  type StreamAsk,
  splitTarget,
  streamAsk,
} from './request.js';

export interface ServerDeps {
  readonly hub: Hub;
  readonly transports: Transports;
  readonly health: () => HealthReport;
  /**
   * Frames for `transport` the rows after row id `since` in the delivery order (and the live
   * batches since) and calls `done` with them, which joins the stream to the hub at once; `null`
   * when they could not be read.
   */
  readonly resume: (
    since: string,
    transport: Transport,
    subscription: Subscription,
    done: (frame: Buffer | null) => void,
  ) => void;
  /**
   * Whether the table has a channel column, or null while this process does not know yet (a
   * worker before the primary's first report): without one, asking for a channel is a 400.
   */
  readonly tableHasChannels: () => boolean | null;
  /** Inserts a row (of a channel) for POST /messages and makes it go out at once; its id. */
  readonly publish: (content: string, channel: string | null) => Promise<string>;
  /** Counts what happens to streams before they reach the hub. */
  readonly metrics: Pick<Metrics, 'written' | 'rejected' | 'authRefused'>;
  /** The GET /metrics text: this server's figures (in a worker, the whole cluster's). */
  readonly scrape: () => Promise<string>;
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
const DEMO_PAGE = new URL('../../../public/index.html', import.meta.url);

export function createServer(config: Config, deps: ServerDeps): HttpServer {
  const { hub, transports, logger } = deps;
  const authorizer = createAuthorizer(config);
  const log = logger.child({ mod: 'http' });
  // Streams waiting for their replay: open, not in the hub yet, counted against MAX_STREAMS.
  const resuming = new Set<Stream>();
  let closing = false;
  let full = false;

  const server = http.createServer({
    // Slow or stalled request headers are cut (slowloris); once a stream is open it has no idle
    // timeout of its own: heartbeats keep it busy and 'close' removes it.
    headersTimeout: 10_000,
    requestTimeout: 30_000,
    keepAliveTimeout: 5_000,
    // How often those timeouts are checked (node's default, 30 s, would let a stalled request
    // hold its connection for up to 40 s).
    connectionsCheckingInterval: 1_000,
    noDelay: true,
  });
  // node:http starts tracking connections (the timeouts above, closeIdleConnections) when it
  // listens; the front listens in its place and hands connections over, so start it here.
  server.emit('listening');

  const streamRoutes = new Map<string, Transport>([
    ['/stream', transports.html],
    ['/events', transports.sse],
    ['/stream.ndjson', transports.ndjson],
  ]);
  const demoPage = readFileSync(DEMO_PAGE);
  const publish = createPublishHandler({
    token: config.publishToken,
    maxContentBytes: config.maxContentBytes,
    publish: deps.publish,
    logger,
  });
  const routes: Record<string, Record<string, Handler>> = {
    '/': { GET: demo, HEAD: demo },
    '/healthz': { GET: healthz, HEAD: healthz },
    '/readyz': { GET: readyz, HEAD: readyz },
    // Browsers ask for it on every page; an empty answer keeps their consoles free of 404s.
    '/favicon.ico': { GET: noContent, HEAD: noContent },
    '/metrics': { GET: metrics, HEAD: metrics },
    '/messages': {
      POST: (req, res) =>
        void publish(req, res).catch((err: unknown) => {
          log.error({ event: 'publish.error', err }, 'publish handler failed');
          res.destroy();
        }),
    },
  };
  for (const [path, transport] of streamRoutes) {
    const open = openStream(transport);
    routes[path] = { GET: open, HEAD: open };
    if (config.allowOrigin !== null) routes[path].OPTIONS = preflight;
  }
  // The front serves new streams on bare sockets whenever it can; requests it passes on
  // (including a stream asked for on a kept-alive connection) take the node:http path below.
  const front = createFront({
    http: server,
    serve: serveBareStream,
  });

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    // A kept-alive connection is not kept once shutdown has begun.
    if (closing) res.shouldKeepAlive = false;
    const target = splitTarget(req.url ?? '');
    if (target === null) return reply(res, 400, 'bad request target\n');
    const route = routes[target.path];
    if (route === undefined) return reply(res, 404, 'not found\n');
    const handler = route[req.method ?? ''];
    if (handler === undefined) {
      return reply(res, 405, 'method not allowed\n', { Allow: Object.keys(route).join(', ') });
    }
    handler(req, res);
  });

  function acceptsStream(): boolean {
    return !closing && hub.size + resuming.size < config.maxStreams;
  }

  function openStream(transport: Transport): Handler {
    return (req, res) => {
      if (closing) {
        return reply(res, 503, 'server is shutting down\n', { 'Retry-After': RETRY_AFTER_S });
      }
      const query = splitTarget(req.url ?? '')?.query ?? '';
      const ask = streamAsk(query, header(req, 'last-event-id'), header(req, 'origin'), config);
      if ('refused' in ask) return reply(res, 400, `${ask.refused}\n`);
      const noColumn = channelsRefused(ask);
      if (noColumn !== null) return reply(res, 400, `${noColumn}\n`);
      void authorize(ask, header(req, 'authorization'), header(req, 'cookie')).then((outcome) => {
        if (!outcome.ok) {
          deps.metrics.authRefused(outcome.status);
          return reply(res, outcome.status, outcome.body, { ...outcome.headers, ...ask.cors });
        }
        openAuthorized(transport, ask, outcome.expiresAt, req, res);
      });
    };
  }

  /** Why a stream may not ask for channels: the table has none (every row is in channel ''). */
  function channelsRefused(ask: StreamAsk): string | null {
    if (ask.subscription.all || deps.tableHasChannels() !== false) return null;
    return (
      `table ${config.msgTable} has no ${config.channelColumn} column, so it has no channels: ` +
      'ask for every row (no channel parameter)'
    );
  }

  /** What a stream's credentials allow: always everything when authorization is off. */
  function authorize(
    ask: StreamAsk,
    authorization: string | undefined,
    cookie: string | undefined,
  ): Promise<AuthOutcome> {
    if (authorizer === null) return Promise.resolve({ ok: true, expiresAt: null });
    return authorizer.authorize(
      { authorization, cookie, accessToken: ask.accessToken },
      ask.subscription,
    );
  }

  function openAuthorized(
    transport: Transport,
    ask: StreamAsk,
    expiresAt: number | null,
    req: IncomingMessage,
    res: ServerResponse,
  ): void {
    if (res.destroyed) return;
    if (closing) {
      reply(res, 503, 'server is shutting down\n', { 'Retry-After': RETRY_AFTER_S });
      return;
    }
    if (req.method === 'HEAD') {
      res.writeHead(200, { ...transport.headers, ...ask.cors }).end();
      return;
    }
    if (!acceptsStream()) {
      // Logged when the limit is reached, not for every refused client.
      if (!full) {
        log.warn({ event: 'stream.rejected', limit: config.maxStreams }, 'MAX_STREAMS reached');
      }
      full = true;
      deps.metrics.rejected();
      reply(res, 503, 'too many open streams\n', { 'Retry-After': RETRY_AFTER_S });
      return;
    }
    full = false;
    req.socket.setTimeout(0);
    res.writeHead(200, { ...transport.headers, ...ask.cors });
    if (transport.preamble.length > 0) res.write(transport.preamble);
    deps.metrics.written(transport.name, transport.preamble.length);
    join(res, { transport, framing: 'raw', subscription: ask.subscription, expiresAt }, ask.since);
  }

  /**
   * Serves a stream on the bare socket, or returns false (refusals are node:http's to answer);
   * a promise of that while its token is verified.
   */
  function serveBareStream(socket: Socket, request: StreamRequest): boolean | Promise<boolean> {
    const transport = streamRoutes.get(request.path);
    if (transport === undefined || !acceptsStream()) return false;
    const { headers } = request;
    const ask = streamAsk(
      request.query,
      headers.get('last-event-id'),
      headers.get('origin'),
      config,
    );
    if ('refused' in ask || channelsRefused(ask) !== null) return false;
    if (authorizer === null) return serveBare(socket, request, transport, ask, null);
    return authorize(ask, headers.get('authorization'), headers.get('cookie')).then((outcome) => {
      if (!outcome.ok || socket.destroyed || !acceptsStream()) return false;
      return serveBare(socket, request, transport, ask, outcome.expiresAt);
    });
  }

  function serveBare(
    socket: Socket,
    request: StreamRequest,
    transport: Transport,
    ask: StreamAsk,
    expiresAt: number | null,
  ): true {
    full = false;
    const framing: Framing = request.http11 ? 'chunked' : 'raw';
    const head = responseHead(transport, ask.cors, request.http11);
    const preamble = transport.preamble;
    const body = framing === 'chunked' && preamble.length > 0 ? chunk(preamble) : preamble;
    socket.write(body.length === 0 ? head : Buffer.concat([head, body]));
    deps.metrics.written(transport.name, body.length);
    join(socket, { transport, framing, subscription: ask.subscription, expiresAt }, ask.since);
    return true;
  }

  /** Puts an open stream in the hub, after its replay when it resumes. */
  function join(stream: Stream, joining: Joining, since: string | null) {
    if (since === null) return hub.add(stream, joining);
    const { transport, framing } = joining;
    resuming.add(stream);
    deps.resume(since, transport, joining.subscription, (frame) => {
      resuming.delete(stream);
      if (stream.destroyed || stream.writableEnded) return;
      // Without its replay the stream would have a gap: end it, and the client retries.
      if (frame === null) return void stream.end(finalBytes(transport, framing));
      if (frame.length > 0) {
        const body = framing === 'chunked' ? chunk(frame) : frame;
        stream.write(body);
        deps.metrics.written(transport.name, body.length);
      }
      hub.add(stream, joining);
    });
  }

  function preflight(req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(204, {
      ...corsHeaders(header(req, 'origin'), config.allowOrigin),
      'Access-Control-Allow-Methods': 'GET, HEAD',
      'Access-Control-Allow-Headers': 'Last-Event-ID, Cache-Control, Authorization',
      'Access-Control-Max-Age': '600',
    });
    res.end();
  }

  function noContent(_req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(204, { 'Cache-Control': 'max-age=86400' }).end();
  }

  function healthz(_req: IncomingMessage, res: ServerResponse): void {
    const report = deps.health();
    reply(res, report.healthy ? 200 : 503, `${JSON.stringify(report.body)}\n`, {
      'Content-Type': 'application/json',
    });
  }

  // For load balancers: healthy, and not shutting down (a closing instance takes no new streams).
  function readyz(_req: IncomingMessage, res: ServerResponse): void {
    const report = deps.health();
    const ready = report.healthy && !closing;
    const body = { ...report.body, status: ready ? 'ready' : closing ? 'closing' : 'unavailable' };
    reply(res, ready ? 200 : 503, `${JSON.stringify(body)}\n`, {
      'Content-Type': 'application/json',
    });
  }

  function metrics(_req: IncomingMessage, res: ServerResponse): void {
    deps.scrape().then(
      (text) => reply(res, 200, text, { 'Content-Type': METRICS_CONTENT_TYPE }),
      (err: unknown) => {
        log.warn({ event: 'metrics.failed', err }, 'could not gather the metrics');
        reply(res, 503, 'metrics unavailable, try again\n', { 'Retry-After': RETRY_AFTER_S });
      },
    );
  }

  function demo(_req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(200, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Length': demoPage.length,
      'Cache-Control': 'no-cache',
      'X-Content-Type-Options': 'nosniff',
      // The page's own inline script and style, and requests to this server only.
      'Content-Security-Policy':
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    });
    res.end(demoPage);
  }

  return {
    listen() {
      return new Promise((resolve, reject) => {
        front.server.once('error', reject);
        front.server.listen(config.port, config.host, () => {
          front.server.off('error', reject);
          const { address, port } = front.server.address() as AddressInfo;
          const host = address.includes(':') ? `[${address}]` : address;
          resolve(new URL(`http://${host}:${port}/`));
        });
      });
    },
    close(graceMs) {
      closing = true;
      const closed = front.close();
      hub.closeAll();
      for (const stream of resuming) stream.destroy();
      // Closes idle kept-alive connections and stops the timeout checks.
      server.close();
      const grace = setTimeout(() => {
        hub.destroyAll();
        server.closeAllConnections();
      }, graceMs);
      return closed.finally(() => clearTimeout(grace));
    },
    server,
  };
}
