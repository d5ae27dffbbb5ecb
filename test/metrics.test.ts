import assert from 'node:assert/strict';
import cluster, { type Worker } from 'node:cluster';
import { once } from 'node:events';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { startCluster, type TestApp, withApp } from './helpers/app.js';
import { createTestDb, type TestDb, withoutUpdate } from './helpers/db.js';
import { withDbProxy } from './helpers/proxy.js';
import { connectRaw, type RawClient } from './helpers/raw.js';
import { request as get } from './helpers/request.js';
import { tcpSockets, waitForSockets } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// GET /metrics (issue 5): the figures move by the right amounts as streams open, rows are claimed
// and go out, clients are cut or refused and the database fails, in one process and summed over
// workers.

let db: TestDb;
before(async () => {
  db = await createTestDb('metrics', { withTable: true });
});
after(async () => {
  await db.drop();
});

type TransportName = 'html' | 'sse' | 'ndjson';
const TRANSPORTS: readonly TransportName[] = ['html', 'sse', 'ndjson'];
const ROUTES: Record<TransportName, string> = {
  html: '/stream',
  sse: '/events',
  ndjson: '/stream.ndjson',
};
/** How each wire format shows that the row with this id arrived. */
const MARKERS: Record<TransportName, (id: string) => string> = {
  html: (id) => `data-id="${id}"`,
  sse: (id) => `id: ${id}\n`,
  ndjson: (id) => `{"id":${id},`,
};
const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
// No heartbeat during a test: every byte written to a stream is one the test asked for.
const NO_HEARTBEAT = { HEARTBEAT_MS: '3600000' };

/** A scrape: each series (`name` or `name{label="value",…}` as written) and its value. */
type Figures = Map<string, number>;

/** The series of a text-format answer; comments and blank lines skipped. */
function parseFigures(text: string): Figures {
  const figures: Figures = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    figures.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return figures;
}

/** The value of a series, which must be there. */
function value(figures: Figures, series: string): number {
  const found = figures.get(series);
  assert.ok(found !== undefined, `series ${series} in /metrics`);
  return found;
}

/** GET /metrics, which must answer 200. */
async function scrape(base: URL): Promise<Figures> {
  const answer = await get(new URL('/metrics', base));
  assert.equal(answer.status, 200, answer.body);
  assert.equal(answer.headers['content-type'], CONTENT_TYPE);
  return parseFigures(answer.body);
}

/** Scrapes until `ready` holds of the figures (they trail the event by a tick at most). */
function scrapeUntil(base: URL, ready: (f: Figures) => boolean, what: string): Promise<Figures> {
  return waitUntil(async () => {
    const figures = await scrape(base);
    return ready(figures) && figures;
  }, what);
}

interface RawStream {
  readonly transport: TransportName;
  readonly client: RawClient;
}

/** Opens a stream on a bare socket, which sees the bytes exactly as rowcast writes them. */
async function openRaw(base: URL, transport: TransportName, query = ''): Promise<RawStream> {
  const client = connectRaw(base, `GET ${ROUTES[transport]}${query} HTTP/1.1\r\nHost: x\r\n\r\n`);
  await client.waitFor((text) => text.includes('\r\n\r\n'), `the ${transport} response head`);
  return { transport, client };
}

/** The body bytes a stream received: everything after the response head. */
function bodyBytes(stream: RawStream): number {
  const text = stream.client.text;
  return text.length - (text.indexOf('\r\n\r\n') + 4);
}

async function waitForRow(streams: readonly RawStream[], id: string): Promise<void> {
  for (const { transport, client } of streams) {
    await client.waitFor((text) => text.includes(MARKERS[transport](id)), `row ${id}`);
  }
}

/** Each transport's streams, counted. */
function countBy(streams: readonly RawStream[]): Record<TransportName, number> {
  const counts = { html: 0, sse: 0, ndjson: 0 };
  for (const { transport } of streams) counts[transport]++;
  return counts;
}

function streamsMatch(figures: Figures, counts: Record<TransportName, number>): boolean {
  return TRANSPORTS.every((t) => figures.get(`rowcast_streams{transport="${t}"}`) === counts[t]);
}

/** Every byte a stream received is counted once, under its transport. */
function assertBytesWritten(figures: Figures, streams: readonly RawStream[]): void {
  for (const transport of TRANSPORTS) {
    const received = streams
      .filter((stream) => stream.transport === transport)
      .reduce((sum, stream) => sum + bodyBytes(stream), 0);
    assert.equal(
      value(figures, `rowcast_bytes_written_total{transport="${transport}"}`),
      received,
      `${transport} bytes written`,
    );
  }
}

const DELIVERED = 'rowcast_rows_delivered_total';
const CLAIMED = 'rowcast_rows_claimed_total';
const TAIL_LAG = 'rowcast_tail_lag_rows';
const UNCLAIMED_AGE = 'rowcast_unclaimed_oldest_seconds';
const TICKS_OK = 'rowcast_ticks_total{result="ok"}';
const TICKS_FAILED = 'rowcast_ticks_total{result="failed"}';
const DB_ERRORS = 'rowcast_db_errors_total';

/** Every tick is in the histogram once, whatever its result. */
function assertTicksTimed(figures: Figures): void {
  assert.equal(
    value(figures, 'rowcast_tick_duration_seconds_count'),
    value(figures, TICKS_OK) + value(figures, TICKS_FAILED),
  );
  assert.ok(value(figures, 'rowcast_tick_duration_seconds_sum') > 0);
}

function closeAll(streams: readonly RawStream[]): void {
  for (const { client } of streams) client.socket.destroy();
}

test('streams by transport, rows claimed and delivered, ticks, bytes written, replays and publishes move as rows go out', async () => {
  const token = 'metrics-test-token-0123456789';
  await withApp(db.url, { ...NO_HEARTBEAT, PUBLISH_TOKEN: token }, async (app) => {
    const start = await scrapeUntil(app.url, (f) => (f.get(TICKS_OK) ?? 0) >= 1, 'a first tick');
    assert.ok(streamsMatch(start, { html: 0, sse: 0, ndjson: 0 }));
    assert.equal(value(start, DELIVERED), 0);
    assert.equal(value(start, CLAIMED), 0);
    for (const transport of TRANSPORTS) {
      assert.equal(value(start, `rowcast_bytes_written_total{transport="${transport}"}`), 0);
    }

    const streams: RawStream[] = [];
    try {
      for (const transport of ['html', 'html', 'sse', 'ndjson'] as const) {
        streams.push(await openRaw(app.url, transport));
      }
      await scrapeUntil(app.url, (f) => streamsMatch(f, countBy(streams)), 'the streams counted');

      const rows = await db.insert('one', 'two <b>', 'three');
      await waitForRow(streams, rows[2] as string);
      let figures = await scrapeUntil(app.url, (f) => value(f, DELIVERED) >= 3, 'three rows');
      assert.equal(value(figures, DELIVERED), 3, 'each row once, whatever the number of streams');
      assertBytesWritten(figures, streams);
      assert.ok(value(figures, TICKS_OK) > value(start, TICKS_OK));
      assert.equal(value(figures, TICKS_FAILED), 0);
      assertTicksTimed(figures);
      assert.equal(value(figures, DB_ERRORS), 0);
      assert.equal(value(figures, CLAIMED), 3, 'this instance claimed the three rows');
      assert.equal(value(figures, TAIL_LAG), 0, 'caught up');
      assert.equal(value(figures, 'rowcast_published_total'), 0);

      // A publish over HTTP, and a stream resuming after the first row: its replay counts too.
      const published = await publish(app, token, 'published');
      streams.push(await openRaw(app.url, 'sse', `?since=${rows[0]}`));
      await waitForRow(streams, published);
      figures = await scrapeUntil(app.url, (f) => value(f, DELIVERED) >= 4, 'the published row');
      assert.equal(value(figures, DELIVERED), 4);
      assert.equal(value(figures, CLAIMED), 4);
      assert.equal(value(figures, 'rowcast_published_total'), 1);
      assert.equal(value(figures, 'rowcast_replays_total{result="ok"}'), 1);
      assert.equal(value(figures, 'rowcast_replays_total{result="failed"}'), 0);
      assert.ok(streamsMatch(figures, countBy(streams)));
      assertBytesWritten(figures, streams);

      const left = streams.splice(0, 2);
      closeAll(left);
      await scrapeUntil(app.url, (f) => streamsMatch(f, countBy(streams)), 'the streams gone');
    } finally {
      closeAll(streams);
    }
  });
});

async function publish(app: TestApp, token: string, content: string): Promise<string> {
  const req = http.request(new URL('/messages', app.url), {
    method: 'POST',
    agent: false,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
  });
  req.end(JSON.stringify({ content }));
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  let body = '';
  for await (const chunk of res) body += chunk;
  assert.equal(res.statusCode, 201, body);
  return String((JSON.parse(body) as { id: number }).id);
}

test('a refused stream and a slow consumer cut off are counted', async () => {
  const env = { ...NO_HEARTBEAT, MAX_STREAMS: '1', MAX_BUFFERED_BYTES: '65536' };
  await withApp(db.url, env, async (app) => {
    const stalled = await openRaw(app.url, 'html');
    try {
      stalled.client.socket.pause();
      const refused = await get(new URL('/stream', app.url));
      assert.equal(refused.status, 503);
      let figures = await scrape(app.url);
      assert.equal(value(figures, 'rowcast_streams_rejected_total'), 1);
      assert.equal(value(figures, 'rowcast_streams_cut_total{transport="html"}'), 0);

      // Batches of 1 MB until the kernel's buffers are full and the server cuts the stream.
      const content = 'x'.repeat(200_000);
      for (let tick = 0; tick < 60 && app.logs.events('stream.cut').length === 0; tick++) {
        await db.waitMarked(await db.insert(content, content, content, content, content));
      }
      figures = await scrapeUntil(
        app.url,
        (f) => f.get('rowcast_streams{transport="html"}') === 0,
        'the cut stream gone',
      );
      assert.equal(app.logs.events('stream.cut').length, 1);
      assert.equal(value(figures, 'rowcast_streams_cut_total{transport="html"}'), 1);
      assert.equal(value(figures, 'rowcast_streams_cut_total{transport="sse"}'), 0);
      assert.equal(value(figures, 'rowcast_streams_rejected_total'), 1);
    } finally {
      stalled.client.socket.destroy();
    }
  });
});

test('a database cut shows in database errors and failed ticks; recovery in ok ticks', {
  timeout: 60_000,
}, async () => {
  const idle = tcpSockets();
  await withDbProxy(async (proxy) => {
    await withApp(proxy.url(db.name), {}, async (app) => {
      const up = await scrapeUntil(app.url, (f) => (f.get(TICKS_OK) ?? 0) >= 1, 'a first tick');
      assert.equal(value(up, DB_ERRORS), 0);
      proxy.cut();
      try {
        await app.logs.waitFor('poll.failed');
        const down = await scrapeUntil(
          app.url,
          (f) => value(f, TICKS_FAILED) >= 2,
          'two failed ticks',
        );
        assert.ok(value(down, DB_ERRORS) >= value(down, TICKS_FAILED), 'each failed tick');
        assertTicksTimed(down);
      } finally {
        proxy.restore();
      }
      await app.logs.waitFor('poll.recovered', 15_000);
      const [id] = (await db.insert('after the cut')) as [string];
      await db.waitMarked([id]);
      // The claim marks the row before the tail hands it over: the count may trail the mark.
      const again = await scrapeUntil(app.url, (f) => value(f, DELIVERED) >= 1, 'the row tailed');
      assert.equal(value(again, DELIVERED), 1);
      assert.equal(value(again, CLAIMED), 1);
      assertTicksTimed(again);
    });
    await waitForSockets(idle); // before the proxy closes (see waitForSockets)
  });
});

test('rows no instance may claim show in rowcast_unclaimed_oldest_seconds, growing, until claimed', async () => {
  // The table is prepared already (withTable): a user who may not UPDATE starts, but cannot claim.
  await withoutUpdate(db, db.url, async (url, user) => {
    // A one-minute interval: the test runs every tick after the first itself, with pollOnce.
    await withApp(url, { POLL_INTERVAL_MS: '60000', ...NO_HEARTBEAT }, async (app) => {
      await app.app.tailer.pollOnce();
      let figures = await scrape(app.url);
      assert.equal(value(figures, UNCLAIMED_AGE), 0, 'no row pending');
      const rows = await db.insert('one', 'two');
      // Each tick sees the rows pending and fails to claim them.
      const refused = async () => {
        await assert.rejects(app.app.tailer.pollOnce(), { code: 'ER_TABLEACCESS_DENIED_ERROR' });
        return scrape(app.url);
      };
      const age = await waitUntil(async () => {
        const f = await refused();
        return value(f, UNCLAIMED_AGE) > 0 && value(f, UNCLAIMED_AGE);
      }, 'the oldest unclaimed row has an age');
      figures = await waitUntil(async () => {
        const f = await refused();
        return value(f, UNCLAIMED_AGE) > age && f;
      }, 'the age growing');
      assert.equal(value(figures, CLAIMED), 0);
      assert.equal(value(figures, DELIVERED), 0);
      assert.ok(value(figures, TICKS_FAILED) >= 2);
      assert.equal(value(figures, DB_ERRORS), value(figures, TICKS_FAILED), 'one per failed tick');
      const errors = value(figures, DB_ERRORS);

      // A table-level GRANT applies to open connections at their next statement.
      await db.query(`GRANT UPDATE ON \`${db.name}\`.\`msg\` TO ?@'%'`, [user]);
      await db.query(`GRANT UPDATE ON \`${db.name}\`.\`rowcast_state\` TO ?@'%'`, [user]);
      await app.app.tailer.pollOnce();
      figures = await scrape(app.url);
      assert.equal(value(figures, CLAIMED), rows.length);
      assert.equal(value(figures, DELIVERED), rows.length);
      assert.equal(value(figures, DB_ERRORS), errors);
      // The age is read by each tick's pending check, before its claim: the next one finds none.
      await app.app.tailer.pollOnce();
      figures = await scrape(app.url);
      assert.equal(value(figures, UNCLAIMED_AGE), 0, 'nothing pending once claimed');
      assert.equal(value(figures, CLAIMED), rows.length);
    });
  });
});

test('rowcast_tail_lag_rows counts rows claimed elsewhere that this instance has not tailed yet', async () => {
  // Two instances on one table, their ticks run by the test: one claims, the other tails two
  // rows a tick (BATCH_SIZE), so it lags behind by what is left.
  const manual = { POLL_INTERVAL_MS: '60000', ...NO_HEARTBEAT };
  await withApp(db.url, { ...manual, BATCH_SIZE: '2' }, async (tailing) => {
    await withApp(db.url, manual, async (claiming) => {
      await tailing.app.tailer.pollOnce(); // its cursor is before the rows
      await claiming.app.tailer.pollOnce();
      const stream = await openRaw(tailing.url, 'html');
      try {
        const rows = await db.insert('a', 'b', 'c', 'd', 'e');
        await claiming.app.tailer.pollOnce();
        const claimer = await scrape(claiming.url);
        assert.equal(value(claimer, CLAIMED), 5);
        assert.equal(value(claimer, DELIVERED), 5);
        assert.equal(value(claimer, TAIL_LAG), 0);

        for (const [lag, delivered] of [
          [3, 2],
          [1, 4],
          [0, 5],
        ] as const) {
          await tailing.app.tailer.pollOnce();
          const figures = await scrape(tailing.url);
          assert.equal(value(figures, TAIL_LAG), lag, `lag after ${delivered} rows`);
          assert.equal(value(figures, DELIVERED), delivered);
          assert.equal(value(figures, CLAIMED), 0, 'it claimed none');
          await waitForRow([stream], rows[delivered - 1] as string);
        }
      } finally {
        closeAll([stream]);
      }
    });
  });
});

test('process metrics are there; HEAD /metrics answers the headers only', async () => {
  await withApp(db.url, {}, async (app) => {
    const figures = await scrape(app.url);
    for (const series of [
      'process_cpu_user_seconds_total',
      'process_resident_memory_bytes',
      'process_start_time_seconds',
      'nodejs_heap_size_used_bytes',
      'nodejs_eventloop_lag_seconds',
    ]) {
      assert.ok(value(figures, series) > 0, series);
    }
    const head = await get(new URL('/metrics', app.url), 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.headers['content-type'], CONTENT_TYPE);
    assert.equal(head.body, '');
    const post = await get(new URL('/metrics', app.url), 'POST');
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
  });
});

test('WORKERS=2: /metrics from either worker sums the streams of both; rows count once', {
  timeout: 60_000,
}, async () => {
  const server = await startCluster(db.url, 2, NO_HEARTBEAT);
  // Which worker asked the primary for each scrape (the test runs the primary).
  const askedBy = new Map<number, number>();
  const onMessage = (worker: Worker, message: { t?: string }) => {
    if (message.t === 'scrape') askedBy.set(worker.id, (askedBy.get(worker.id) ?? 0) + 1);
  };
  cluster.on('message', onMessage);
  const streams: RawStream[] = [];
  try {
    for (const transport of TRANSPORTS) {
      for (let i = 0; i < 2; i++) streams.push(await openRaw(server.url, transport));
    }
    const pids = () => new Set(server.logs.events('stream.open').map((entry) => entry.worker));
    await waitUntil(() => pids().size === 2, 'streams on both workers');
    await scrapeUntil(server.url, (f) => streamsMatch(f, countBy(streams)), 'all streams counted');

    const rows = await db.insert('a', 'b', 'c', 'd');
    await waitForRow(streams, rows[3] as string);
    const figures = await scrapeUntil(server.url, (f) => value(f, DELIVERED) >= 4, 'four rows');
    assert.equal(value(figures, DELIVERED), 4, 'each row once, not once per worker');
    assert.equal(value(figures, CLAIMED), 4, 'claimed once, by the primary');
    assertBytesWritten(figures, streams);
    assertTicksTimed(figures);
    // Process metrics summed over the processes; the start time of one process means nothing.
    assert.ok(value(figures, 'process_resident_memory_bytes') > 0);
    assert.equal(figures.has('process_start_time_seconds'), false);

    // Consecutive connections go to alternate workers (node:cluster's round-robin).
    askedBy.clear();
    for (let i = 0; i < 4; i++) {
      const again = await scrape(server.url);
      assert.ok(streamsMatch(again, countBy(streams)));
      assert.equal(value(again, DELIVERED), 4);
      assertBytesWritten(again, streams);
    }
    assert.equal(askedBy.size, 2, 'both workers answered /metrics');
  } finally {
    cluster.off('message', onMessage);
    closeAll(streams);
    await server.close();
  }
});

test('WORKERS=2: a frozen worker fails /metrics with 503 in bounded time, not forever', {
  timeout: 60_000,
}, async () => {
  const server = await startCluster(db.url, 2);
  try {
    const [frozen] = Object.values(cluster.workers ?? {}) as Worker[];
    const pid = frozen?.process.pid as number;
    process.kill(pid, 'SIGSTOP');
    // A connection handed to the frozen worker waits for it; the other worker answers.
    const scrapes = [0, 1].map(() => get(new URL('/metrics', server.url)));
    try {
      const first = await Promise.race(scrapes);
      assert.equal(first.status, 503);
      assert.match(first.headers['retry-after'] ?? '', /^\d+$/);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await Promise.all(scrapes);
    await scrape(server.url);
  } finally {
    await server.close();
  }
});
