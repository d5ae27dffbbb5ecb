import dotenv from 'dotenv';
import { createApp } from './app.js';
import { createClusterPrimary } from './cluster/primary.js';
import { type Config, loadConfig } from './config.js';
import { ConfigError, RowcastError } from './errors.js';
import { capYoungGeneration } from './heap.js';
import { createLogger } from './log.js';

capYoungGeneration();
// The environment wins over .env; a missing .env is fine.
dotenv.config({ quiet: true });

let config: Config;
try {
  config = loadConfig(process.env);
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  process.stderr.write(`rowcast: ${err.message}\n`);
  process.exit(1);
}

const logger = createLogger(config.logLevel);
const app =
  config.workers > 1
    ? createClusterPrimary(config, logger, { env: process.env })
    : createApp(config, logger);
let stopping = false;

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) {
      logger.warn({ event: 'shutdown.forced', signal }, 'second signal; exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ event: 'shutdown.start', signal }, 'shutting down');
    app.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ event: 'shutdown.failed', err }, 'shutdown failed');
        process.exit(1);
      },
    );
  });
}

app.start().catch((err: unknown) => {
  if (stopping) return; // a signal during start: close() exits
  const code = err instanceof RowcastError ? err.code : undefined;
  logger.fatal({ event: 'start.failed', err, code }, `cannot start: ${(err as Error).message}`);
  process.exitCode = 1;
  app.close().finally(() => process.exit(1));
});
