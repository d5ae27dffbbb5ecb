import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { isAlive, processTree } from './procfs.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

export interface ServerOptions {
  readonly databaseUrl: string;
  readonly workers: number;
  readonly pollIntervalMs: number;
  readonly maxStreams: number;
  /**
   * Receives the server's stdout and stderr (pino JSON at LOG_LEVEL=warn, or $BENCH_LOG_LEVEL),
   * whole lines only: several servers may share it (each line carries its `pid`).
   */
  readonly log: NodeJS.WritableStream;
  /** PUBLISH_TOKEN, which turns POST /messages on (`--publish post`); absent: off. */
  readonly publishToken?: string;
}

export interface BenchServer {
  readonly pid: number;
  readonly port: number;
  /** Every pid seen in the server's tree so far (the watchdog kills these). */
  readonly knownPids: ReadonlySet<number>;
  /** Re-reads the server's process tree (cluster workers) and remembers it. */
  refreshTree(): number[];
  /** SIGTERM (graceful), then SIGKILL to the whole tree after STOP_TIMEOUT_MS. */
  stop(): Promise<{ graceful: boolean; exitCode: number | null }>;
  /** SIGKILL to every process of the tree. */
  kill(): void;
}

/** Starts `node dist/src/main.js` on a free port and waits until /healthz answers 200. */
export async function startServer(options: ServerOptions): Promise<BenchServer> {
  const port = await freePort();
  const child: ChildProcess = spawn(process.execPath, [MAIN], {
    cwd: ROOT,
    env: {
      ...process.env,
      DATABASE_URL: options.databaseUrl,
      MSG_TABLE: 'msg',
      HOST: '127.0.0.1',
      PORT: String(port),
      POLL_INTERVAL_MS: String(options.pollIntervalMs),
      LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
      MAX_STREAMS: String(options.maxStreams),
      HEARTBEAT_MS: '15000',
      WORKERS: String(options.workers),
      ...(options.publishToken === undefined ? {} : { PUBLISH_TOKEN: options.publishToken }),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  pipeLines(child, options.log);
  const pid = child.pid ?? 0;
  let exitCode: number | null = null;
  let exited = false;
  const exit = once(child, 'exit').then(([code]) => {
    exited = true;
    exitCode = code as number | null;
  });
  const { knownPids, refreshTree, kill } = trackTree(pid);

  const server: BenchServer = {
    pid,
    port,
    knownPids,
    refreshTree,
    async stop() {
      if (exited) return { graceful: exitCode === 0, exitCode };
      refreshTree();
      const graceful = await signalThenKill(child, exit, 'SIGTERM', STOP_TIMEOUT_MS, kill);
      return { graceful: graceful && exitCode === 0, exitCode };
    },
    kill,
  };

  try {
    await waitHealthy(port, () => exited);
  } catch (err) {
    kill();
    throw err;
  }
  refreshTree();
  return server;
}

/** Polls /healthz until it answers 200 (the first tick succeeded); bounded by READY_TIMEOUT_MS. */
async function waitHealthy(port: number, hasExited: () => boolean): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (hasExited())
      throw new Error('the server exited during start (see bench/results/server.log)');
    if ((await httpStatus(port, '/healthz')) === 200) return;
    await sleep(100);
  }
  throw new Error(`the server was not healthy within ${READY_TIMEOUT_MS} ms`);
}

/**
 * Sends `signal` to the child, waits up to `timeoutMs` for it to exit, then SIGKILLs whatever is
 * left of its tree (`kill`: workers that outlived it, or everything after the timeout). Whether
 * it exited in time.
 */
export async function signalThenKill(
  child: ChildProcess,
  exit: Promise<unknown>,
  signal: NodeJS.Signals,
  timeoutMs: number,
  kill: () => void,
): Promise<boolean> {
  child.kill(signal);
  const timer = sleep(timeoutMs, 'timeout' as const, { ref: false });
  const inTime = (await Promise.race([exit.then(() => 'exited' as const), timer])) === 'exited';
  kill();
  await exit;
  return inTime;
}

/** The status of a GET on 127.0.0.1:port, or 0 when nothing answers within 2 s. */
export function httpStatus(port: number, path: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({
      host: '127.0.0.1',
      port,
      path,
      agent: false,
      timeout: 2_000,
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

/** Writes the child's stdout and stderr to `log`, whole lines only (others may share it). */
export function pipeLines(child: ChildProcess, log: NodeJS.WritableStream, prefix = ''): void {
  for (const output of [child.stdout, child.stderr]) {
    if (output === null) continue;
    createInterface({ input: output, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (line) =>
      log.write(`${prefix}${line}\n`),
    );
  }
}

/**
 * Remembers every process seen in the tree of `pid` (its children, found through /proc), so
 * that `kill` reaches them even after their parent is gone.
 */
export function trackTree(pid: number) {
  const knownPids = new Set<number>([pid]);
  const refreshTree = () => {
    const tree = processTree(pid);
    for (const member of tree) knownPids.add(member);
    return tree;
  };
  /** SIGKILL to every process of the tree, and to those seen in it before. */
  const kill = () => {
    refreshTree();
    for (const member of knownPids) {
      if (isAlive(member)) {
        try {
          process.kill(member, 'SIGKILL');
        } catch {}
      }
    }
  };
  return { knownPids: knownPids as ReadonlySet<number>, refreshTree, kill };
}

export async function freePort(): Promise<number> {
  const probe = net.createServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as net.AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}
