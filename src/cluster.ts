import cluster, { type Worker } from 'node:cluster';
import { fileURLToPath } from 'node:url';
import { type App, createStreamHub, lifecycle, SHUTDOWN_GRACE_MS } from './app.js';
import type { Config } from './config.js';
import { createServer } from './http.js';
import type { Logger } from './log.js';
import { aggregate, createMetrics, type Figures } from './metrics.js';
import type { PollerHealth } from './poller.js';
import { createPolling, healthReport } from './polling.js';
import { createTransports, frameAll } from './transports/index.js';
import type { Transport } from './transports/transport.js';

/** Primary → worker. */
type ToWorker =
  | { readonly t: 'batch'; readonly seq: number; readonly frames: Map<string, Uint8Array> }
  | { readonly t: 'health'; readonly poll: PollerHealth; readonly streams: number }
  /** The replay for these requests, framed per transport; null when it could not be read. */
  | {
      readonly t: 'replayed';
      readonly reqs: number[];
      readonly frames: Map<string, Uint8Array> | null;
    }
  /** The answer to a publish (the row id) or a scrape (the cluster's /metrics text), or why not. */
  | { readonly t: 'answer'; readonly req: number; readonly value?: string; readonly error?: string }
  /** Send your figures (for a /metrics request some worker got). */
  | { readonly t: 'collect'; readonly req: number }
  | { readonly t: 'close' };

/** Worker → primary. */
type ToPrimary =
  | { readonly t: 'ready'; readonly url: string }
  | { readonly t: 'ack'; readonly seq: number; readonly written: number }
  | { readonly t: 'streams'; readonly n: number }
  | { readonly t: 'replay'; readonly req: number; readonly since: string }
  | { readonly t: 'publish'; readonly req: number; readonly content: string }
  | { readonly t: 'scrape'; readonly req: number }
  | { readonly t: 'collected'; readonly req: number; readonly figures: Figures };

export interface ClusterOptions {
  /** Environment for the workers (they read their configuration from it, as main does). */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Receives the workers' log lines; without it they write to this process's stdout. */
  readonly workerOutput?: (line: string) => void;
}

// A worker that has not written a batch within this time is stuck: it is killed and replaced, so
// one frozen process cannot hold back the marks of all the others.
const ACK_TIMEOUT_MS = 10_000;
// A worker that dies is replaced after this long (doubled while replacements keep dying young).
const RESPAWN_MS = 500;
const MAX_RESPAWN_MS = 10_000;
// A worker that has not sent its figures within this time fails the /metrics request (503): a
// partial sum would look to Prometheus like counters going back. A worker answers when the
// primary does not, so a lost primary cannot hold a /metrics request either.
const COLLECT_TIMEOUT_MS = 3_000;
const SCRAPE_TIMEOUT_MS = COLLECT_TIMEOUT_MS + 2_000;
const WORKER_ENTRY = fileURLToPath(new URL('./worker.js', import.meta.url));

interface Live {
  readonly worker: Worker;
  ready: boolean;
  streams: number;
  startedAt: number;
}

/**
 * The multi-process server (WORKERS > 1). The primary owns the database pool and the poller; each
 * batch is framed once and handed to every worker once over IPC; the workers own the sockets
 * (node:cluster shares the listening port). A batch is marked only after every live worker has
 * written it; a worker that dies is replaced and its clients reconnect.
 */
export function createClusterPrimary(config: Config, logger: Logger, options: ClusterOptions): App {
  const log = logger.child({ mod: 'cluster' });
  const transports = createTransports(config);
  const live = new Map<number, Live>();
  const waiting = new Map<number, { pending: Set<number>; written: number; done: () => void }>();
  // Figures being collected for a /metrics request, by collection number.
  const collecting = new Map<
    number,
    { pending: Set<number>; figures: Figures[]; done: () => void }
  >();
  let seq = 0;
  let collections = 0;
  let closing = false;
  let respawnMs = RESPAWN_MS;
  // While start() waits for the first workers to listen.
  let starting: { resolve: (url: URL) => void; reject: (err: Error) => void } | null = null;

  // The primary's figures: ticks, rows delivered, marks, database errors, replays, publishes.
  const metrics = createMetrics();
  const polling = createPolling(config, logger, deliver, metrics);
  // Replays are framed once and sent once per worker, whatever the number of its streams resuming.
  const replayer = polling.replayer<{ entry: Live; req: number }>(
    (waiters, rows) => replied(waiters, frameAll(transports, rows)),
    (waiters) => replied(waiters, null),
  );

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
    const entry: Live = { worker, ready: false, streams: 0, startedAt: Date.now() };
    live.set(worker.id, entry);
    if (options.workerOutput !== undefined) {
      for (const output of [worker.process.stdout, worker.process.stderr]) {
        let rest = '';
        output?.setEncoding('utf8').on('data', (chunk: string) => {
          const lines = (rest + chunk).split('\n');
          rest = lines.pop() ?? '';
          for (const line of lines) if (line !== '') options.workerOutput?.(line);
        });
      }
    }
    worker.on('message', (message: ToPrimary) => onMessage(entry, message));
    worker.on('exit', (code, signal) => onExit(entry, code, signal));
  }

  function onMessage(entry: Live, message: ToPrimary): void {
    switch (message.t) {
      case 'ready':
        entry.ready = true;
        respawnMs = RESPAWN_MS;
        sendHealth();
        if (starting !== null && [...live.values()].every((other) => other.ready)) {
          starting.resolve(new URL(message.url));
          starting = null;
        }
        break;
      case 'ack':
        entry.streams = message.written;
        settle(message.seq, entry.worker.id, message.written);
        break;
      case 'streams':
        entry.streams = message.n;
        break;
      case 'replay':
        replayer.request(message.since, { entry, req: message.req });
        break;
      case 'publish':
        answer(entry, message.req, polling.publish(message.content));
        break;
      case 'scrape':
        answer(entry, message.req, scrape());
        break;
      case 'collected':
        collected(message.req, entry.worker.id, message.figures);
        break;
    }
  }

  /** Sends a worker the outcome of its request. */
  function answer(entry: Live, req: number, outcome: Promise<string>): void {
    outcome.then(
      (value) => send(entry, { t: 'answer', req, value }),
      (err: Error) => send(entry, { t: 'answer', req, error: err.message }),
    );
  }

  function replied(
    waiters: readonly { entry: Live; req: number }[],
    frames: Map<string, Uint8Array> | null,
  ): void {
    const reqs = new Map<Live, number[]>();
    for (const { entry, req } of waiters) {
      const ids = reqs.get(entry) ?? [];
      ids.push(req);
      reqs.set(entry, ids);
    }
    for (const [entry, ids] of reqs) send(entry, { t: 'replayed', reqs: ids, frames });
  }

  function onExit(entry: Live, code: number | null, signal: string | null): void {
    live.delete(entry.worker.id);
    // Its share of every batch in flight is settled: its clients are gone.
    for (const id of [...waiting.keys()]) settle(id, entry.worker.id, 0);
    for (const id of [...collecting.keys()]) collected(id, entry.worker.id, null);
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

  /** Hands a batch to every ready worker; resolves when all of them have written it. */
  function deliver(batch: Parameters<typeof frameAll>[1]): Promise<number> {
    const frames = frameAll(transports, batch);
    const targets = [...live.values()].filter((entry) => entry.ready);
    if (targets.length === 0) return Promise.resolve(0);
    const id = ++seq;
    return new Promise((resolve) => {
      const state = {
        pending: new Set(targets.map((entry) => entry.worker.id)),
        written: 0,
        done: () => {
          clearTimeout(timer);
          waiting.delete(id);
          resolve(state.written);
        },
      };
      waiting.set(id, state);
      const timer = setTimeout(() => {
        for (const workerId of state.pending) {
          const stuck = live.get(workerId)?.worker.process;
          log.error(
            { event: 'worker.stuck', worker: stuck?.pid, seq: id },
            'worker did not write a batch; killing it',
          );
          stuck?.kill('SIGKILL');
        }
      }, ACK_TIMEOUT_MS);
      const message: ToWorker = { t: 'batch', seq: id, frames };
      for (const entry of targets) {
        // A worker dying right now has a closed channel: its share settles at once.
        send(entry, message, () => settle(id, entry.worker.id, 0));
      }
    }).finally(sendHealth) as Promise<number>;
  }

  /** Sends to a worker; one that is dying (closed channel) is left to its 'exit' handler. */
  function send(entry: Live, message: ToWorker, onFailure?: () => void): void {
    if (!entry.worker.isConnected()) {
      onFailure?.();
      return;
    }
    entry.worker.send(message, (err: Error | null) => {
      if (err !== null) onFailure?.();
    });
  }

  function settle(id: number, workerId: number, written: number): void {
    const state = waiting.get(id);
    if (state === undefined || !state.pending.delete(workerId)) return;
    state.written += written;
    if (state.pending.size === 0) state.done();
  }

  /** The cluster's /metrics text: the primary's figures and every ready worker's, added up. */
  async function scrape(): Promise<string> {
    const figures = [await metrics.figures()];
    const targets = [...live.values()].filter((entry) => entry.ready);
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
      const message: ToWorker = { t: 'collect', req: id };
      for (const entry of targets) {
        send(entry, message, () => collected(id, entry.worker.id, null));
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

  function streams(): number {
    let n = 0;
    for (const entry of live.values()) n += entry.streams;
    return n;
  }

  // Workers answer /healthz from the primary's view of the poller; they get it after every tick.
  function sendHealth(): void {
    const message: ToWorker = { t: 'health', poll: polling.poller.health(), streams: streams() };
    for (const entry of live.values()) if (entry.ready) send(entry, message);
  }
  const healthTimer = setInterval(sendHealth, Math.min(1000, config.pollIntervalMs));
  healthTimer.unref();

  return {
    ...lifecycle(config, logger, polling, {
      listen() {
        const ready = new Promise<URL>((resolve, reject) => {
          starting = { resolve, reject };
        });
        for (let i = 0; i < config.workers; i++) fork();
        return ready;
      },
      async close() {
        closing = true;
        clearInterval(healthTimer);
        const exits = [...live.values()].map(
          (entry) => new Promise((resolve) => entry.worker.once('exit', resolve)),
        );
        const message: ToWorker = { t: 'close' };
        for (const entry of live.values()) send(entry, message);
        const timeout = setTimeout(() => {
          for (const entry of live.values()) entry.worker.process.kill('SIGKILL');
        }, SHUTDOWN_GRACE_MS * 2);
        await Promise.all(exits);
        clearTimeout(timeout);
      },
    }),
    poller: polling.poller,
  };
}

/**
 * A worker process: a hub and the HTTP server on the shared port. It writes what the primary
 * sends and answers /healthz from the primary's last report. Signals are the primary's business
 * (a terminal's Ctrl-C reaches every process of the group); a worker closes when told, or when
 * the primary is gone.
 */
export async function runWorker(config: Config, logger: Logger): Promise<void> {
  // The worker's figures: streams, cut-offs, refusals, bytes written, its process.
  const { hub, metrics } = createStreamHub(config, logger);
  let poll: PollerHealth = { state: 'starting', lastOkAt: null, failures: 0, pendingMarks: 0 };
  let total = 0;
  // A worker whose primary is gone is closing (see 'disconnect'): what it would send is moot.
  const send = (message: ToPrimary) => {
    if (process.connected) process.send?.(message);
  };
  // Requests to the primary waiting for its answer, by request number.
  let requests = 0;
  const resuming = new Map<
    number,
    { transport: Transport; done: (frame: Buffer | null) => void }
  >();
  const answering = new Map<number, (answer: { value?: string; error?: string }) => void>();
  /** Sends the request numbered `build` makes; resolves with the primary's answer. */
  function ask(build: (req: number) => ToPrimary, timeoutMs?: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const req = ++requests;
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => settle({ error: 'the primary did not answer in time' }), timeoutMs);
      const settle = (answer: { value?: string; error?: string }) => {
        clearTimeout(timer);
        answering.delete(req);
        if (answer.value !== undefined) resolve(answer.value);
        else reject(new Error(answer.error));
      };
      answering.set(req, settle);
      send(build(req));
    });
  }
  const http = createServer(config, {
    hub,
    transports: createTransports(config),
    health: () => healthReport(config, poll, total),
    resume(since, transport, done) {
      const req = ++requests;
      resuming.set(req, { transport, done });
      send({ t: 'replay', req, since });
    },
    publish: (content) => ask((req) => ({ t: 'publish', req, content })),
    metrics,
    // The primary adds up every process's figures, this one's included.
    scrape: () => ask((req) => ({ t: 'scrape', req }), SCRAPE_TIMEOUT_MS),
    logger,
  });
  let closing: Promise<void> | null = null;
  const close = () => {
    closing ??= http.close(SHUTDOWN_GRACE_MS).then(() => process.exit(0));
    return closing;
  };

  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => undefined);
  process.on('disconnect', close);
  process.on('message', (message: ToWorker) => {
    switch (message.t) {
      case 'batch': {
        const written = hub.broadcast((transport) => asBuffer(message.frames.get(transport.name)));
        send({ t: 'ack', seq: message.seq, written });
        break;
      }
      case 'health':
        poll = message.poll;
        total = message.streams;
        break;
      case 'replayed':
        for (const req of message.reqs) {
          const waiter = resuming.get(req);
          resuming.delete(req);
          const frames = message.frames;
          waiter?.done(frames === null ? null : asBuffer(frames.get(waiter.transport.name)));
        }
        break;
      case 'answer':
        answering.get(message.req)?.(message);
        break;
      case 'collect':
        // One that fails sends nothing: the primary's timeout fails that /metrics request.
        metrics.figures().then(
          (figures) => send({ t: 'collected', req: message.req, figures }),
          (err: unknown) =>
            logger.warn({ event: 'metrics.failed', mod: 'cluster', err }, 'no figures to send'),
        );
        break;
      case 'close':
        void close();
        break;
    }
  });

  // The primary sums the stream counts for /healthz; once a second is plenty.
  let reported = -1;
  setInterval(() => {
    if (hub.size !== reported) {
      reported = hub.size;
      send({ t: 'streams', n: reported });
    }
  }, 1000).unref();

  const url = await http.listen();
  send({ t: 'ready', url: url.href });
}

/** IPC hands Buffers over as plain Uint8Arrays; view the same memory as a Buffer. */
function asBuffer(bytes: Uint8Array | undefined): Buffer {
  if (bytes === undefined) return Buffer.alloc(0);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
