import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { processTree } from './procfs.js';
import {
  type BenchServer,
  freePort,
  httpStatus,
  pipeLines,
  signalThenKill,
  trackTree,
} from './server.js';

// A private nginx + Nchan for `npm run bench -- --vs nchan` (bench/README.md): its own prefix
// under the temp directory, its own config and port, its master a child of the bench. The
// system's nginx (its config, service, logs) is never used or touched.

const NGINX = '/usr/sbin/nginx';
const NCHAN_PACKAGE = 'libnginx-mod-nchan';
const MODULE_NAME = 'ngx_nchan_module.so';
const MODULE_GUESS = `/usr/lib/nginx/modules/${MODULE_NAME}`;
const INSTALL_TIMEOUT_MS = 15 * 60_000;
const READY_TIMEOUT_MS = 15_000;
// SIGQUIT (graceful: the clients are gone by then), then SIGTERM, then SIGKILL to the tree.
const QUIT_TIMEOUT_MS = 10_000;
const TERM_TIMEOUT_MS = 5_000;
// Connections (and files) per worker; capped at the hard file limit, which cannot be raised here.
const WORKER_CONNECTIONS = 25_000;
// Nchan keeps this many messages of the channel: all 1,000 of `throughput` (and the warm-up).
const MESSAGE_BUFFER = 2_000;

export interface NchanOptions {
  /** The module's .so, from ensureNchan(). */
  readonly modulePath: string;
  readonly workers: number;
  /** Receives nginx's stderr and, when it stops, its error log, line by line. */
  readonly log: NodeJS.WritableStream;
}

/**
 * The path of Nchan's module. When nginx or the module is missing, installs them
 * (`apt-get install -y nginx libnginx-mod-nchan`; `apt-get update` first only if that fails),
 * saying so on stderr.
 */
export function ensureNchan(say: (line: string) => void): string {
  let modulePath = findModule();
  if (existsSync(NGINX) && modulePath !== null) return modulePath;
  const install = ['install', '-y', 'nginx', NCHAN_PACKAGE];
  say(`${NGINX} or the Nchan module is missing: apt-get ${install.join(' ')}`);
  if (!aptGet(install)) {
    say('apt-get install failed: apt-get update, then the install again');
    if (!aptGet(['update']) || !aptGet(install)) {
      throw new Error(`could not install nginx and ${NCHAN_PACKAGE} (see apt-get's output above)`);
    }
  }
  modulePath = findModule();
  if (!existsSync(NGINX) || modulePath === null) {
    throw new Error(`${NGINX} or ${MODULE_NAME} still missing after apt-get install`);
  }
  return modulePath;
}

function findModule(): string | null {
  const listed = spawnSync('dpkg', ['-L', NCHAN_PACKAGE], { encoding: 'utf8', timeout: 10_000 });
  const fromDpkg =
    listed.status === 0
      ? listed.stdout.split('\n').find((line) => line.endsWith(`/${MODULE_NAME}`))
      : undefined;
  for (const candidate of [fromDpkg, MODULE_GUESS]) {
    if (candidate !== undefined && existsSync(candidate)) return candidate;
  }
  return null;
}

/** Runs apt-get with its output on our stderr; whether it succeeded in time. */
function aptGet(args: readonly string[]): boolean {
  const result = spawnSync('apt-get', args, {
    stdio: ['ignore', 2, 2],
    timeout: INSTALL_TIMEOUT_MS,
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  });
  return result.status === 0;
}

/**
 * Starts nginx + Nchan in a fresh prefix on a free port of 127.0.0.1 and waits until it answers
 * and all its workers are up. Subscribers: `GET /sub` with `TE: chunked`; publisher: `POST /pub`.
 */
export async function startNchan(options: NchanOptions): Promise<BenchServer> {
  const prefix = mkdtempSync(join(tmpdir(), 'rowcast-nchan-'));
  // The workers run as nobody: they must be able to reach their temp directories.
  chmodSync(prefix, 0o711);
  mkdirSync(join(prefix, 'logs'));
  const errorLog = join(prefix, 'logs', 'error.log');
  const port = await freePort();
  const files = Math.min(WORKER_CONNECTIONS, hardFileLimit());
  const conf = join(prefix, 'nginx.conf');
  writeFileSync(conf, nchanConfig({ ...options, prefix, port, files }));
  // -e: even the messages before the config is read go to the prefix, not /var/log/nginx.
  const child: ChildProcess = spawn(NGINX, ['-p', `${prefix}/`, '-c', conf, '-e', errorLog], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  pipeLines(child, options.log, 'nginx: ');
  const pid = child.pid ?? 0;
  let exited = false;
  let exitCode: number | null = null;
  const exit = once(child, 'exit').then(([code]) => {
    exited = true;
    exitCode = code as number | null;
  });
  const tree = trackTree(pid);
  let removed = false;
  const cleanUp = () => {
    if (removed) return;
    removed = true;
    try {
      for (const line of readFileSync(errorLog, 'utf8').split('\n')) {
        if (line !== '') options.log.write(`nginx: ${line}\n`);
      }
    } catch {}
    rmSync(prefix, { recursive: true, force: true });
  };
  const kill = () => {
    tree.kill();
    cleanUp();
  };

  const server: BenchServer = {
    pid,
    port,
    knownPids: tree.knownPids,
    refreshTree: tree.refreshTree,
    async stop() {
      if (!exited) {
        tree.refreshTree();
        child.kill('SIGQUIT');
        const quit = sleep(QUIT_TIMEOUT_MS, 'timeout' as const, { ref: false });
        const graceful =
          (await Promise.race([exit.then(() => 'exited' as const), quit])) === 'exited';
        if (!graceful) await signalThenKill(child, exit, 'SIGTERM', TERM_TIMEOUT_MS, tree.kill);
        tree.kill(); // workers that outlived the master
        cleanUp();
        return { graceful: graceful && exitCode === 0, exitCode };
      }
      kill();
      return { graceful: exitCode === 0, exitCode };
    },
    kill,
  };

  try {
    await waitReady(port, options.workers, pid, () => exited);
  } catch (err) {
    kill();
    throw err;
  }
  tree.refreshTree();
  return server;
}

/** Until GET /pub answers (the channel's info, or 404 before its first message) and every worker runs. */
async function waitReady(
  port: number,
  workers: number,
  pid: number,
  hasExited: () => boolean,
): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (hasExited()) throw new Error('nginx exited during start (see bench/results/server.log)');
    if ((await httpStatus(port, '/pub')) !== 0 && processTree(pid).length >= 1 + workers) return;
    await sleep(100);
  }
  throw new Error(`nginx + Nchan did not answer within ${READY_TIMEOUT_MS} ms`);
}

function nchanConfig(o: NchanOptions & { prefix: string; port: number; files: number }): string {
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
    .map((kind) => `  ${kind}_temp_path ${o.prefix}/${kind}_temp;`)
    .join('\n');
  return `# Written by bench/nchan.ts for one bench run; removed when it stops.
load_module ${o.modulePath};
daemon off;
master_process on;
worker_processes ${o.workers};
worker_rlimit_nofile ${o.files};
pid ${o.prefix}/nginx.pid;
lock_file ${o.prefix}/nginx.lock;
error_log ${o.prefix}/logs/error.log warn;
events { worker_connections ${o.files}; }
http {
  access_log off;
${temp}
  # The publisher's one connection carries every row (1,001 requests in throughput).
  keepalive_requests 1000000;
  nchan_message_buffer_length ${MESSAGE_BUFFER};
  nchan_message_timeout 1h;
  server {
    # reuseport: one listening socket per worker, so the kernel spreads the streams evenly (as
    # rowcast's cluster does); without it one worker may take most and hit its file limit.
    listen 127.0.0.1:${o.port} reuseport;
    location = /sub { nchan_subscriber http-chunked; nchan_channel_id bench; }
    location = /pub { nchan_publisher; nchan_channel_id bench; }
  }
}
`;
}

/** The hard limit on open files of this process (and so of nginx, which inherits it). */
function hardFileLimit(): number {
  try {
    const line = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    const hard = Number(line?.[2]);
    return Number.isInteger(hard) && hard > 0 ? hard : WORKER_CONNECTIONS;
  } catch {
    return WORKER_CONNECTIONS;
  }
}
