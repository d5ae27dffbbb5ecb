import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { testEnv } from './app.js';
import { waitUntil } from './wait.js';

const MAIN = fileURLToPath(new URL('../../src/main.js', import.meta.url));

/** `node dist/src/main.js` running, its output collected as it comes. */
export interface MainProcess {
  readonly child: ChildProcess;
  /** Everything written to stdout (the pino lines) and stderr so far. */
  readonly stdout: string;
  readonly stderr: string;
  /** Resolves with the exit code (null when killed by a signal) once all output is read. */
  readonly exited: Promise<number | null>;
}

/** Runs rowcast as an operator does, with `env` only (and PATH), in `cwd` (where .env is read). */
export function spawnMain(env: Record<string, string>, cwd = tmpdir()): MainProcess {
  const child = spawn(process.execPath, [MAIN], {
    cwd,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  return {
    child,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    // 'close', not 'exit': the process may exit before its last output is read.
    exited: once(child, 'close').then(([code]) => code as number | null),
  };
}

/** A rowcast instance as an operator runs it: `node dist/src/main.js`, its own process. */
export interface Instance {
  readonly child: ChildProcess;
  /** Base URL, e.g. http://127.0.0.1:39123/ */
  readonly url: URL;
  /** Parsed JSON log lines so far (the workers' too). */
  logs(): Record<string, unknown>[];
  readonly exited: Promise<number | null>;
  /** SIGTERM, and waits for the exit. */
  stop(): Promise<number | null>;
}

/**
 * Starts an instance on an ephemeral port against `databaseUrl` with the test defaults (50 ms
 * ticks, debug logs; `env` wins) and resolves once it listens.
 */
export async function startInstance(
  databaseUrl: string,
  env: Record<string, string> = {},
): Promise<Instance> {
  const proc = spawnMain(testEnv(databaseUrl, { WORKERS: '1', ...env }));
  const { child, exited } = proc;
  const logs = () =>
    proc.stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  let early: number | null | undefined;
  void exited.then((code) => {
    early = code;
  });
  const listening = await waitUntil(
    () => {
      if (early !== undefined)
        throw new Error(`instance exited (${early}): ${proc.stderr}${proc.stdout}`);
      return logs().find((entry) => entry.event === 'server.listening');
    },
    'the instance to listen',
    20_000,
  );
  return {
    child,
    url: new URL('/', String(listening.url)),
    logs,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}
