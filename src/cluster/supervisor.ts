import cluster, { type Worker } from 'node:cluster';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../log.js';
import { type Backlog, createBacklog } from './backlog.js';
import type { ToPrimary, ToWorker } from './protocol.js';

/** A forked worker as the primary tracks it. */
export interface WorkerEntry {
  readonly worker: Worker;
  /** Listening, and handed every batch from now on. */
  ready: boolean;
  streams: number;
  readonly startedAt: number;
  /** Batches on their way to it, not written yet: merged while it writes, and bounded. */
  readonly backlog: Backlog;
}

export interface SupervisorOptions {
  readonly workers: number;
  /** Environment for the workers (they read their configuration from it, as main does). */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Receives the workers' log lines; without it they write to this process's stdout. */
  readonly workerOutput?: (line: string) => void;
  readonly logger: Logger;
  /** Every message but 'ready', which the supervisor handles (then calls `onReady`). */
  readonly onMessage: (entry: WorkerEntry, message: Exclude<ToPrimary, { t: 'ready' }>) => void;
  readonly onReady: (entry: WorkerEntry) => void;
  /** A worker exited (before it is replaced). */
  readonly onExit: (entry: WorkerEntry) => void;
}

export interface Supervisor {
  /** Forks the workers; resolves with the URL once all of them listen. */
  start(): Promise<URL>;
  readonly live: ReadonlyMap<number, WorkerEntry>;
  /** Sends to a worker; `onFailure` runs when its channel is closed (it is dying). */
  send(entry: WorkerEntry, message: ToWorker, onFailure?: () => void): void;
  /** Kills a worker that no longer keeps up; it is replaced like any that dies. */
  kill(entry: WorkerEntry, event: string, fields: Record<string, unknown>, why: string): void;
  /** Tells every worker to close; kills the ones still running after `graceMs`. */
  close(graceMs: number): Promise<void>;
}

// A worker that dies is replaced after this long (doubled while replacements keep dying young).
const RESPAWN_MS = 500;
const MAX_RESPAWN_MS = 10_000;
const WORKER_ENTRY = fileURLToPath(new URL('../worker.js', import.meta.url));

/** Forks the workers, replaces the ones that die, and carries their messages. */
export function createSupervisor(options: SupervisorOptions): Supervisor {
  const log = options.logger.child({ mod: 'cluster' });
  const live = new Map<number, WorkerEntry>();
  let closing = false;
  let respawnMs = RESPAWN_MS;
  // While start() waits for the first workers to listen.
  let starting: { resolve: (url: URL) => void; reject: (err: Error) => void } | null = null;

  cluster.setupPrimary({
    exec: WORKER_ENTRY,
    serialization: 'advanced',
    silent: options.workerOutput !== undefined,
  });

  function fork(): void {
    const env = Object.fromEntries(
      Object.entries(options.env).filter(
        (entry): entry is [string, string] => entry[1] !== undefined,
      ),
    );
    const worker = cluster.fork(env);
    const entry: WorkerEntry = {
      worker,
      ready: false,
      streams: 0,
      startedAt: Date.now(),
      backlog: createBacklog((batch) => send(entry, { t: 'batch', batch })),
    };
    live.set(worker.id, entry);
    if (options.workerOutput !== undefined) pipeLines(worker, options.workerOutput);
    worker.on('message', (message: ToPrimary) => {
      if (message.t !== 'ready') return options.onMessage(entry, message);
      entry.ready = true;
      respawnMs = RESPAWN_MS;
      options.onReady(entry);
      if (starting !== null && [...live.values()].every((other) => other.ready)) {
        starting.resolve(new URL(message.url));
        starting = null;
      }
    });
    worker.on('exit', (code, signal) => onExit(entry, code, signal));
  }

  function send(entry: WorkerEntry, message: ToWorker, onFailure?: () => void): void {
    if (!entry.worker.isConnected()) {
      onFailure?.();
      return;
    }
    entry.worker.send(message, (err: Error | null) => {
      if (err !== null) onFailure?.();
    });
  }

  function onExit(entry: WorkerEntry, code: number | null, signal: string | null): void {
    live.delete(entry.worker.id);
    options.onExit(entry);
    if (closing) return;
    if (starting !== null) {
      // A first worker could not listen (say, the port is taken): a replacement would fail alike.
      starting.reject(new Error(`worker exited before listening (code ${code}, signal ${signal})`));
      starting = null;
      return;
    }
    const young = Date.now() - entry.startedAt < 5_000;
    log.error(
      // `worker` is the pid, as on the worker's own log lines.
      {
        event: 'worker.exit',
        worker: entry.worker.process.pid,
        code,
        signal,
        respawnInMs: respawnMs,
      },
      'worker died; starting a replacement',
    );
    setTimeout(() => {
      if (!closing) fork();
    }, respawnMs).unref();
    respawnMs = young ? Math.min(respawnMs * 2, MAX_RESPAWN_MS) : RESPAWN_MS;
  }

  return {
    start() {
      const ready = new Promise<URL>((resolve, reject) => {
        starting = { resolve, reject };
      });
      for (let i = 0; i < options.workers; i++) fork();
      return ready;
    },
    live,
    send,
    kill(entry, event, fields, why) {
      log.error({ event, worker: entry.worker.process.pid, ...fields }, why);
      entry.worker.process.kill('SIGKILL');
    },
    async close(graceMs) {
      closing = true;
      const exits = [...live.values()].map(
        (entry) => new Promise((resolve) => entry.worker.once('exit', resolve)),
      );
      for (const entry of live.values()) send(entry, { t: 'close' });
      const timeout = setTimeout(() => {
        for (const entry of live.values()) entry.worker.process.kill('SIGKILL');
      }, graceMs);
      await Promise.all(exits);
      clearTimeout(timeout);
    },
  };
}

/** Hands each line a worker writes (stdout and stderr) to `output`. */
function pipeLines(worker: Worker, output: (line: string) => void): void {
  for (const stream of [worker.process.stdout, worker.process.stderr]) {
    let rest = '';
    stream?.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (rest + chunk).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) if (line !== '') output(line);
    });
  }
}
