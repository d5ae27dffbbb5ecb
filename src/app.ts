import type { Config } from './config.js';
import { type Framed, framedRows } from './fanout/framed.js';
import { createHub, type Hub } from './fanout/hub.js';
import { createResumer, type ReadReplays } from './fanout/resumer.js';
import { createServer, type ServerDeps } from './http/server.js';
import type { Logger } from './log.js';
import { createMetrics, type Metrics } from './metrics.js';
import { createTableLog, healthReport, type TableLog } from './source/log.js';
import type { Tailer } from './source/tailer.js';
import { createTransports } from './transports/index.js';

/** A running rowcast, one process or many: what main.ts drives and tests start on port 0. */
export interface App {
  /**
   * Waits for the database (retrying while it is unreachable), prepares the table, listens and
   * starts tailing. Resolves with the base URL. Rejects with SchemaError, MigrationError or
   * DbAccessError when retrying cannot help.
   */
  start(): Promise<URL>;
  /** Graceful stop; every call returns the same promise. */
  close(): Promise<void>;
  readonly tailer: Tailer;
}

/** The single-process server: the tailer hands batches straight to this process's streams. */
export interface SingleApp extends App {
  readonly hub: Hub;
}

// Streams that do not take their closing frame within this time are destroyed at shutdown.
export const SHUTDOWN_GRACE_MS = 3_000;

/** A process that holds streams (the single process, or a cluster worker): hub, resumer, HTTP. */
export interface StreamSide {
  readonly hub: Hub;
  readonly metrics: Metrics;
  /**
   * Hands a batch to the hub and holds it for the streams whose replay is being read. Returns
   * the number of streams it is for.
   */
  deliver(batch: Framed): number;
  readonly http: ReturnType<typeof createServer>;
}

/**
 * The fan-out half every stream-holding process shares: the hub, the resumer reading replays
 * through `read`, and the HTTP server. `deps` says where health, publishes and /metrics come from.
 */
export function createStreamSide(
  config: Config,
  logger: Logger,
  read: ReadReplays,
  deps: Pick<ServerDeps, 'health' | 'publish' | 'scrape' | 'tableHasChannels'> & {
    metrics?: Metrics;
    /** Every stream has been written every batch up to this cursor. */
    onWritten?: (lastSeq: number) => void;
  },
): StreamSide {
  const metrics = deps.metrics ?? createMetrics();
  const hub = createHub({
    maxBufferedBytes: config.maxBufferedBytes,
    heartbeatMs: config.heartbeatMs,
    logger,
    metrics,
    ...(deps.onWritten === undefined ? {} : { onWritten: deps.onWritten }),
  });
  metrics.watchStreams(() => hub.sizes());
  metrics.watchChannels(() => hub.channels());
  const resumer = createResumer({ read, logger, replayed: metrics.replayed });
  const http = createServer(config, {
    hub,
    transports: createTransports(config),
    health: deps.health,
    resume: (since, transport, subscription, done) =>
      resumer.request(since, { transport, subscription, done }),
    publish: deps.publish,
    tableHasChannels: deps.tableHasChannels,
    metrics,
    scrape: deps.scrape,
    logger,
  });
  return {
    hub,
    metrics,
    http,
    deliver(batch) {
      resumer.hold(batch);
      return hub.broadcast(batch);
    },
  };
}

export function createApp(config: Config, logger: Logger): SingleApp {
  const metrics = createMetrics();
  // The tailer hands batches to the streams, which exist only once the table log does: bound late.
  let side: StreamSide | null = null;
  const table = createTableLog(
    config,
    logger,
    (batch) => side?.deliver(framedRows(batch.rows, batch.lastSeq)) ?? 0,
    metrics,
  );
  side = createStreamSide(config, logger, table.readReplays, {
    metrics,
    health: () => healthReport(config, table.tailer.health(), side?.hub.size ?? 0),
    publish: (content, channel) => table.publish(content, channel),
    tableHasChannels: () => table.hasChannels,
    scrape: () => metrics.text(),
  });
  const { http, hub } = side;
  return {
    ...lifecycle(config, logger, table, {
      listen: () => http.listen(),
      close: () => http.close(SHUTDOWN_GRACE_MS),
    }),
    hub,
    tailer: table.tailer,
  };
}

/**
 * start() and close() of either kind of server around its way of serving: wait for the
 * database, serve, then tail; on close, let the running tick hand its batch over, stop serving
 * (every stream gets its closing frame), then close the pool. close() returns the same promise
 * each time.
 */
export function lifecycle(
  config: Config,
  logger: Logger,
  table: TableLog,
  serving: { listen(): Promise<URL>; close(): Promise<void> },
): Pick<App, 'start' | 'close'> {
  let closed: Promise<void> | null = null;
  return {
    async start() {
      await table.waitForSchema();
      const url = await serving.listen();
      table.tailer.start();
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
        await table.tailer.stop();
        await serving.close();
        await table.close();
        logger.info({ event: 'shutdown.done', mod: 'app' }, 'stopped');
      })();
      return closed;
    },
  };
}
