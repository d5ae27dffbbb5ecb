import { type App, lifecycle, SHUTDOWN_GRACE_MS } from '../app.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { aggregate, createMetrics, type Figures } from '../metrics.js';
import { createTableLog } from '../source/log.js';
import type { Batch } from '../source/tailer.js';
import { createTransports, frameAll } from '../transports/index.js';
import type { Request, ToWorker } from './protocol.js';
import { createSupervisor, type WorkerEntry } from './supervisor.js';

export interface ClusterOptions {
  /** Environment for the workers (they read their configuration from it, as main does). */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Receives the workers' log lines; without it they write to this process's stdout. */
  readonly workerOutput?: (line: string) => void;
}

// A worker that has not written a batch within this time, or holds this many bytes of batches
// not written yet, no longer keeps up: it is killed and replaced, and its clients resume from the
// table. Until then a slow worker only lags; the others never wait for it.
const ACK_TIMEOUT_MS = 10_000;
export const MAX_WORKER_BACKLOG_BYTES = 64 * 1024 * 1024;
// A worker that has not sent its figures within this time fails the /metrics request (503): a
// partial sum would look to Prometheus like counters going back.
const COLLECT_TIMEOUT_MS = 3_000;

/**
 * The multi-process server (WORKERS > 1). The primary owns the pool and the tailer; each batch is
 * framed once and handed to every ready worker once, without waiting for any; the workers own the
 * sockets (node:cluster shares the listening port), replay through the primary, and answer
 * /healthz from its reports.
 */
export function createClusterPrimary(config: Config, logger: Logger, options: ClusterOptions): App {
  const transports = createTransports(config);
  // Figures being collected for a /metrics request, by collection number.
  const collecting = new Map<
    number,
    { pending: Set<number>; figures: Figures[]; done: () => void }
  >();
  let collections = 0;

  // The primary's figures: ticks, claims, rows, database errors, replays, publishes.
  const metrics = createMetrics();
  const table = createTableLog(config, logger, deliver, metrics);
  const supervisor = createSupervisor({
    workers: config.workers,
    env: options.env,
    workerOutput: options.workerOutput,
    logger,
    onReady: sendHealth,
    onExit(entry) {
      for (const id of [...collecting.keys()]) collected(id, entry.worker.id, null);
    },
    onMessage(entry, message) {
      switch (message.t) {
        case 'ack': {
          entry.streams = message.streams;
          entry.backlog.acked(message.lastSeq);
          break;
        }
        case 'streams':
          entry.streams = message.n;
          break;
        case 'collected':
          collected(message.req, entry.worker.id, message.figures);
          break;
        default:
          answer(entry, message);
      }
    },
  });

  /** Answers a worker's request (rpc.ts) with the outcome of the work it asks for. */
  function answer(entry: WorkerEntry, request: Request): void {
    const work: Promise<unknown> =
      request.t === 'replay'
        ? table.readReplays(request.requests)
        : request.t === 'publish'
          ? table.publish(request.content, request.channel)
          : scrape();
    work.then(
      // The batches up to a replay's cursor went out before it: one pipe keeps the order.
      (value) => supervisor.send(entry, { t: 'answer', req: request.req, value }),
      (err: Error & { code?: string }) =>
        supervisor.send(entry, {
          t: 'answer',
          req: request.req,
          error: err.message,
          code: err.code,
        }),
    );
  }

  /**
   * Hands a batch to every ready worker, framed once for all, without waiting for any (a busy
   * worker merges it into the writes it has not done yet). Returns how many streams the workers
   * last reported.
   */
  function deliver(batch: Batch): number {
    const frames = frameAll(transports, batch.rows);
    let bytes = 0;
    for (const frame of frames.values()) bytes += frame.bytes.byteLength;
    const channels = batch.rows.map((row) => row.channel);
    let streams = 0;
    for (const entry of supervisor.live.values()) {
      if (!entry.ready) continue;
      entry.backlog.push({ lastSeq: batch.lastSeq, channels, frames, bytes });
      streams += entry.streams;
    }
    cutStuck();
    return streams;
  }

  /** Kills the workers that fell too far behind (see ACK_TIMEOUT_MS). */
  function cutStuck(): void {
    const now = Date.now();
    for (const entry of supervisor.live.values()) {
      const { batches, bytes, waitedMs } = entry.backlog.state(now);
      if (waitedMs > ACK_TIMEOUT_MS || bytes > MAX_WORKER_BACKLOG_BYTES) {
        supervisor.kill(
          entry,
          'worker.stuck',
          { batches, backlogBytes: bytes, waitedMs },
          'worker does not keep up with the batches; killing it (its clients resume)',
        );
        entry.backlog.clear();
      }
    }
  }

  /** The cluster's /metrics text: the primary's figures and every ready worker's, added up. */
  async function scrape(): Promise<string> {
    const figures = [await metrics.figures()];
    const targets = [...supervisor.live.values()].filter((entry) => entry.ready);
    const id = ++collections;
    await new Promise<void>((resolve, reject) => {
      const pending = new Set(targets.map((entry) => entry.worker.id));
      const timer = setTimeout(() => {
        collecting.delete(id);
        reject(new Error(`workers ${[...pending].join(', ')} sent no metrics in time`));
      }, COLLECT_TIMEOUT_MS);
      const done = () => {
        clearTimeout(timer);
        collecting.delete(id);
        resolve();
      };
      collecting.set(id, { pending, figures, done });
      if (pending.size === 0) return done();
      for (const entry of targets) {
        supervisor.send(entry, { t: 'collect', req: id }, () =>
          collected(id, entry.worker.id, null),
        );
      }
    });
    return aggregate(figures);
  }

  /** A worker's figures for a collection; null when it died meanwhile (its figures are gone). */
  function collected(id: number, workerId: number, figures: Figures | null): void {
    const state = collecting.get(id);
    if (state === undefined || !state.pending.delete(workerId)) return;
    if (figures !== null) state.figures.push(figures);
    if (state.pending.size === 0) state.done();
  }

  // Workers answer /healthz from the primary's view of the tailer, sent this often.
  function sendHealth(): void {
    let streams = 0;
    for (const entry of supervisor.live.values()) streams += entry.streams;
    const message: ToWorker = {
      t: 'health',
      tail: table.tailer.health(),
      streams,
      channels: table.hasChannels,
    };
    for (const entry of supervisor.live.values()) if (entry.ready) supervisor.send(entry, message);
  }
  const healthTimer = setInterval(
    () => {
      sendHealth();
      cutStuck();
    },
    Math.min(1000, config.pollIntervalMs),
  );
  healthTimer.unref();

  return {
    ...lifecycle(config, logger, table, {
      listen: () => supervisor.start(),
      close() {
        clearInterval(healthTimer);
        return supervisor.close(SHUTDOWN_GRACE_MS * 2);
      },
    }),
    tailer: table.tailer,
  };
}
