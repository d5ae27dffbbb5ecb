import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ClientPool, startClients } from './clients.js';
import { type BenchDb, DB_SERVER, STATUS_COUNTERS, type Status } from './db.js';
import { type DbProxy, type StatementCounts, zeroCounts } from './dbproxy.js';
import { startNchan } from './nchan.js';
import { machineBusySeconds, type ProcessSample, sampleTree, tcpMemPages } from './procfs.js';
import { type Collected, monotonicMs } from './protocol.js';
import {
  insertPublisher,
  nchanPublisher,
  type Publisher,
  type PublishMode,
  postPublisher,
} from './publish.js';
import type { BenchServer, ServerOptions } from './server.js';
import { startServer } from './server.js';
import { type LatencySummary, round, summarize } from './stats.js';

export interface Scenario {
  readonly name: string;
  readonly kind: 'latency' | 'throughput' | 'channels';
  readonly streams: number;
  readonly rows: number;
  /** Pause between inserts; 0 inserts as fast as one connection can. */
  readonly rowIntervalMs: number;
  /** Rows per INSERT statement: 1, or a few multi-row INSERTs for a burst. */
  readonly rowsPerInsert: number;
  /**
   * The channel of each stream (`streams` of them, `?channel=NAME`; '' for none). Absent: every
   * stream is a plain `GET /stream`, which reads every row.
   */
  readonly streamChannels?: readonly string[];
  /** The channel of each measured row (`rows` of them). Absent: every row is in ''. */
  readonly rowChannels?: readonly string[];
}

/** The phase's rows and how they go in. */
type Plan = Pick<Scenario, 'rows' | 'rowIntervalMs' | 'rowsPerInsert'> & {
  readonly channels?: readonly string[] | undefined;
};

export interface ScenarioEnv {
  /** rowcast, or nginx + Nchan (one server, no database) for `--vs nchan`. */
  readonly server: 'rowcast' | 'nchan';
  /** How rowcast gets its rows: INSERT (by the bench) or POST /messages. Nchan always POSTs. */
  readonly publish: PublishMode;
  /**
   * rowcast talks to MariaDB directly, not through the counting proxies (no db_per_tick): each of
   * its round trips then costs what it costs without the bench in between.
   */
  readonly directDb: boolean;
  /** Nchan's module (.so); only for `server: 'nchan'`. */
  readonly nchanModule?: string;
  /** This run's place in the scenario's ABBA order (0 without `--vs`). */
  readonly order: number;
  readonly db: BenchDb;
  /** One counting proxy per rowcast instance: as many instances run as there are proxies. */
  readonly proxies: readonly DbProxy[];
  /** WORKERS of each rowcast instance, or Nchan's worker_processes. */
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
  readonly track: (started: { servers: readonly BenchServer[]; clients?: ClientPool }) => void;
  readonly progress: (line: string) => void;
}

// Connections in flight at once over all clients: below node's default listen backlog (511), so
// a wave never overflows the accept queue and waits for SYN retransmits.
const CONNECT_CONCURRENCY = 400;
const CONNECT_TIMEOUT_MS = 15_000;
const PAGE_KB = 4;

/** Runs one scenario from a fresh database and servers to their stop; returns its JSON record. */
export async function runScenario(scenario: Scenario, env: ScenarioEnv) {
  const began = Date.now();
  const { db, proxies } = env;
  const nchan = env.server === 'nchan';
  const instances = nchan ? 1 : proxies.length;
  // With --vs nchan: `[5k nchan #0]`, `[5k rowcast #1]`, …
  const run = nchan || env.order > 0 ? ` ${env.server} #${env.order}` : '';
  const say = (what: string) => env.progress(`[${scenario.name}${run}] ${what}`);
  const servers: BenchServer[] = [];
  let clients: ClientPool | undefined;
  let publisher: Publisher | undefined;
  try {
    if (nchan) {
      if (env.nchanModule === undefined) throw new Error('no Nchan module (ensureNchan)');
      say(`starting nginx + Nchan (worker_processes ${env.workers})`);
      servers.push(
        await startNchan({
          modulePath: env.nchanModule,
          workers: env.workers,
          log: env.log,
        }),
      );
      env.track({ servers });
      publisher = nchanPublisher((servers[0] as BenchServer).port);
    } else {
      await db.recreate();
      // POST /messages needs a token; any will do.
      const publishToken = env.publish === 'post' ? randomBytes(24).toString('hex') : undefined;
      // One after another: the first creates the table and the state table, the others find them.
      for (const [index, proxy] of proxies.entries()) {
        say(
          instances === 1
            ? `starting the server (WORKERS=${env.workers})`
            : `starting instance ${index + 1}/${instances} (WORKERS=${env.workers})`,
        );
        const serverOptions: ServerOptions = {
          databaseUrl: env.directDb
            ? db.urlVia(DB_SERVER.hostname, Number(DB_SERVER.port || 3306))
            : db.urlVia('127.0.0.1', proxy.port),
          workers: env.workers,
          pollIntervalMs: env.pollIntervalMs,
          maxStreams: env.maxStreams,
          log: env.log,
          ...(publishToken === undefined ? {} : { publishToken }),
        };
        servers.push(await startServer(serverOptions));
        env.track({ servers });
      }
      // With several instances, every row is posted to instance 0.
      publisher =
        publishToken === undefined
          ? insertPublisher(db)
          : postPublisher(db, (servers[0] as BenchServer).port, publishToken);
    }
    const cpuReady = sample(servers).map((s) => s.cpuS);
    const idleEmpty = await dbWindow(env, env.settleMs);
    const memEmpty = sample(servers);
    const tcpEmpty = tcpMemPages();

    clients = startClients(env.clientProcesses);
    env.track({ servers, clients });
    say(
      `opening ${scenario.streams} streams from ${env.clientProcesses} processes` +
        (instances === 1 ? '' : ` to ${instances} instances`),
    );
    const connectStarted = monotonicMs();
    const connected = await clients.connect({
      ports: servers.map((server) => server.port),
      streams: scenario.streams,
      addresses: env.addresses,
      concurrency: CONNECT_CONCURRENCY,
      timeoutMs: CONNECT_TIMEOUT_MS,
      // The cluster primary hands over ~500 connections/s at 45k on this machine: 45k needs ~90 s,
      // 100k some 200 s.
      deadlineMs: 20_000 + 3 * scenario.streams,
      // Nchan answers 403 to a subscriber that does not say it takes chunked bodies.
      ...(nchan ? { path: '/sub', headers: { TE: 'chunked' } } : { path: '/stream' }),
      ...(scenario.streamChannels === undefined ? {} : { channels: scenario.streamChannels }),
    });
    const establishS = (monotonicMs() - connectStarted) / 1000;
    const establishedBy = servers.map((_, index) =>
      connected
        .filter((reply) => reply.instance === index)
        .reduce((sum, reply) => sum + reply.established, 0),
    );
    const established = establishedBy.reduce((sum, n) => sum + n, 0);
    const failures: Record<string, number> = {};
    for (const reply of connected) {
      for (const [reason, n] of Object.entries(reply.failures)) {
        failures[reason] = (failures[reason] ?? 0) + n;
      }
    }
    const cpuConnected = sample(servers).map((s) => s.cpuS);
    say(`${established} established in ${round(establishS)} s; settling`);

    const idleFull = await dbWindow(env, env.settleMs);
    const memFull = sample(servers);
    const tcpFull = tcpMemPages();
    const cpuIdle = memFull.map((s) => s.cpuS);

    // One row first: every stream shows it is live before the measured rows go out. With
    // channels, one row per channel a stream asked for, all in one INSERT: each stream gets one.
    const warmupChannels = distinct(
      (scenario.streamChannels ?? []).filter((channel) => channel !== ''),
    );
    const warmupPlan: Plan =
      warmupChannels.length === 0
        ? { rows: 1, rowIntervalMs: 0, rowsPerInsert: 1 }
        : {
            rows: warmupChannels.length,
            rowIntervalMs: 0,
            rowsPerInsert: warmupChannels.length,
            channels: warmupChannels,
          };
    const warmup = await phase(env, clients, publisher, warmupPlan, 10_000 + warmupPlan.rows);
    say(
      `warm-up (${warmupPlan.rows} row${warmupPlan.rows === 1 ? '' : 's'}): ` +
        `${warmup.received}/${warmup.expected} deliveries; measuring`,
    );

    const cpuBefore = sample(servers).map((s) => s.cpuS);
    const machineBefore = machineBusySeconds();
    const measured = await phase(
      env,
      clients,
      publisher,
      { ...scenario, channels: scenario.rowChannels },
      // Rows queue up when the server falls behind; allow ~100k deliveries/s beyond 15 s.
      15_000 + (scenario.rows * established) / 100,
    );
    const memAfter = sample(servers);
    const machineRowsS = machineBusySeconds() - machineBefore;
    say(
      `${measured.received}/${measured.expected} deliveries, p99 ${measured.latency.p99} ms, ` +
        `${Math.round(measured.perS)}/s`,
    );
    const claims = nchan ? undefined : await db.claimState();

    await clients.close();
    clients = undefined;
    const stopped = await Promise.all(servers.map((server) => server.stop()));
    const perStream = (kb: number, streams = established) =>
      streams === 0 ? null : round(kb / streams);
    const total = (samples: readonly ProcessSample[], pick: (s: ProcessSample) => number) =>
      samples.reduce((sum, s) => sum + pick(s), 0);
    const rss = (s: ProcessSample) => s.rssKb;
    const priv = (s: ProcessSample) => s.privateKb;
    const cpuOf = (i: number) => ({
      start: round(cpuReady[i] as number),
      establish: round((cpuConnected[i] as number) - (cpuReady[i] as number)),
      idle: round((cpuIdle[i] as number) - (cpuConnected[i] as number)),
      rows: round((memAfter[i] as ProcessSample).cpuS - (cpuBefore[i] as number)),
      total: round((memAfter[i] as ProcessSample).cpuS),
    });
    const sumOf = (values: readonly number[]) => values.reduce((sum, v) => sum + v, 0);
    return {
      scenario: scenario.name,
      kind: scenario.kind,
      server: env.server,
      publish: publisher.mode,
      order: env.order,
      instances,
      workers: env.workers,
      server_processes: total(memFull, (s) => s.pids.length),
      client_processes: env.clientProcesses,
      poll_interval_ms: nchan ? null : env.pollIntervalMs,
      streams_requested: scenario.streams,
      streams_established: established,
      streams_per_instance: establishedBy,
      connect_failures: failures,
      establish_s: round(establishS),
      establish_per_s: establishS > 0 ? Math.round(established / establishS) : null,
      // Summed over every instance and its workers; per_instance has each one.
      memory: {
        empty_rss_kb: total(memEmpty, rss),
        empty_private_kb: total(memEmpty, priv),
        idle_rss_kb: total(memFull, rss),
        idle_private_kb: total(memFull, priv),
        after_rows_rss_kb: total(memAfter, rss),
        after_rows_private_kb: total(memAfter, priv),
        per_idle_stream_rss_kb: perStream(total(memFull, rss) - total(memEmpty, rss)),
        per_idle_stream_private_kb: perStream(total(memFull, priv) - total(memEmpty, priv)),
        total_per_stream_rss_kb: perStream(total(memFull, rss)),
        total_per_stream_private_kb: perStream(total(memFull, priv)),
        // Socket buffers live in the kernel, outside any process; machine-wide, clients included.
        kernel_tcp_kb_delta: (tcpFull - tcpEmpty) * PAGE_KB,
        per_instance: servers.map((server, i) => {
          const empty = memEmpty[i] as ProcessSample;
          const full = memFull[i] as ProcessSample;
          const after = memAfter[i] as ProcessSample;
          const streams = establishedBy[i] as number;
          return {
            instance: i,
            port: server.port,
            streams: streams,
            empty_rss_kb: empty.rssKb,
            empty_private_kb: empty.privateKb,
            idle_rss_kb: full.rssKb,
            idle_private_kb: full.privateKb,
            after_rows_rss_kb: after.rssKb,
            after_rows_private_kb: after.privateKb,
            per_idle_stream_rss_kb: perStream(full.rssKb - empty.rssKb, streams),
            per_idle_stream_private_kb: perStream(full.privateKb - empty.privateKb, streams),
          };
        }),
        // With N idle streams; each instance's first is the process started (the cluster primary).
        processes: memFull.flatMap((s, instance) =>
          s.processes.map((p) => ({
            instance,
            pid: p.pid,
            rss_kb: p.rssKb,
            private_kb: p.privateKb,
            open_fds: p.fds,
            cpu_s: round(p.cpuS),
          })),
        ),
      },
      rows: scenario.rows,
      row_interval_ms: scenario.rowIntervalMs,
      insert:
        (scenario.rowsPerInsert === 1
          ? publisher.describe(1)
          : `${Math.ceil(scenario.rows / scenario.rowsPerInsert)} ${publisher.describe(scenario.rowsPerInsert)}`) +
        (scenario.rowChannels === undefined ? '' : ', each row to its channel'),
      insert_s: round(measured.insertS, 3),
      // Over every delivery to a stream that should get the row.
      latency_ms: measured.latency,
      ...(scenario.streamChannels === undefined
        ? {}
        : {
            // Channels with their trailing digits as N: `user:N` is every user:0 … user:9999.
            channels: {
              distinct_stream_channels: warmupChannels.length,
              streams: countBy(scenario.streamChannels.map(channelGroup)),
              rows: countBy((scenario.rowChannels ?? []).map(channelGroup)),
              distinct_row_channels: distinct(scenario.rowChannels ?? []).length,
              warmup_rows: warmupPlan.rows,
              latency_ms: measured.latencyByChannel,
            },
          }),
      deliveries: {
        expected: measured.expected,
        received: measured.received,
        per_s: Math.round(measured.perS),
        span_s: round(measured.spanS, 3),
        lost: measured.lost,
        duplicated: measured.duplicated,
        out_of_order: measured.outOfOrder,
        seq_mismatch: measured.seqMismatch,
        unexpected: measured.unexpected,
        wrong_channel: measured.wrongChannel,
        channel_label_mismatch: measured.channelLabelMismatch,
        streams_closed: measured.closed,
        warmup_lost: warmup.lost,
        warmup_unexpected: warmup.unexpected,
      },
      // After the rows: each row claimed once (docs/delivery.md 1), by whichever instance.
      ...(claims === undefined ? {} : { table: claims }),
      server_cpu_s: {
        start: round(sumOf(cpuReady)),
        establish: round(sumOf(cpuConnected) - sumOf(cpuReady)),
        idle: round(sumOf(cpuIdle) - sumOf(cpuConnected)),
        rows: round(total(memAfter, (s) => s.cpuS) - sumOf(cpuBefore)),
        total: round(total(memAfter, (s) => s.cpuS)),
        per_instance: servers.map((_, i) => cpuOf(i)),
      },
      // The whole machine's CPU in the rows phase, and what of it was neither the servers nor the
      // clients: MariaDB, the bench itself, and anything else on the machine (a run beside it).
      machine_cpu_s: {
        rows: round(machineRowsS),
        other_rows: round(
          machineRowsS - (total(memAfter, (s) => s.cpuS) - sumOf(cpuBefore)) - measured.clientCpuS,
        ),
      },
      client: {
        cpu_s_rows: round(measured.clientCpuS),
        loop_delay_p99_ms: round(measured.loopDelayP99Ms),
        loop_delay_max_ms: round(measured.loopDelayMaxMs),
      },
      ...(nchan || env.directDb
        ? {}
        : {
            db_per_tick: {
              idle_0_streams: idleEmpty,
              idle_n_streams: idleFull,
              rows: measured.db,
            },
          }),
      server_stop: {
        graceful: stopped.every((stop) => stop.graceful),
        exit_codes: stopped.map((stop) => stop.exitCode),
      },
      duration_s: round((Date.now() - began) / 1000, 1),
    };
  } finally {
    publisher?.close();
    clients?.kill();
    for (const server of servers) server.kill();
  }
}

/** Each instance's process tree, summed per instance. */
function sample(servers: readonly BenchServer[]): ProcessSample[] {
  return servers.map((server) => {
    server.refreshTree();
    return sampleTree(server.pid);
  });
}

/**
 * Inserts the rows, `rowIntervalMs` apart, each carrying its insert time, and waits until every
 * open stream has them all or `waitMs` has passed after the last insert.
 */
async function phase(
  env: ScenarioEnv,
  clients: ClientPool,
  publisher: Publisher,
  plan: Plan,
  waitMs: number,
) {
  const { rows, rowIntervalMs, rowsPerInsert, channels } = plan;
  const base = await publisher.nextId();
  await clients.expect(base, rows, channels);
  const before = await countersNow(env);
  const started = monotonicMs();
  // Publishes not awaited one by one (see Publisher.overlapping), awaited together at the end.
  const inFlight: Promise<void>[] = [];
  for (let i = 0; i < rows; i += rowsPerInsert) {
    if (rowIntervalMs > 0) {
      const due = started + i * rowIntervalMs - monotonicMs();
      if (due > 0) await sleep(due);
    }
    const sentUs = String(Math.round(monotonicMs() * 1000));
    const count = Math.min(rowsPerInsert, rows - i);
    const expectedId = base + i;
    const published = publisher
      .publish(Array(count).fill(sentUs), channels?.slice(i, i + count))
      .then((id) => {
        if (id !== expectedId) throw new Error(`row got id ${id}, expected ${expectedId} (id gap)`);
      });
    if (publisher.overlapping) {
      // Handled here so a failure before the loop ends is not an unhandled rejection; the
      // Promise.all below still fails the phase with it.
      published.catch(() => undefined);
      inFlight.push(published);
    } else await published;
  }
  await Promise.all(inFlight);
  const insertS = (monotonicMs() - started) / 1000;
  const deadline = monotonicMs() + waitMs;
  let open = 0;
  // Bounded by the deadline; each round trip to the clients is bounded by their reply timeout.
  while (monotonicMs() < deadline) {
    const progress = await clients.progress();
    open = progress.open;
    if (progress.received >= progress.expected) break;
    await sleep(50);
  }
  // Let the last tails' ticks end on every instance, so the window holds whole ticks.
  if (env.server === 'rowcast') await sleep(env.pollIntervalMs * 2);
  const after = await countersNow(env);
  const results = await clients.collect();
  const sum = (pick: (r: (typeof results)[number]) => number) =>
    results.reduce((total, r) => total + pick(r), 0);
  const received = sum((r) => r.received);
  const lastReceipt = Math.max(...results.map((r) => r.lastReceipt));
  // Each client checked its own streams; across clients (and instances) a row's seq must agree too.
  let crossMismatch = 0;
  for (let offset = 0; offset < rows; offset++) {
    let first = 0;
    for (const r of results) {
      const seq = r.seqs[offset] ?? 0;
      if (seq === 0) continue;
      if (first === 0) first = seq;
      else if (seq !== first) crossMismatch++;
    }
  }
  const spanS = received === 0 ? 0 : (lastReceipt - started) / 1000;
  return {
    expected: sum((r) => r.expected),
    received,
    open,
    lost: sum((r) => r.lost),
    duplicated: sum((r) => r.duplicated),
    outOfOrder: sum((r) => r.outOfOrder),
    seqMismatch: sum((r) => r.seqMismatch) + crossMismatch,
    unexpected: sum((r) => r.unexpected),
    wrongChannel: sum((r) => r.wrongChannel),
    channelLabelMismatch: sum((r) => r.channelLabelMismatch),
    closed: sum((r) => r.closed),
    latency: summarize(results.map((r) => r.latencies)),
    latencyByChannel: channels === undefined ? undefined : latencyByGroup(results, channels),
    insertS,
    spanS,
    perS: spanS > 0 ? received / spanS : 0,
    clientCpuS: sum((r) => r.cpuS),
    loopDelayP99Ms: Math.max(...results.map((r) => r.loopDelayP99Ms)),
    loopDelayMaxMs: Math.max(...results.map((r) => r.loopDelayMaxMs)),
    db: perTick(before, after),
  };
}

/** A channel with its trailing digits as N (`user:17` → `user:N`), to report channels by kind. */
function channelGroup(channel: string): string {
  return channel.replace(/\d+$/, 'N');
}

/** The values, each once, in the order they first come. */
function distinct(values: readonly string[]): string[] {
  return [...new Set(values)];
}

function countBy(values: readonly string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const value of values) counts[value] = (counts[value] ?? 0) + 1;
  return counts;
}

/** Latency percentiles per channel group (channelGroup) of the rows, over every delivery. */
function latencyByGroup(
  results: readonly Collected[],
  channels: readonly string[],
): Record<string, LatencySummary> {
  const groupOf = channels.map(channelGroup);
  const byGroup = new Map<string, number[]>();
  for (const r of results) {
    r.latencies.forEach((latency, j) => {
      const group = groupOf[r.latencyOffsets[j] as number] ?? '?';
      const list = byGroup.get(group) ?? [];
      if (list.length === 0) byGroup.set(group, list);
      list.push(latency);
    });
  }
  return Object.fromEntries(
    [...byGroup]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([group, list]) => [group, summarize([Float32Array.from(list)])]),
  );
}

interface Counters {
  readonly at: number;
  readonly status: Status;
  /** One per instance (its own proxy). */
  readonly statements: readonly StatementCounts[];
}

/** The database's counters now; null for Nchan, which has no database. */
async function countersNow(env: ScenarioEnv): Promise<Counters | null> {
  if (env.server === 'nchan' || env.directDb) return null;
  const status = await env.db.globalStatus();
  return { at: monotonicMs(), status, statements: env.proxies.map((proxy) => proxy.counts()) };
}

/** Database work while nothing is inserted, over `ms`. */
async function dbWindow(env: ScenarioEnv, ms: number) {
  const before = await countersNow(env);
  await sleep(ms);
  return perTick(before, await countersNow(env));
}

/**
 * rowcast's statements per tick of one instance, or of all (`before`/`after` summed): a tick is
 * one pending check through the proxy (exact, rowcast's own). An idle tick is that 1 statement
 * (docs/delivery.md 7). A tick that sees pending rows adds a claim transaction (2 round trips,
 * then the COMMIT with the tail in a third), and one whose counter is past its cursor a tail
 * (every instance tails every row).
 */
function statementsPerTick(before: StatementCounts, after: StatementCounts) {
  const ticks = after.head - before.head;
  const per = (delta: number) => (ticks === 0 ? null : round(delta / ticks, 3));
  const delta = (key: keyof StatementCounts) => after[key] - before[key];
  return {
    ticks,
    rowcast: {
      statements: per(delta('total')),
      pending_check: per(delta('head')),
      claim_transactions: per(delta('claims')),
      // Claims that found nothing left to take: another instance had claimed the rows first.
      empty_claims: per(delta('claims') - delta('claimUpdates')),
      claim_statements: per(delta('claimStatements')),
      tail: per(delta('tail')),
      replay: per(delta('replay')),
      insert: per(delta('insert')),
      other: per(delta('other')),
      bytes_from_db: per(delta('bytesIn')),
    },
  };
}

function sumCounts(all: readonly StatementCounts[]): StatementCounts {
  const total = zeroCounts();
  for (const counts of all) {
    for (const key of Object.keys(total) as (keyof StatementCounts)[]) total[key] += counts[key];
  }
  return total;
}

/**
 * Database work per tick between two readings: rowcast's statements per tick over all instances
 * and per instance; the global counters (every client of the database server, ours included)
 * per tick of all instances together.
 */
function perTick(before: Counters | null, after: Counters | null) {
  if (before === null || after === null) return null;
  const all = statementsPerTick(sumCounts(before.statements), sumCounts(after.statements));
  const per = (delta: number) => (all.ticks === 0 ? null : round(delta / all.ticks, 3));
  return {
    window_ms: Math.round(after.at - before.at),
    ticks: all.ticks,
    rowcast: all.rowcast,
    per_instance: after.statements.map((counts, i) =>
      statementsPerTick(before.statements[i] as StatementCounts, counts),
    ),
    global: Object.fromEntries(
      STATUS_COUNTERS.map((key) => [key, per(after.status[key] - before.status[key])]),
    ),
  };
}
