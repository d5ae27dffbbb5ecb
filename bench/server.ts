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
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  for (const output of [child.stdout, child.stderr]) {
    if (output === null) continue;
    createInterface({ input: output, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (line) =>
      options.log.write(`${line}\n`),
    );
  }
  const pid = child.pid ?? 0;
  const knownPids = new Set<number>([pid]);
  let exitCode: number | null = null;
  let exited = false;
  const exit = once(child, 'exit').then(([code]) => {
    exited = true;
    exitCode = code as number | null;
  });

  const refreshTree = () => {
    const tree = processTree(pid);
    for (const member of tree) knownPids.add(member);
    return tree;
  };
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

  const server: BenchServer = {
    pid,
    port,
    knownPids,
    refreshTree,
    async stop() {
      if (exited) return { graceful: exitCode === 0, exitCode };
      refreshTree();
      child.kill('SIGTERM');
      const timer = sleep(STOP_TIMEOUT_MS, 'timeout' as const, { ref: false });
      const graceful =
        (await Promise.race([exit.then(() => 'exited' as const), timer])) === 'exited';
      kill(); // workers that outlived their primary, or everything after the timeout
      await exit;
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
    if ((await healthStatus(port)) === 200) return;
    await sleep(100);
  }
  throw new Error(`the server was not healthy within ${READY_TIMEOUT_MS} ms`);
}

function healthStatus(port: number): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({
      host: '127.0.0.1',
      port,
      path: '/healthz',
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

async function freePort(): Promise<number> {
  const probe = net.createServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as net.AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}
