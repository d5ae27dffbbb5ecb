import { setTimeout as sleep } from 'node:timers/promises';
import { type ClientPool, startClients } from './clients.js';
import { type BenchDb, STATUS_COUNTERS, type Status } from './db.js';
import type { DbProxy, StatementCounts } from './dbproxy.js';
import { type ProcessSample, sampleTree, tcpMemPages } from './procfs.js';
import { monotonicMs } from './protocol.js';
import type { BenchServer, ServerOptions } from './server.js';
import { startServer } from './server.js';
import { round, summarize } from './stats.js';

export interface Scenario {
  readonly name: string;
  readonly kind: 'latency' | 'throughput';
  readonly streams: number;
  readonly rows: number;
  /** Pause between inserts; 0 inserts as fast as one connection can. */
  readonly rowIntervalMs: number;
  /** Rows per INSERT statement: 1, or a few multi-row INSERTs for a burst. */
  readonly rowsPerInsert: number;
}

export interface ScenarioEnv {
  readonly db: BenchDb;
  readonly proxy: DbProxy;
  readonly workers: number;
  readonly clientProcesses: number;
  /** Source addresses, one per client process. */
  readonly addresses: readonly string[];
  readonly pollIntervalMs: number;
  readonly maxStreams: number;
  /** How long the idle windows (0 streams, then N streams) last before memory is read. */
  readonly settleMs: number;
  readonly log: NodeJS.WritableStream;
  /** Called with what was started, so the watchdog can kill it. */
  readonly track: (started: { server?: BenchServer; clients?: ClientPool }) => void;
  readonly progress: (line: string) => void;
}

// Connections in flight at once over all clients: below node's default listen backlog (511), so
// a wave never overflows the accept queue and waits for SYN retransmits.
const CONNECT_CONCURRENCY = 400;
const CONNECT_TIMEOUT_MS = 15_000;
const PAGE_KB = 4;

/** Runs one scenario from a fresh database and server to their stop; returns its JSON record. */
export async function runScenario(scenario: Scenario, env: ScenarioEnv) {
  const began = Date.now();
  const { db, proxy } = env;
  const say = (what: string) => env.progress(`[${scenario.name}] ${what}`);
  await db.recreate();
  say(`starting the server (WORKERS=${env.workers})`);
  const serverOptions: ServerOptions = {
    databaseUrl: db.urlVia('127.0.0.1', proxy.port),
    workers: env.workers,
    pollIntervalMs: env.pollIntervalMs,
    maxStreams: env.maxStreams,
    log: env.log,
  };
  const server = await startServer(serverOptions);
  env.track({ server });
  let clients: ClientPool | undefined;
  try {
    const cpuReady = sample(server).cpuS;
    const idleEmpty = await dbWindow(env, env.settleMs);
    const memEmpty = sample(server);
    const tcpEmpty = tcpMemPages();

    clients = startClients(env.clientProcesses);
    env.track({ server, clients });
    say(`opening ${scenario.streams} streams from ${env.clientProcesses} processes`);
    const connectStarted = monotonicMs();
    const connected = await clients.connect({
      port: server.port,
      streams: scenario.streams,
      addresses: env.addresses,
      concurrency: CONNECT_CONCURRENCY,
      timeoutMs: CONNECT_TIMEOUT_MS,
      // The cluster primary hands over ~500 connections/s at 45k on this machine: 45k needs ~90 s.
      deadlineMs: 20_000 + 2 * scenario.streams,
    });
    const establishS = (monotonicMs() - connectStarted) / 1000;
    const established = connected.reduce((sum, reply) => sum + reply.established, 0);
    const failures: Record<string, number> = {};
    for (const reply of connected) {
      for (const [reason, n] of Object.entries(reply.failures)) {
        failures[reason] = (failures[reason] ?? 0) + n;
      }
    }
    const cpuConnected = sample(server).cpuS;
    say(`${established} established in ${round(establishS)} s; settling`);

    const idleFull = await dbWindow(env, env.settleMs);
    const memFull = sample(server);
    const tcpFull = tcpMemPages();
    const cpuIdle = memFull.cpuS;

    // One row first: every stream shows it is live before the measured rows go out.
    const warmup = await phase(
      env,
      clients,
      { rows: 1, rowIntervalMs: 0, rowsPerInsert: 1 },
      10_000,
    );
    say(`warm-up row: ${warmup.received}/${warmup.expected} deliveries; measuring`);

    const cpuBefore = sample(server).cpuS;
    const measured = await phase(
      env,
      clients,
      scenario,
      // Rows queue up when the server falls behind; allow ~200k deliveries/s beyond 15 s.
      15_000 + (scenario.rows * established) / 200,
    );
    const memAfter = sample(server);
    say(
      `${measured.received}/${measured.expected} deliveries, p99 ${measured.latency.p99} ms, ` +
        `${Math.round(measured.perS)}/s`,
    );

    await clients.close();
    clients = undefined;
    const stopped = await server.stop();
    const perStream = (kb: number) => (established === 0 ? null : round(kb / established));
    return {
      scenario: scenario.name,
      kind: scenario.kind,
      workers: env.workers,
      server_processes: memFull.pids.length,
      client_processes: env.clientProcesses,
      poll_interval_ms: env.pollIntervalMs,
      streams_requested: scenario.streams,
      streams_established: established,
      connect_failures: failures,
      establish_s: round(establishS),
      establish_per_s: establishS > 0 ? Math.round(established / establishS) : null,
      memory: {
        empty_rss_kb: memEmpty.rssKb,
        empty_private_kb: memEmpty.privateKb,
        idle_rss_kb: memFull.rssKb,
        idle_private_kb: memFull.privateKb,
        after_rows_rss_kb: memAfter.rssKb,
        after_rows_private_kb: memAfter.privateKb,
        per_idle_stream_rss_kb: perStream(memFull.rssKb - memEmpty.rssKb),
        per_idle_stream_private_kb: perStream(memFull.privateKb - memEmpty.privateKb),
        total_per_stream_rss_kb: perStream(memFull.rssKb),
        total_per_stream_private_kb: perStream(memFull.privateKb),
        // Socket buffers live in the kernel, outside any process; machine-wide, clients included.
        kernel_tcp_kb_delta: (tcpFull - tcpEmpty) * PAGE_KB,
        // With N idle streams; the first is the process started (the cluster primary).
        processes: memFull.processes.map((p) => ({
          pid: p.pid,
          rss_kb: p.rssKb,
          private_kb: p.privateKb,
          open_fds: p.fds,
          cpu_s: round(p.cpuS),
        })),
      },
      rows: scenario.rows,
      row_interval_ms: scenario.rowIntervalMs,
      insert:
        scenario.rowsPerInsert === 1
          ? 'single-row INSERTs, one connection, each awaited'
          : `${Math.ceil(scenario.rows / scenario.rowsPerInsert)} INSERTs of ${scenario.rowsPerInsert} rows, one connection`,
      insert_s: round(measured.insertS, 3),
      latency_ms: measured.latency,
      deliveries: {
        expected: measured.expected,
        received: measured.received,
        per_s: Math.round(measured.perS),
        span_s: round(measured.spanS, 3),
        lost: measured.lost,
        duplicated: measured.duplicated,
        out_of_order: measured.outOfOrder,
        unexpected: measured.unexpected,
        streams_closed: measured.closed,
        warmup_lost: warmup.lost,
      },
      server_cpu_s: {
        start: round(cpuReady),
        establish: round(cpuConnected - cpuReady),
        idle: round(cpuIdle - cpuConnected),
        rows: round(memAfter.cpuS - cpuBefore),
        total: round(memAfter.cpuS),
      },
      client: {
        cpu_s_rows: round(measured.clientCpuS),
        loop_delay_p99_ms: round(measured.loopDelayP99Ms),
        loop_delay_max_ms: round(measured.loopDelayMaxMs),
      },
      db_per_tick: {
        idle_0_streams: idleEmpty,
        idle_n_streams: idleFull,
        rows: measured.db,
      },
      server_stop: stopped,
      duration_s: round((Date.now() - began) / 1000, 1),
    };
  } finally {
    clients?.kill();
    server.kill();
  }
}

function sample(server: BenchServer): ProcessSample {
  server.refreshTree();
  return sampleTree(server.pid);
}

/**
 * Inserts the rows, `rowIntervalMs` apart, each carrying its insert time, and waits until every
 * open stream has them all or `waitMs` has passed after the last insert.
 */
async function phase(
  env: ScenarioEnv,
  clients: ClientPool,
  plan: Pick<Scenario, 'rows' | 'rowIntervalMs' | 'rowsPerInsert'>,
  waitMs: number,
) {
  const { rows, rowIntervalMs, rowsPerInsert } = plan;
  const base = await env.db.nextId();
  await clients.expect(base, rows);
  const before = await countersNow(env);
  const started = monotonicMs();
  for (let i = 0; i < rows; i += rowsPerInsert) {
    if (rowIntervalMs > 0) {
      const due = started + i * rowIntervalMs - monotonicMs();
      if (due > 0) await sleep(due);
    }
    const sentUs = String(Math.round(monotonicMs() * 1000));
    const id = await env.db.insert(Array(Math.min(rowsPerInsert, rows - i)).fill(sentUs));
    if (id !== base + i) throw new Error(`row got id ${id}, expected ${base + i} (id gap)`);
  }
  const insertS = (monotonicMs() - started) / 1000;
  const deadline = monotonicMs() + waitMs;
  let open = 0;
  // Bounded by the deadline; each round trip to the clients is bounded by their reply timeout.
  while (monotonicMs() < deadline) {
    const progress = await clients.progress();
    open = progress.open;
    if (progress.received >= progress.open * rows) break;
    await sleep(50);
  }
  // Ticks that find nothing still run after the last delivery: let one pass so the last mark counts.
  await sleep(env.pollIntervalMs * 2);
  const after = await countersNow(env);
  const results = await clients.collect();
  const sum = (pick: (r: (typeof results)[number]) => number) =>
    results.reduce((total, r) => total + pick(r), 0);
  const received = sum((r) => r.received);
  const lastReceipt = Math.max(...results.map((r) => r.lastReceipt));
  const spanS = received === 0 ? 0 : (lastReceipt - started) / 1000;
  return {
    expected: received + sum((r) => r.lost),
    received,
    open,
    lost: sum((r) => r.lost),
    duplicated: sum((r) => r.duplicated),
    outOfOrder: sum((r) => r.outOfOrder),
    unexpected: sum((r) => r.unexpected),
    closed: sum((r) => r.closed),
    latency: summarize(results.map((r) => r.latencies)),
    insertS,
    spanS,
    perS: spanS > 0 ? received / spanS : 0,
    clientCpuS: sum((r) => r.cpuS),
    loopDelayP99Ms: Math.max(...results.map((r) => r.loopDelayP99Ms)),
    loopDelayMaxMs: Math.max(...results.map((r) => r.loopDelayMaxMs)),
    db: perTick(before, after),
  };
}

interface Counters {
  readonly at: number;
  readonly status: Status;
  readonly statements: StatementCounts;
}

async function countersNow(env: ScenarioEnv): Promise<Counters> {
  const status = await env.db.globalStatus();
  return { at: monotonicMs(), status, statements: env.proxy.counts() };
}

/** Database work while nothing is inserted, over `ms`. */
async function dbWindow(env: ScenarioEnv, ms: number) {
  const before = await countersNow(env);
  await sleep(ms);
  return perTick(before, await countersNow(env));
}

/**
 * Database work per tick between two readings. A tick is one SELECT through the proxy (exact,
 * rowcast's own); the global counters count every client of the database server, ours included.
 */
function perTick(before: Counters, after: Counters) {
  const ticks = after.statements.select - before.statements.select;
  const per = (delta: number) => (ticks === 0 ? null : round(delta / ticks, 3));
  const statement = (key: keyof StatementCounts) =>
    per(after.statements[key] - before.statements[key]);
  return {
    window_ms: Math.round(after.at - before.at),
    ticks,
    rowcast: {
      select: statement('select'),
      update: statement('update'),
      other: statement('other'),
      bytes_from_db: statement('bytesIn'),
    },
    global: Object.fromEntries(
      STATUS_COUNTERS.map((key) => [key, per(after.status[key] - before.status[key])]),
    ),
  };
}
