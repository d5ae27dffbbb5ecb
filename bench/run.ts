import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { ClientPool } from './clients.js';
import { DB_SERVER, dropDatabase, openBenchDb } from './db.js';
import { startDbProxy } from './dbproxy.js';
import { ensureNchan } from './nchan.js';
import type { PublishMode } from './publish.js';
import { runScenario, type Scenario } from './scenario.js';
import type { BenchServer } from './server.js';
import { round, table } from './stats.js';

// `npm run bench`: see bench/README.md.

const RESULTS_DIR = fileURLToPath(new URL('../../bench/results/', import.meta.url));
const FULL_SUITE = ['1k', '5k', '15k', '35k', '45k', 'throughput'];
const QUICK_SUITE = ['1k'];
// Streams one server process is allowed (MAX_STREAMS): the file-descriptor limit is 20,000.
const STREAMS_PER_PROCESS = 19_000;
// WORKERS chosen when none is given: rowcast's default (a worker per core), more where each
// would hold more streams than this.
const AUTO_STREAMS_PER_WORKER = 18_000;
// Sockets per client process, under the same file-descriptor limit.
const STREAMS_PER_CLIENT = 12_000;
// Nchan's worker_processes when none is given: as rowcast's workers (at least 2, the cores).
const NCHAN_MIN_WORKERS = 2;
// With --vs nchan, each scenario runs four times in this order (ABBA): drift over the minutes
// of a scenario weighs on both servers alike.
const ABBA = ['nchan', 'rowcast', 'rowcast', 'nchan'] as const;
// The watchdog's extra time per run for each stream above 45,000 (100k: +330 s).
const WATCHDOG_MS_PER_EXTRA_STREAM = 6;
const WATCHDOG_EXTRA_ABOVE = 45_000;

// The channels scenario: many small channels (one stream each) beside one large one.
const USER_CHANNELS = 10_000;
const LOBBY_STREAMS = 1_000;
const LOBBY = 'room:lobby';
const CHANNEL_ROWS = 200;
const CHANNEL_ROW_INTERVAL_MS = 25;
const LOBBY_SHARE = 0.1;

// What the comparison line gives of each run, per server in ABBA order: name → record path.
const COMPARED: readonly (readonly [string, string])[] = [
  ['streams_established', 'streams_established'],
  ['establish_s', 'establish_s'],
  ['workers', 'workers'],
  ['p50', 'latency_ms.p50'],
  ['p90', 'latency_ms.p90'],
  ['p99', 'latency_ms.p99'],
  ['max', 'latency_ms.max'],
  ['lost', 'deliveries.lost'],
  ['duplicated', 'deliveries.duplicated'],
  ['out_of_order', 'deliveries.out_of_order'],
  ['deliveries_per_s', 'deliveries.per_s'],
  ['per_idle_stream_private_kb', 'memory.per_idle_stream_private_kb'],
  ['per_idle_stream_rss_kb', 'memory.per_idle_stream_rss_kb'],
  ['server_cpu_s_establish', 'server_cpu_s.establish'],
  ['server_cpu_s_rows', 'server_cpu_s.rows'],
  ['client_cpu_s_rows', 'client.cpu_s_rows'],
  ['other_cpu_s_rows', 'machine_cpu_s.other_rows'],
  ['client_loop_delay_p99_ms', 'client.loop_delay_p99_ms'],
];

const USAGE = `usage: npm run bench -- [--scenarios 1k,5k,15k,35k,45k,throughput] [--workers N]
                          [--instances N] [--clients N] [--publish insert|post]
                          [--vs nchan] [--nchan-workers N] [--db-proxy on|off]
                          [--quick] [--settle-s S] [--timeout-s S]
  --scenarios   comma-separated, from: Nk (N thousand streams, 20 rows 200 ms apart),
                throughput (1,000 single-row INSERTs as fast as possible, 5,000 streams),
                throughput-multi (the same 1,000 rows in 10 INSERTs of 100 rows),
                channels (10,000 streams on user:0 … user:9999 and 1,000 on room:lobby,
                200 rows 25 ms apart, each to a random user:N or, one in ten, room:lobby);
                default: 1k,5k,15k,35k,45k,throughput
  --workers     WORKERS for each server (default: $WORKERS, else one per core, more where
                each would hold over 18,000 streams)
  --instances   rowcast servers on the same database and table, the streams split evenly
                over them (default 1)
  --clients     client processes (default 4, more when one would hold over ${STREAMS_PER_CLIENT},
                rounded up to a multiple of --instances)
  --publish     how rowcast gets the rows: insert (INSERTs by the bench, default) or post
                (POST /messages to instance 0, with a PUBLISH_TOKEN)
  --vs nchan    each scenario also against a private nginx + Nchan, in the order Nchan,
                rowcast, rowcast, Nchan (ABBA), then a comparison line and table
  --nchan-workers  Nchan's worker_processes (default: max(2, ceil(streams / 18000)))
  --db-proxy    on: rowcast reaches MariaDB through the bench's statement-counting proxy
                (db_per_tick); off: directly (default on, off with --vs nchan)
  --quick       a short smoke run: 1k only, shorter settle
  --settle-s    the idle windows before memory is read, at 0 and at N streams (default 3,
                --quick 1.5); 20 lets V8 give back the garbage of a burst of connections
  --timeout-s   the watchdog: everything is killed after this (default 600, --quick 180;
                ×4 with --vs nchan; +6 ms per stream above 45,000 per run)`;

const { values } = parseArgs({
  options: {
    scenarios: { type: 'string' },
    workers: { type: 'string' },
    instances: { type: 'string' },
    clients: { type: 'string' },
    publish: { type: 'string', default: 'insert' },
    vs: { type: 'string' },
    'db-proxy': { type: 'string' },
    'nchan-workers': { type: 'string' },
    quick: { type: 'boolean', default: false },
    'timeout-s': { type: 'string' },
    'settle-s': { type: 'string' },
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
if (values.publish !== 'insert' && values.publish !== 'post') {
  process.stderr.write(`bench: --publish ${values.publish}: expected insert or post\n`);
  process.exit(1);
}
const publish: PublishMode = values.publish;
if (values.vs !== undefined && values.vs !== 'nchan') {
  process.stderr.write(`bench: --vs ${values.vs}: only nchan is known\n`);
  process.exit(1);
}
const vsNchan = values.vs === 'nchan';
// Against Nchan, rowcast talks to MariaDB directly: nothing sits between Nchan and its clients.
const dbProxyFlag = values['db-proxy'];
if (dbProxyFlag !== undefined && dbProxyFlag !== 'on' && dbProxyFlag !== 'off') {
  process.stderr.write(`bench: --db-proxy ${dbProxyFlag}: expected on or off\n`);
  process.exit(1);
}
const directDb = dbProxyFlag === undefined ? vsNchan : dbProxyFlag === 'off';
const nchanWorkersFlag = positiveInt('--nchan-workers', values['nchan-workers']);
// What only an INSERT (many rows in one statement) or rowcast (channels) can do.
for (const scenario of scenarios) {
  const refused =
    scenario.rowsPerInsert > 1 && (publish === 'post' || vsNchan)
      ? 'sends many rows in one INSERT: not with --publish post or --vs nchan'
      : scenario.kind === 'channels' && vsNchan
        ? 'needs channels: the Nchan bench has one channel'
        : null;
  if (refused !== null) {
    process.stderr.write(`bench: ${scenario.name} ${refused}\n`);
    process.exit(1);
  }
}
const runsPerScenario = vsNchan ? ABBA.length : 1;
const timeoutS =
  positiveInt('--timeout-s', values['timeout-s']) ??
  (values.quick ? 180 : 600) * runsPerScenario +
    Math.ceil(
      scenarios.reduce(
        (sum, scenario) =>
          sum +
          runsPerScenario *
            WATCHDOG_MS_PER_EXTRA_STREAM *
            Math.max(0, scenario.streams - WATCHDOG_EXTRA_ABOVE),
        0,
      ) / 1000,
    );
const settleMs = (positiveInt('--settle-s', values['settle-s']) ?? (values.quick ? 1.5 : 3)) * 1000;
const progress = (line: string) => process.stderr.write(`bench: ${line}\n`);
const nchanModule = vsNchan ? ensureNchan(progress) : undefined;

mkdirSync(RESULTS_DIR, { recursive: true });
const resultsPath = `${RESULTS_DIR}latest.jsonl`;
writeFileSync(resultsPath, '');
const serverLog = createWriteStream(`${RESULTS_DIR}server.log`);
const dbName = `rowcast_bench_${process.pid}`;

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
const emit = (record: Record<string, unknown>) => {
  const line = JSON.stringify(record);
  process.stdout.write(`${line}\n`);
  writeFileSync(resultsPath, `${line}\n`, { flag: 'a' });
};
const comparisons: Record<string, unknown>[] = [];
try {
  for (const scenario of scenarios) {
    const runs: Record<string, unknown>[] = [];
    for (const [order, server] of (vsNchan ? ABBA : (['rowcast'] as const)).entries()) {
      if (aborting) break;
      // Each client process targets one instance: as many per instance, when the flag allows.
      const clientProcesses =
        clientsFlag ??
        Math.ceil(Math.max(4, Math.ceil(scenario.streams / STREAMS_PER_CLIENT)) / instances) *
          instances;
      // A fresh source address per client and run: sockets of the last run may still sit in
      // TIME_WAIT on the old ones.
      const addresses = Array.from({ length: clientProcesses }, () => {
        const address = `127.0.0.${2 + (nextAddress % 250)}`;
        nextAddress++;
        return address;
      });
      // Per instance, for the streams it holds; Nchan's, for all of them.
      const workers =
        server === 'nchan'
          ? (nchanWorkersFlag ??
            Math.max(NCHAN_MIN_WORKERS, Math.ceil(scenario.streams / AUTO_STREAMS_PER_WORKER)))
          : (workersFlag ??
            Math.max(
              // One instance runs as rowcast does by default (a worker per core); several, one
              // process each unless their share needs more.
              instances === 1 ? availableParallelism() : 1,
              Math.ceil(Math.ceil(scenario.streams / instances) / AUTO_STREAMS_PER_WORKER),
            ));
      let record: Record<string, unknown>;
      try {
        record = await runScenario(scenario, {
          server,
          publish,
          directDb,
          ...(nchanModule === undefined ? {} : { nchanModule }),
          order,
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
        progress(`${scenario.name} (${server}) failed: ${(err as Error).stack}`);
        record = {
          scenario: scenario.name,
          server,
          publish: server === 'nchan' ? 'post' : publish,
          order,
          instances: server === 'nchan' ? 1 : instances,
          workers,
          error: (err as Error).message,
        };
      }
      liveServers = [];
      liveClients = undefined;
      records.push(record);
      runs.push(record);
      emit(record);
    }
    if (vsNchan && runs.length > 0) {
      const comparison = compare(scenario.name, runs);
      comparisons.push(comparison);
      emit(comparison);
    }
  }
} finally {
  await db.drop().catch((err: Error) => progress(`could not drop ${dbName}: ${err.message}`));
  await Promise.all(proxies.map((proxy) => proxy.close()));
  serverLog.end();
}
process.stdout.write(`\n${summaryTable(records)}\n`);
if (vsNchan) process.stdout.write(`\n${comparisonTable(comparisons)}\n`);
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

/** A record's value at a dotted path (`latency_ms.p99`), undefined when absent. */
function field(record: Record<string, unknown>, path: string): unknown {
  let value: unknown = record;
  for (const key of path.split('.')) value = (value as Record<string, unknown> | undefined)?.[key];
  return value;
}

function summaryTable(rows: readonly Record<string, unknown>[]): string {
  const get = (record: Record<string, unknown>, path: string): string => {
    const found = field(record, path);
    return found === undefined || found === null ? '-' : String(found);
  };
  // Statements per idle tick (N streams) of each instance, `1` each when idle ticks are as cheap
  // as they should be (docs/delivery.md 7).
  const idleStatements = (record: Record<string, unknown>): string => {
    const perInstance = field(record, 'db_per_tick.idle_n_streams.per_instance') as
      | { rowcast: { statements: number | null } }[]
      | undefined;
    return perInstance?.map((i) => i.rowcast.statements ?? '-').join('/') ?? '-';
  };
  const columns: [string, string | ((record: Record<string, unknown>) => string)][] = [
    ['scenario', 'scenario'],
    ['server', 'server'],
    ['#', 'order'],
    ['publish', 'publish'],
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
          get(record, 'server'),
          get(record, 'order'),
          get(record, 'publish'),
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

/**
 * One scenario's four runs side by side: each figure per server as a list in run order, and
 * rowcast ÷ Nchan of p50 and p99 over the pairs of runs next to each other in time (the 1st
 * Nchan with the 1st rowcast, the 2nd rowcast with the 2nd Nchan), as [min, max].
 */
function compare(scenario: string, runs: readonly Record<string, unknown>[]) {
  const ok = runs.filter((run) => run.error === undefined);
  const of = (server: string) => ok.filter((run) => run.server === server);
  const side = (server: string) => ({
    orders: of(server).map((run) => run.order),
    ...Object.fromEntries(
      COMPARED.map(([name, path]) => [name, of(server).map((run) => field(run, path) ?? null)]),
    ),
  });
  const nchan = of('nchan');
  const rowcast = of('rowcast');
  const pairs = [0, 1].flatMap((i) =>
    nchan[i] !== undefined && rowcast[i] !== undefined ? [[nchan[i], rowcast[i]] as const] : [],
  );
  const ratio = (path: string) => {
    const ratios = pairs.flatMap(([n, r]) => {
      const [a, b] = [field(n, path), field(r, path)];
      return typeof a === 'number' && typeof b === 'number' && a > 0 ? [b / a] : [];
    });
    return ratios.length === 0
      ? null
      : [round(Math.min(...ratios), 3), round(Math.max(...ratios), 3)];
  };
  return {
    comparison: 'rowcast vs nchan',
    scenario,
    publish,
    nchan: side('nchan'),
    rowcast: side('rowcast'),
    ratio_p50: ratio('latency_ms.p50'),
    ratio_p99: ratio('latency_ms.p99'),
    failed_runs: runs
      .filter((run) => run.error !== undefined)
      .map((run) => ({ server: run.server, order: run.order, error: run.error })),
  };
}

/** Per scenario, a line per server: its runs' figures as a spread `min–max`. */
function comparisonTable(lines: readonly Record<string, unknown>[]): string {
  const spread = (values: unknown): string => {
    const numbers = (values as unknown[]).filter((v): v is number => typeof v === 'number');
    if (numbers.length === 0) return '-';
    const [low, high] = [Math.min(...numbers), Math.max(...numbers)];
    return low === high ? String(low) : `${low}–${high}`;
  };
  const header = [
    'scenario',
    'publish',
    'server',
    'runs',
    'held',
    'p50 ms',
    'p99 ms',
    'lost',
    'KB/stream priv',
    'srv CPU s rows',
    'other CPU s',
    'p99 rowcast÷nchan',
  ];
  const body = lines.flatMap((line) =>
    (['nchan', 'rowcast'] as const).map((server) => {
      const side = line[server] as Record<string, unknown>;
      const ratio = line.ratio_p99 as number[] | null;
      return [
        String(line.scenario),
        server === 'nchan' ? 'post /pub' : String(line.publish),
        server,
        String((side.orders as unknown[]).length),
        spread(side.streams_established),
        spread(side.p50),
        spread(side.p99),
        spread(side.lost),
        spread(side.per_idle_stream_private_kb),
        spread(side.server_cpu_s_rows),
        spread(side.other_cpu_s_rows),
        server === 'rowcast' && ratio !== null ? spread(ratio) : '',
      ];
    }),
  );
  return (
    `${table(header, body)}\n(ABBA: Nchan, rowcast, rowcast, Nchan, each a fresh run; a–b is the ` +
    'spread over the runs; the ratio is over the runs next to each other in time; other CPU = ' +
    'the machine in the rows phase minus server and clients: MariaDB, the bench, anything else)'
  );
}
