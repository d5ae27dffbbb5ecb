import dotenv from 'dotenv';
import { runWorker } from './cluster/worker.js';
import { loadConfig } from './config.js';
import { capYoungGeneration } from './heap.js';
import { createLogger } from './log.js';

// Entry point of a cluster worker (see cluster.ts). The primary has checked the same
// configuration already, so a failure here is unexpected: log it and let the primary decide.
capYoungGeneration();
dotenv.config({ quiet: true });
const config = loadConfig(process.env);
const logger = createLogger(config.logLevel).child({ worker: process.pid });
runWorker(config, logger).catch((err: unknown) => {
  logger.fatal({ event: 'worker.failed', err }, `worker cannot start: ${(err as Error).message}`);
  process.exit(1);
});
