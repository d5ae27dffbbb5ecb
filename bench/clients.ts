import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Collected, Connected, FromClient, Progress, ToClient } from './protocol.js';

const CLIENT_ENTRY = fileURLToPath(new URL('./client.js', import.meta.url));

export interface ClientPool {
  readonly pids: readonly number[];
  /**
   * Opens `streams` streams, split evenly over the instances (`ports`), then each instance's
   * share evenly over its clients: client i connects to `ports[i % ports.length]` only, from its
   * own source address. The replies come in client order, each with the instance it targets.
   */
  connect(options: ConnectOptions): Promise<(Connected & { readonly instance: number })[]>;
  /**
   * Starts a phase on every client (the rows' channels, when they have any); resolves once every
   * client has reset its counters.
   */
  expect(base: number, count: number, channels?: readonly string[]): Promise<void>;
  /** Deliveries so far, streams open, and deliveries those streams should get in this phase. */
  progress(): Promise<{ received: number; open: number; expected: number }>;
  collect(): Promise<Collected[]>;
  /** Asks every client to exit; kills those still running after a short grace. */
  close(): Promise<void>;
  /** SIGKILL to every client still running (the watchdog's path). */
  kill(): void;
}

export interface ConnectOptions {
  /** One port per rowcast instance; there must be at least as many clients as ports. */
  readonly ports: readonly number[];
  readonly streams: number;
  /** Source addresses, one per client (127.0.0.x). */
  readonly addresses: readonly string[];
  readonly concurrency: number;
  readonly timeoutMs: number;
  readonly deadlineMs: number;
  /**
   * The channel of each stream (`?channel=NAME`, '' for none), `streams` of them: client i gets
   * the slice after those of clients 0 … i-1. No list: every stream is a plain `GET /stream`.
   */
  readonly channels?: readonly string[];
  /** Every stream's request path (`/stream`, or Nchan's `/sub`) and extra headers. */
  readonly path: string;
  readonly headers?: Readonly<Record<string, string>>;
}

// A reply that does not come within this long means the client is stuck or dead.
const REPLY_TIMEOUT_MS = 30_000;

/** Forks `count` client processes (bench/client.ts) and talks to them over IPC. */
export function startClients(count: number): ClientPool {
  const children = Array.from({ length: count }, () => spawnClient());

  async function all<T extends FromClient>(
    message: (index: number) => ToClient,
    timeoutMs: number,
  ) {
    return Promise.all(children.map((child, index) => child.request<T>(message(index), timeoutMs)));
  }

  return {
    pids: children.map((child) => child.pid),
    async connect(options) {
      const instances = options.ports.length;
      if (instances === 0 || instances > count) {
        throw new Error(`${count} client processes cannot target ${instances} instances`);
      }
      const split = (total: number, parts: number, index: number) =>
        Math.floor(total / parts) + (index < total % parts ? 1 : 0);
      const instanceOf = (index: number) => index % instances;
      // Client i is the (i / instances)-th of the clients of its instance.
      const share = (index: number) => {
        const instance = instanceOf(index);
        const clientsOfInstance = split(count, instances, instance);
        const streams = split(options.streams, instances, instance);
        return split(streams, clientsOfInstance, Math.floor(index / instances));
      };
      const offsets = children.map((_, index) => {
        let offset = 0;
        for (let before = 0; before < index; before++) offset += share(before);
        return offset;
      });
      const replies = await all<Connected>(
        (index) => ({
          t: 'connect',
          host: '127.0.0.1',
          port: options.ports[instanceOf(index)] as number,
          localAddress: options.addresses[index] as string,
          count: share(index),
          concurrency: Math.max(1, Math.floor(options.concurrency / count)),
          timeoutMs: options.timeoutMs,
          deadlineMs: options.deadlineMs,
          path: options.path,
          ...(options.headers === undefined ? {} : { headers: options.headers }),
          ...(options.channels === undefined
            ? {}
            : {
                channels: options.channels.slice(
                  offsets[index] as number,
                  (offsets[index] as number) + share(index),
                ),
              }),
        }),
        options.deadlineMs + options.timeoutMs + REPLY_TIMEOUT_MS,
      );
      return replies.map((reply, index) => ({ ...reply, instance: instanceOf(index) }));
    },
    async expect(base, rows, channels) {
      await all<Progress>(
        () => ({ t: 'expect', base, count: rows, ...(channels === undefined ? {} : { channels }) }),
        REPLY_TIMEOUT_MS,
      );
    },
    async progress() {
      const replies = await all<Progress>(() => ({ t: 'progress' }), REPLY_TIMEOUT_MS);
      return {
        received: replies.reduce((sum, reply) => sum + reply.received, 0),
        open: replies.reduce((sum, reply) => sum + reply.open, 0),
        expected: replies.reduce((sum, reply) => sum + reply.expected, 0),
      };
    },
    collect() {
      return all<Collected>(() => ({ t: 'collect' }), REPLY_TIMEOUT_MS);
    },
    async close() {
      await Promise.all(children.map((child) => child.exit()));
    },
    kill() {
      for (const child of children) child.kill();
    },
  };
}

interface Client {
  readonly pid: number;
  request<T extends FromClient>(message: ToClient, timeoutMs: number): Promise<T>;
  exit(): Promise<void>;
  kill(): void;
}

function spawnClient(): Client {
  const child: ChildProcess = fork(CLIENT_ENTRY, [], {
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  // Each client answers its requests in order: replies resolve the oldest waiting request.
  const waiting: { resolve: (reply: FromClient) => void; reject: (err: Error) => void }[] = [];
  let exited = false;
  // A send to a client that just died fails here; its pending requests fail through 'exit'.
  child.on('error', () => undefined);
  const exitedPromise = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = true;
      const err = new Error(`client ${child.pid} exited (code ${code}, signal ${signal})`);
      for (const entry of waiting.splice(0)) entry.reject(err);
      resolve();
    });
  });
  child.on('message', (reply: FromClient) => {
    const entry = waiting.shift();
    if (entry === undefined) return;
    if (reply.t === 'error') entry.reject(new Error(`client ${child.pid}: ${reply.message}`));
    else entry.resolve(reply);
  });

  return {
    pid: child.pid ?? 0,
    request<T extends FromClient>(message: ToClient, timeoutMs: number): Promise<T> {
      if (exited) return Promise.reject(new Error(`client ${child.pid} has exited`));
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new Error(`client ${child.pid} did not answer '${message.t}' in ${timeoutMs} ms`));
          child.kill('SIGKILL');
        }, timeoutMs);
        waiting.push({
          resolve: (reply) => {
            clearTimeout(timer);
            resolve(reply as T);
          },
          reject: (err) => {
            clearTimeout(timer);
            reject(err);
          },
        });
        child.send(message);
      });
    },
    async exit() {
      if (!exited) child.send({ t: 'exit' } satisfies ToClient);
      const grace = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exitedPromise;
      clearTimeout(grace);
    },
    kill() {
      if (!exited) child.kill('SIGKILL');
    },
  };
}
