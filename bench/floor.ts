import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DB_SERVER, dropDatabase, openBenchDb } from './db.js';
import { monotonicMs } from './protocol.js';
import { type BenchServer, startServer } from './server.js';
import { summarize, table } from './stats.js';

// `npm run bench:floor`: how close rowcast is to what this machine's kernel allows. See
// bench/README.md, "The floor".

const SOURCES = fileURLToPath(new URL('../../bench/floor/', import.meta.url));
const RESULTS_DIR = fileURLToPath(new URL('../../bench/results/', import.meta.url));
const SINK = `${RESULTS_DIR}floor-sink`;
const SOURCE = `${RESULTS_DIR}floor-source`;
// Sockets per sink process, under the per-process file limit of 20,000.
const STREAMS_PER_SINK = 17_500;
const STREAMS_PER_WORKER = 18_000;
const CORES = availableParallelism();
const ROWS = 20;
const ROW_INTERVAL_MS = 200;
const POLL_INTERVAL_MS = 50;
const READY_TIMEOUT_MS = 150_000;
const WATCHDOG_S = 600;

const USAGE = `usage: npm run bench:floor -- [--streams 5k,35k] [--workers N]
  --streams   comma-separated stream counts (Nk = N thousand); default 5k,35k
  --workers   WORKERS for rowcast (default: one per core, more where each would hold over
              18,000 streams)`;

const { values } = parseArgs({
  options: {
    streams: { type: 'string', default: '5k,35k' },
    workers: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const streamCounts = values.streams.split(',').map((name) => {
  const match = /^(\d+)(k?)$/.exec(name.trim());
  if (match === null || Number(match[1]) === 0) fail(`unknown stream count ${name}\n${USAGE}`);
  return Number(match[1]) * (match[2] === 'k' ? 1_000 : 1);
});
const workersFlag = values.workers === undefined ? undefined : Number(values.workers);
if (workersFlag !== undefined && !(Number.isInteger(workersFlag) && workersFlag > 0)) {
  fail(`--workers ${values.workers}: expected a positive integer`);
}

const progress = (line: string) => process.stderr.write(`bench:floor: ${line}\n`);
const running = new Set<ChildProcess>();
let server: BenchServer | undefined;
const dbName = `rowcast_floor_${process.pid}`;
let nextAddress = Math.floor(Math.random() * 200);

function killAll(why: string): never {
  progress(`${why}: killing everything started here`);
  for (const child of running) child.kill('SIGKILL');
  server?.kill();
  const exit = () => process.exit(2);
  dropDatabase(dbName).then(exit, exit);
  setTimeout(exit, 5_000).unref();
  throw new Error(why);
}
setTimeout(() => killAll(`watchdog: over ${WATCHDOG_S} s`), WATCHDOG_S * 1000).unref();
process.on('SIGINT', () => killAll('SIGINT'));

mkdirSync(RESULTS_DIR, { recursive: true });
for (const [name, binary] of [
  ['sink', SINK],
  ['source', SOURCE],
]) {
  try {
    execFileSync('cc', ['-O2', '-Wall', '-o', binary as string, `${SOURCES}${name}.c`]);
  } catch (err) {
    fail(`cannot compile bench/floor/${name}.c with cc (apt-get install gcc): ${err}`);
  }
}

const records: Record<string, unknown>[] = [];
const db = await openBenchDb(dbName);
try {
  for (const streams of streamCounts) {
    // rowcast's default (a worker per core), more where each would hold over 18,000 streams.
    const workers = workersFlag ?? Math.max(CORES, Math.ceil(streams / STREAMS_PER_WORKER));
    // As many writers as rowcast has processes, and one per core (the lowest floor).
    for (const writers of new Set([workers, CORES])) {
      for (const tickMs of [0, POLL_INTERVAL_MS]) {
        records.push(report(await cFloor(streams, writers, tickMs)));
      }
    }
    records.push(report(await rowcastWithSinks(streams, workers)));
  }
} finally {
  await db.drop();
}
process.stdout.write(`\n${summaryTable(records)}\n`);

/** The C source: writes every message to every connection, no HTTP, no database. */
async function cFloor(streams: number, writers: number, tickMs: number) {
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const source = spawnTracked(SOURCE, [port, streams, ROWS, ROW_INTERVAL_MS, tickMs, writers, 1]);
  const lines = linesOf(source);
  await expectLine(lines, /^listening$/, 5_000);
  const sinks = await startSinks(port, streams, false);
  const sent: string[] = [];
  for (let w = 0; w < writers; w++) sent.push(await expectLine(lines, /^sent /, READY_TIMEOUT_MS));
  await once(source, 'exit');
  running.delete(source);
  // "sent ERRORS MEAN_MS MAX_MS BATCHES", one line per writer
  const writes = sent.map((line) => line.split(' ').slice(1).map(Number));
  return {
    run: tickMs === 0 ? 'c-floor' : `c-floor+${tickMs}ms-poll`,
    streams,
    processes: writers,
    poll_ms: tickMs,
    write_errors: writes.reduce((sum, [errors]) => sum + (errors ?? 0), 0),
    batch_write_ms_mean: writes.map(([, mean]) => mean),
    batch_write_ms_max: writes.map(([, , max]) => max),
    batches: writes.map(([, , , batches]) => batches),
    ...(await sinks.collect(1)),
  };
}

/** rowcast itself, POLL_INTERVAL_MS=50, rows inserted 200 ms apart, read by the C sinks. */
async function rowcastWithSinks(streams: number, workers: number) {
  await db.recreate();
  progress(`rowcast, WORKERS=${workers}, ${streams} streams`);
  server = await startServer({
    databaseUrl: db.urlVia(DB_SERVER.hostname, Number(DB_SERVER.port || 3306)),
    workers,
    pollIntervalMs: POLL_INTERVAL_MS,
    maxStreams: 19_000,
    log: process.stderr,
  });
  try {
    const sinks = await startSinks(server.port, streams, true);
    await db.insert(['0']); // every stream sees one row before the measured ones
    await sleep(1_000);
    const firstId = await db.nextId();
    const started = monotonicMs();
    for (let i = 0; i < ROWS; i++) {
      await sleep(started + i * ROW_INTERVAL_MS - monotonicMs());
      await db.insert([String(Math.round(monotonicMs() * 1000))]);
    }
    return {
      run: 'rowcast',
      streams,
      processes: workers,
      poll_ms: POLL_INTERVAL_MS,
      ...(await sinks.collect(firstId)),
    };
  } finally {
    await server.stop();
    server = undefined;
  }
}

/** Sink processes holding `streams` connections between them, each from its own address. */
async function startSinks(port: number, streams: number, sendRequest: boolean) {
  const count = Math.ceil(streams / STREAMS_PER_SINK);
  const sinks = Array.from({ length: count }, (_, i) => {
    const share = Math.floor(streams / count) + (i < streams % count ? 1 : 0);
    const address = `127.0.1.${2 + (nextAddress++ % 250)}`;
    const file = `${RESULTS_DIR}floor-sink-${i}.bin`;
    const child = spawnTracked(SINK, [
      '127.0.0.1',
      port,
      address,
      share,
      sendRequest ? 1 : 0,
      file,
    ]);
    return { child, file, lines: linesOf(child) };
  });
  let established = 0;
  for (const sink of sinks) {
    established += Number(
      (await expectLine(sink.lines, /^ready /, READY_TIMEOUT_MS)).split(' ')[1],
    );
  }
  progress(`${established}/${streams} streams established`);
  return {
    /** Lets the last rows arrive, stops the sinks and counts the rows with ids from firstId on. */
    async collect(firstId: number) {
      await sleep(2_000 + streams / 10);
      const latencies: number[] = [];
      let repeated = 0;
      for (const sink of sinks) {
        sink.child.kill('SIGTERM');
        repeated += Number((await expectLine(sink.lines, /^done /, 30_000)).split(' ')[3]);
        running.delete(sink.child);
        const pairs = readFileSync(sink.file);
        for (let at = 0; at + 8 <= pairs.length; at += 8) {
          const id = pairs.readUInt32LE(at);
          if (id < firstId || id >= firstId + ROWS) continue;
          latencies.push(pairs.readFloatLE(at + 4));
        }
      }
      const expected = established * ROWS;
      return {
        streams_established: established,
        sinks: count,
        latency_ms: summarize([Float32Array.from(latencies)]),
        // Received counts every fragment; a repeat is one that was not new on its connection.
        deliveries: {
          expected,
          received: latencies.length,
          lost: expected - (latencies.length - repeated),
          repeated,
        },
      };
    },
  };
}

function spawnTracked(command: string, args: readonly (string | number)[]): ChildProcess {
  const child = spawn(command, args.map(String), { stdio: ['ignore', 'pipe', 'inherit'] });
  running.add(child);
  return child;
}

function linesOf(child: ChildProcess): AsyncIterator<string> {
  return createInterface({ input: child.stdout as NodeJS.ReadableStream })[Symbol.asyncIterator]();
}

async function expectLine(lines: AsyncIterator<string>, pattern: RegExp, timeoutMs: number) {
  const timeout = sleep(timeoutMs, null, { ref: false });
  for (;;) {
    const next = await Promise.race([lines.next(), timeout]);
    if (next === null) killAll(`no line like ${pattern} within ${timeoutMs} ms`);
    if (next.done) killAll(`a process ended before printing a line like ${pattern}`);
    if (pattern.test(next.value)) return next.value;
  }
}

function report(record: Record<string, unknown>): Record<string, unknown> {
  process.stdout.write(`${JSON.stringify(record)}\n`);
  return record;
}

function summaryTable(rows: readonly Record<string, unknown>[]): string {
  const body = rows.map((record) => {
    const latency = record.latency_ms as Record<string, number | null>;
    const deliveries = record.deliveries as Record<string, number>;
    return [
      String(record.run),
      String(record.streams),
      String(record.processes),
      ...['p50', 'p90', 'p99', 'max'].map((key) => String(latency[key] ?? '-')),
      String(deliveries.lost),
    ];
  });
  return `${table(['run', 'streams', 'processes', 'p50 ms', 'p90', 'p99', 'max', 'lost'], body)}
(latency = insert -> receipt, ${ROWS} rows ${ROW_INTERVAL_MS} ms apart; processes = writers or WORKERS)`;
}

function fail(message: string): never {
  process.stderr.write(`bench:floor: ${message}\n`);
  process.exit(1);
}
