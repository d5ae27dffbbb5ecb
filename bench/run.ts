import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { ClientPool } from './clients.js';
import { DB_SERVER, dropDatabase, openBenchDb } from './db.js';
import { startDbProxy } from './dbproxy.js';
import { runScenario, type Scenario } from './scenario.js';
import type { BenchServer } from './server.js';
import { table } from './stats.js';

// `npm run bench`: see bench/README.md.

const RESULTS_DIR = fileURLToPath(new URL('../../bench/results/', import.meta.url));
const FULL_SUITE = ['1k', '5k', '15k', '35k', '45k', 'throughput'];
const QUICK_SUITE = ['1k'];
// Streams one server process is allowed (MAX_STREAMS): the file-descriptor limit is 20,000.
const STREAMS_PER_PROCESS = 19_000;
// WORKERS chosen when none is given: the fewest processes that stay well under that limit.
const AUTO_STREAMS_PER_WORKER = 18_000;
// Sockets per client process, under the same file-descriptor limit.
const STREAMS_PER_CLIENT = 12_000;

// The channels scenario: many small channels (one stream each) beside one large one.
const USER_CHANNELS = 10_000;
const LOBBY_STREAMS = 1_000;
const LOBBY = 'room:lobby';
const CHANNEL_ROWS = 200;
const CHANNEL_ROW_INTERVAL_MS = 25;
const LOBBY_SHARE = 0.1;

const USAGE = `usage: npm run bench -- [--scenarios 1k,5k,15k,35k,45k,throughput] [--workers N]
                          [--instances N] [--clients N] [--quick] [--timeout-s S]
  --scenarios   comma-separated, from: Nk (N thousand streams, 20 rows 200 ms apart),
                throughput (1,000 single-row INSERTs as fast as possible, 5,000 streams),
                throughput-multi (the same 1,000 rows in 10 INSERTs of 100 rows),
                channels (10,000 streams on user:0 … user:9999 and 1,000 on room:lobby,
                200 rows 25 ms apart, each to a random user:N or, one in ten, room:lobby);
                default: 1k,5k,15k,35k,45k,throughput
  --workers     WORKERS for each server (default: $WORKERS, else the fewest for its streams)
  --instances   rowcast servers on the same database and table, the streams split evenly
                over them (default 1)
  --clients     client processes (default 4, more when one would hold over ${STREAMS_PER_CLIENT},
                rounded up to a multiple of --instances)
  --quick       a short smoke run: 1k only, shorter settle
  --timeout-s   the watchdog: everything is killed after this (default 600, --quick 180)`;

const { values } = parseArgs({
  options: {
    scenarios: { type: 'string' },
    workers: { type: 'string' },
    instances: { type: 'string' },
    clients: { type: 'string' },
    quick: { type: 'boolean', default: false },
    'timeout-s': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

const scenarios = (values.scenarios?.split(',') ?? (values.quick ? QUICK_SUITE : FULL_SUITE)).map(
  (name) => parseScenario(name.trim()),
);
const workersFlag = positiveInt('--workers', values.workers ?? process.env.WORKERS);
const instances = positiveInt('--instances', values.instances) ?? 1;
const clientsFlag = positiveInt('--clients', values.clients);
if (clientsFlag !== undefined && clientsFlag < instances) {
  process.stderr.write(`bench: --clients ${clientsFlag}: needs at least one per instance\n`);
  process.exit(1);
}
const timeoutS = positiveInt('--timeout-s', values['timeout-s']) ?? (values.quick ? 180 : 600);
const settleMs = values.quick ? 1_500 : 3_000;

mkdirSync(RESULTS_DIR, { recursive: true });
const resultsPath = `${RESULTS_DIR}latest.jsonl`;
writeFileSync(resultsPath, '');
const serverLog = createWriteStream(`${RESULTS_DIR}server.log`);
const dbName = `rowcast_bench_${process.pid}`;
const progress = (line: string) => process.stderr.write(`bench: ${line}\n`);

// What is running now, for the watchdog and the signal handlers.
let liveServers: readonly BenchServer[] = [];
let liveClients: ClientPool | undefined;
let aborting = false;

function abort(why: string, code: number): void {
  if (aborting) return;
  aborting = true;
  progress(`${why}: killing everything the bench started`);
  liveClients?.kill();
  for (const server of liveServers) server.kill();
  const exit = () => process.exit(code);
  setTimeout(exit, 10_000).unref();
  dropDatabase(dbName).then(exit, (err: Error) => {
    progress(`could not drop ${dbName}: ${err.message}`);
    exit();
  });
}

const watchdog = setTimeout(() => abort(`watchdog: over ${timeoutS} s`, 2), timeoutS * 1000);
watchdog.unref();
process.on('SIGINT', () => abort('SIGINT', 130));
process.on('SIGTERM', () => abort('SIGTERM', 143));

const records: Record<string, unknown>[] = [];
// One counting proxy per instance, so each instance's statements are counted apart.
const proxies = await Promise.all(
  Array.from({ length: instances }, () =>
    startDbProxy({ host: DB_SERVER.hostname, port: Number(DB_SERVER.port || 3306) }),
  ),
);
const db = await openBenchDb(dbName);
let nextAddress = 0;
try {
  for (const scenario of scenarios) {
    if (aborting) break;
    // Each client process targets one instance: as many per instance, when the flag allows.
    const clientProcesses =
      clientsFlag ??
      Math.ceil(Math.max(4, Math.ceil(scenario.streams / STREAMS_PER_CLIENT)) / instances) *
        instances;
    // A fresh source address per client and scenario: sockets of the last scenario may still sit
    // in TIME_WAIT on the old ones.
    const addresses = Array.from({ length: clientProcesses }, () => {
      const address = `127.0.0.${2 + (nextAddress % 250)}`;
      nextAddress++;
      return address;
    });
    // Per instance, for the streams it holds.
    const workers =
      workersFlag ??
      Math.max(1, Math.ceil(Math.ceil(scenario.streams / instances) / AUTO_STREAMS_PER_WORKER));
    let record: Record<string, unknown>;
    try {
      record = await runScenario(scenario, {
        db,
        proxies,
        workers,
        clientProcesses,
        addresses,
        pollIntervalMs: 50,
        maxStreams: STREAMS_PER_PROCESS,
        settleMs,
        log: serverLog,
        track: (started) => {
          liveServers = started.servers;
          liveClients = started.clients;
        },
        progress,
      });
    } catch (err) {
      if (aborting) break;
      progress(`${scenario.name} failed: ${(err as Error).stack}`);
      record = { scenario: scenario.name, instances, workers, error: (err as Error).message };
    }
    liveServers = [];
    liveClients = undefined;
    records.push(record);
    const line = JSON.stringify(record);
    process.stdout.write(`${line}\n`);
    writeFileSync(resultsPath, `${line}\n`, { flag: 'a' });
  }
} finally {
  await db.drop().catch((err: Error) => progress(`could not drop ${dbName}: ${err.message}`));
  await Promise.all(proxies.map((proxy) => proxy.close()));
  serverLog.end();
}
process.stdout.write(`\n${summaryTable(records)}\n`);
progress(`JSON lines in ${resultsPath}; server logs in ${RESULTS_DIR}server.log`);
clearTimeout(watchdog);

function parseScenario(name: string): Scenario {
  if (name === 'channels') return channelsScenario();
  if (name === 'throughput' || name === 'throughput-multi') {
    const rowsPerInsert = name === 'throughput' ? 1 : 100;
    return {
      name,
      kind: 'throughput',
      streams: 5_000,
      rows: 1_000,
      rowIntervalMs: 0,
      rowsPerInsert,
    };
  }
  const match = /^(\d+)(k?)$/.exec(name);
  if (match === null || Number(match[1]) === 0) {
    process.stderr.write(`bench: unknown scenario ${JSON.stringify(name)}\n${USAGE}\n`);
    process.exit(1);
  }
  const streams = Number(match[1]) * (match[2] === 'k' ? 1_000 : 1);
  return { name, kind: 'latency', streams, rows: 20, rowIntervalMs: 200, rowsPerInsert: 1 };
}

/**
 * 10,000 streams each on its own channel (`user:N`) and 1,000 on one (`room:lobby`); 200 rows,
 * each to a random user:N or, one in ten, to the lobby. The lobby's streams are spread evenly
 * (every 11th stream), so each client process holds its share of them. The rows' channels come
 * from a fixed seed: every run sends the same rows.
 */
function channelsScenario(): Scenario {
  const streamChannels: string[] = [];
  const every = (USER_CHANNELS + LOBBY_STREAMS) / LOBBY_STREAMS;
  for (let i = 0, user = 0; i < USER_CHANNELS + LOBBY_STREAMS; i++) {
    streamChannels.push(i % every === every - 1 ? LOBBY : `user:${user++}`);
  }
  const random = mulberry32(0x5eed);
  const rowChannels = Array.from({ length: CHANNEL_ROWS }, () =>
    random() < LOBBY_SHARE ? LOBBY : `user:${Math.floor(random() * USER_CHANNELS)}`,
  );
  return {
    name: 'channels',
    kind: 'channels',
    streams: streamChannels.length,
    rows: CHANNEL_ROWS,
    rowIntervalMs: CHANNEL_ROW_INTERVAL_MS,
    rowsPerInsert: 1,
    streamChannels,
    rowChannels,
  };
}

/** A small seeded PRNG (mulberry32): uniform in [0, 1). */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

function positiveInt(flag: string, raw: string | undefined): number | undefined {
  if (raw === undefined || raw === '') return undefined;
  if (/^\d+$/.test(raw) && Number(raw) > 0) return Number(raw);
  process.stderr.write(`bench: ${flag} ${JSON.stringify(raw)}: expected a positive integer\n`);
  process.exit(1);
}

function summaryTable(rows: readonly Record<string, unknown>[]): string {
  const value = (record: Record<string, unknown>, path: string): unknown => {
    let value: unknown = record;
    for (const key of path.split('.'))
      value = (value as Record<string, unknown> | undefined)?.[key];
    return value;
  };
  const get = (record: Record<string, unknown>, path: string): string => {
    const found = value(record, path);
    return found === undefined || found === null ? '-' : String(found);
  };
  // Statements per idle tick (N streams) of each instance, `1` each when idle ticks are as cheap
  // as they should be (docs/delivery.md 7).
  const idleStatements = (record: Record<string, unknown>): string => {
    const perInstance = value(record, 'db_per_tick.idle_n_streams.per_instance') as
      | { rowcast: { statements: number | null } }[]
      | undefined;
    return perInstance?.map((i) => i.rowcast.statements ?? '-').join('/') ?? '-';
  };
  const columns: [string, string | ((record: Record<string, unknown>) => string)][] = [
    ['scenario', 'scenario'],
    ['inst', 'instances'],
    ['workers', 'workers'],
    ['streams', 'streams_requested'],
    ['held', 'streams_established'],
    ['estab s', 'establish_s'],
    ['KB/stream priv', 'memory.per_idle_stream_private_kb'],
    ['KB/stream rss', 'memory.per_idle_stream_rss_kb'],
    ['p50 ms', 'latency_ms.p50'],
    ['p90', 'latency_ms.p90'],
    ['p99', 'latency_ms.p99'],
    ['max', 'latency_ms.max'],
    ['deliveries/s', 'deliveries.per_s'],
    ['lost', 'deliveries.lost'],
    ['dup', 'deliveries.duplicated'],
    ['ooo', 'deliveries.out_of_order'],
    ['unexp', 'deliveries.unexpected'],
    ['srv CPU s', 'server_cpu_s.total'],
    ['cli CPU s', 'client.cpu_s_rows'],
    ['stmt/idle tick', idleStatements],
  ];
  const body = rows.map((record) =>
    record.error === undefined
      ? columns.map(([, path]) => (typeof path === 'string' ? get(record, path) : path(record)))
      : [
          get(record, 'scenario'),
          get(record, 'instances'),
          get(record, 'workers'),
          `error: ${String(record.error)}`,
        ],
  );
  const cores = availableParallelism();
  return (
    `${table(
      columns.map(([title]) => title),
      body,
    )}\n(${cores} cores shared by servers, clients and MariaDB; latency = insert → receipt; ` +
    'srv CPU and KB/stream summed over instances; stmt/idle tick per instance)'
  );
}
