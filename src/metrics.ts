import {
  AggregatorRegistry,
  Counter,
  collectDefaultMetrics,
  Gauge,
  Histogram,
  Registry,
} from 'prom-client';
import type { HubMetrics } from './fanout/hub.js';
import type { TailerHealth, TailerMetrics } from './source/tailer.js';
import type { TransportName } from './transports/transport.js';

/** A registry's figures as `getMetricsAsJSON()` gives them: what workers hand the primary. */
export type Figures = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

/** What GET /metrics answers with. */
export const METRICS_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

/**
 * The figures of one server instance (a single process, the cluster primary or a worker). Every
 * instance defines every metric; the ones it has no part in stay at zero, so the cluster's sum is
 * right: the primary counts ticks, claims, rows, database errors, replays and publishes, the
 * workers count streams and bytes.
 */
export interface Metrics extends HubMetrics, TailerMetrics {
  /** A stream refused because MAX_STREAMS streams were open. */
  rejected(): void;
  /** A stream refused by subscriber authorization (401 or 403). */
  authRefused(status: 401 | 403): void;
  /** Reads the number of distinct channels (names and prefixes) subscribed to at each scrape. */
  watchChannels(count: () => number): void;
  /** A database statement failed. */
  dbError(): void;
  /** A row was inserted through POST /messages. */
  published(): void;
  /** `streams` resuming streams got their replay (`ok`) or were ended without one. */
  replayed(result: 'ok' | 'failed', streams: number): void;
  /** Reads the open streams per transport at each scrape. */
  watchStreams(sizes: () => ReadonlyMap<TransportName, number>): void;
  /** Reads the tail lag and the oldest unclaimed row's age at each scrape. */
  watchTail(health: () => TailerHealth): void;
  /** This instance's figures and its process's, in the Prometheus text format. */
  text(): Promise<string>;
  /** The same as JSON, for the cluster primary to add up. */
  figures(): Promise<Figures>;
}

const TRANSPORTS: readonly TransportName[] = ['html', 'sse', 'ndjson'];
// The labels of rowcast's counters and all their values.
const LABEL_VALUES = {
  transport: TRANSPORTS,
  result: ['ok', 'failed'],
  status: ['401', '403'],
} as const;
type Label = keyof typeof LABEL_VALUES;
// From a tick that finds nothing (about a millisecond) to one writing to tens of thousands of
// streams (seconds) or waiting for a query timeout (10 s).
const TICK_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export function createMetrics(): Metrics {
  const registry = new Registry();
  const registers = [registry];
  let streamSizes: () => ReadonlyMap<TransportName, number> = () => new Map();
  let tail: (() => TailerHealth) | null = null;
  let channelCount = () => 0;

  new Gauge({
    name: 'rowcast_streams',
    help: 'Open streams receiving rows, by transport (streams waiting for their replay not yet).',
    labelNames: ['transport'],
    registers,
    collect() {
      const sizes = streamSizes();
      for (const transport of TRANSPORTS) this.set({ transport }, sizes.get(transport) ?? 0);
    },
  });
  new Gauge({
    name: 'rowcast_channels',
    help:
      'Distinct channel names and prefixes the open streams subscribe to (no per-channel labels: ' +
      'their number is unbounded).',
    registers,
    collect() {
      this.set(channelCount());
    },
  });
  const authRefused = counter(
    'rowcast_auth_refusals_total',
    'Stream requests refused by subscriber authorization, by status: 401 (no, bad or expired ' +
      'token), 403 (a channel not granted).',
    'status',
  );
  const expired = counter(
    'rowcast_streams_expired_total',
    'Streams ended because their token expired (the client reconnects with a fresh one), by transport.',
    'transport',
  );
  const rejected = counter(
    'rowcast_streams_rejected_total',
    'Stream requests refused with 503 because MAX_STREAMS streams were open.',
  );
  const cut = counter(
    'rowcast_streams_cut_total',
    'Streams cut off because their client did not read (MAX_BUFFERED_BYTES), by transport.',
    'transport',
  );
  const written = counter(
    'rowcast_bytes_written_total',
    'Bytes written to stream bodies (preambles, replays, batches, heartbeats; with the chunk ' +
      'framing rowcast writes itself), by transport. Counted by the process holding the streams.',
    'transport',
  );
  const delivered = counter(
    'rowcast_rows_delivered_total',
    'Rows a tick tailed and handed to every open stream, each counted once however many ' +
      'streams (and workers) got it. Counted by the process that polls.',
  );
  const claimed = counter(
    'rowcast_rows_claimed_total',
    'Rows this instance claimed (flag = 1 and a seq); with several instances, each counts its own.',
  );
  const ticks = counter(
    'rowcast_ticks_total',
    'Poll ticks, by result: ok, or failed (the database did not answer or refused).',
    'result',
  );
  const tickSeconds = new Histogram({
    name: 'rowcast_tick_duration_seconds',
    help: 'Time a tick took: pending check, claim, tail, handing the batch to the streams.',
    buckets: TICK_BUCKETS,
    registers,
  });
  new Gauge({
    name: 'rowcast_tail_lag_rows',
    help: 'Claimed rows this instance had not tailed yet at its last tick (0 when caught up).',
    registers,
    collect() {
      this.set(tail?.().lagRows ?? 0);
    },
  });
  new Gauge({
    name: 'rowcast_unclaimed_oldest_seconds',
    help:
      'Age of the oldest row still at flag = 0 at the last tick (0 when none): grows when no ' +
      'instance claims, even with every health check green.',
    registers,
    collect() {
      this.set(tail?.().unclaimedOldestSeconds ?? 0);
    },
  });
  const dbErrors = counter(
    'rowcast_db_errors_total',
    'Database statements that failed (pending checks, claims, tails, replays, publishes, schema checks).',
  );
  const replays = counter(
    'rowcast_replays_total',
    'Streams that resumed (since= / Last-Event-ID), by result: ok, or failed (ended).',
    'result',
  );
  const published = counter('rowcast_published_total', 'Rows inserted through POST /messages.');

  /** A counter; with a label, one series per value of it, each from zero before any event. */
  function counter(name: string, help: string, label?: Label): Counter<Label> {
    const metric = new Counter<Label>({ name, help, labelNames: label ? [label] : [], registers });
    for (const value of label ? LABEL_VALUES[label] : [])
      metric.inc({ [label as Label]: value }, 0);
    return metric;
  }

  return {
    written: (transport, bytes) => written.inc({ transport }, bytes),
    cut: (transport) => cut.inc({ transport }),
    rejected: () => rejected.inc(),
    authRefused: (status) => authRefused.inc({ status: String(status) }),
    expired: (transport) => expired.inc({ transport }),
    watchChannels(count) {
      channelCount = count;
    },
    tick(result, seconds) {
      ticks.inc({ result });
      tickSeconds.observe(seconds);
    },
    delivered: (rows) => delivered.inc(rows),
    claimed: (rows) => claimed.inc(rows),
    dbError: () => dbErrors.inc(),
    published: () => published.inc(),
    replayed: (result, streams) => replays.inc({ result }, streams),
    watchStreams(sizes) {
      streamSizes = sizes;
    },
    watchTail(health) {
      tail = health;
    },
    text: () => Registry.merge([registry, processRegistry()]).metrics(),
    async figures() {
      const [own, processFigures] = await Promise.all([
        registry.getMetricsAsJSON(),
        processRegistry().getMetricsAsJSON(),
      ]);
      // prom-client hands out its counters' live value objects: copy them now, or a tick that
      // ends while the workers' figures are awaited shows in the counters but not the histograms.
      return structuredClone([...own, ...processFigures]);
    },
  };
}

/**
 * The cluster's figures in the Prometheus text format: counters and gauges summed over the
 * processes, prom-client's own rule for its process metrics (event-loop lag averaged, its min and
 * max kept, the start time left out, the version taken once).
 */
export function aggregate(figures: readonly Figures[]): Promise<string> {
  return AggregatorRegistry.aggregate([...figures]).metrics();
}

// prom-client's process metrics (CPU, memory, heap, event-loop lag, GC, handles, file
// descriptors), with their standard names so stock Node.js dashboards work. They describe the
// process, not a server instance, and cannot be stopped (a GC observer, an event-loop monitor):
// one registry per process, shared by every instance it runs (tests start several).
let processMetrics: Registry | null = null;
function processRegistry(): Registry {
  if (processMetrics === null) {
    processMetrics = new Registry();
    collectDefaultMetrics({ register: processMetrics });
  }
  return processMetrics;
}
