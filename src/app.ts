import type { Config } from './config.js';
import { createServer } from './http.js';
import { createHub, type Hub } from './hub.js';
import type { Logger } from './log.js';
import type { Poller } from './poller.js';
import { createPolling, healthReport } from './polling.js';
import { createTransports } from './transports/index.js';

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

// Streams that do not take their closing frame within this time are destroyed at shutdown.
export const SHUTDOWN_GRACE_MS = 3_000;

export function createApp(config: Config, logger: Logger): SingleApp {
  const hub = createHub({
    maxBufferedBytes: config.maxBufferedBytes,
    heartbeatMs: config.heartbeatMs,
    logger,
  });
  const transports = createTransports(config);
  const polling = createPolling(config, logger, (batch) =>
    hub.broadcast((transport) => transport.frame(batch)),
  );
  const http = createServer(config, {
    hub,
    transports,
    health: () => healthReport(config, polling.poller.health(), hub.size),
    logger,
  });
  let closed: Promise<void> | null = null;

  return {
    async start() {
      await polling.waitForSchema();
      const url = await http.listen();
      polling.poller.start();
      logListening(logger, config, url);
      return url;
    },
    close() {
      closed ??= (async () => {
        // The running tick finishes and marks, so its rows reach the streams before they end.
        await polling.poller.stop();
        await http.close(SHUTDOWN_GRACE_MS);
        await polling.close();
        logger.info({ event: 'shutdown.done', mod: 'app' }, 'stopped');
      })();
      return closed;
    },
    hub,
    poller: polling.poller,
  };
}

export function logListening(logger: Logger, config: Config, url: URL): void {
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
}
