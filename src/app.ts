import type { Config } from './config.js';
import { createServer } from './http.js';
import { createHub, type Hub } from './hub.js';
import type { Logger } from './log.js';
import { createMetrics, type Metrics } from './metrics.js';
import type { Poller } from './poller.js';
import { createPolling, healthReport, type Polling } from './polling.js';
import { createTransports } from './transports/index.js';
import type { Transport } from './transports/transport.js';

/** A running rowcast, one process or many: what main.ts drives and tests start on port 0. */
export interface App {
  /**
   * Waits for the database (retrying while it is unreachable), applies the schema, listens and
   * starts polling. Resolves with the base URL. Rejects with SchemaError or DbAccessError when
   * retrying cannot help.
   */
  start(): Promise<URL>;
  /** Graceful stop; every call returns the same promise. */
  close(): Promise<void>;
  readonly poller: Poller;
}

/** The single-process server: the poller writes straight into this process's hub. */
export interface SingleApp extends App {
  readonly hub: Hub;
}

/** A stream waiting for its replay. */
interface Resuming {
  readonly transport: Transport;
  readonly done: (frame: Buffer | null) => void;
}

// Streams that do not take their closing frame within this time are destroyed at shutdown.
export const SHUTDOWN_GRACE_MS = 3_000;

/**
 * The hub of a process that holds streams (the single process, or a cluster worker), with the
 * figures that count what it does.
 */
export function createStreamHub(config: Config, logger: Logger): { hub: Hub; metrics: Metrics } {
  const metrics = createMetrics();
  const hub = createHub({
    maxBufferedBytes: config.maxBufferedBytes,
    heartbeatMs: config.heartbeatMs,
    logger,
    metrics,
  });
  metrics.watchStreams(() => hub.sizes());
  return { hub, metrics };
}

export function createApp(config: Config, logger: Logger): SingleApp {
  const { hub, metrics } = createStreamHub(config, logger);
  const transports = createTransports(config);
  const polling = createPolling(
    config,
    logger,
    (batch) => hub.broadcast((transport) => transport.frame(batch)),
    metrics,
  );
  // Each replay is framed once per transport, whatever the number of streams resuming with it.
  const replayer = polling.replayer<Resuming>(
    (waiters, rows) => {
      const frames = new Map<Transport, Buffer>();
      for (const { transport, done } of waiters) {
        const frame = frames.get(transport) ?? transport.frame(rows);
        frames.set(transport, frame);
        done(frame);
      }
    },
    (waiters) => {
      for (const { done } of waiters) done(null);
    },
  );
  const http = createServer(config, {
    hub,
    transports,
    health: () => healthReport(config, polling.poller.health(), hub.size),
    resume: (since, transport, done) => replayer.request(since, { transport, done }),
    publish: (content) => polling.publish(content),
    metrics,
    scrape: () => metrics.text(),
    logger,
  });
  return {
    ...lifecycle(config, logger, polling, {
      listen: () => http.listen(),
      close: () => http.close(SHUTDOWN_GRACE_MS),
    }),
    hub,
    poller: polling.poller,
  };
}

/**
 * start() and close() of either kind of server around its way of serving: wait for the
 * database, serve, then poll; on close, let the running tick deliver and mark, stop serving (every
 * stream gets its closing frame), then close the pool. close() returns the same promise each time.
 */
export function lifecycle(
  config: Config,
  logger: Logger,
  polling: Polling,
  serving: { listen(): Promise<URL>; close(): Promise<void> },
): Pick<App, 'start' | 'close'> {
  let closed: Promise<void> | null = null;
  return {
    async start() {
      await polling.waitForSchema();
      const url = await serving.listen();
      polling.poller.start();
      const stream = new URL('stream', url).href;
      logger.info(
        {
          event: 'server.listening',
          mod: 'app',
          url: stream,
          table: config.msgTable,
          workers: config.workers,
        },
        `streaming ${config.msgTable} at ${stream}`,
      );
      return url;
    },
    close() {
      closed ??= (async () => {
        await polling.poller.stop();
        await serving.close();
        await polling.close();
        logger.info({ event: 'shutdown.done', mod: 'app' }, 'stopped');
      })();
      return closed;
    },
  };
}
