import assert from 'node:assert/strict';
import cluster from 'node:cluster';
import { after, before, test } from 'node:test';
import { startCluster, type TestCluster } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { assertGapFree, placedOf, tableRows } from './helpers/seq.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { getHealth } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// WORKERS > 1: one tailer in the primary (it claims and tails), the sockets in the workers. The
// primary runs in this process, so node:cluster's own `cluster.workers` shows the worker processes.

let db: TestDb;
before(async () => {
  db = await createTestDb('cluster');
});
after(async () => {
  await db.drop();
});

async function withCluster(workers: number, body: (server: TestCluster) => Promise<void>) {
  const server = await startCluster(db.url, workers);
  try {
    await waitUntil(() => workerPids().length === workers, `${workers} workers`);
    await body(server);
  } finally {
    await server.close();
  }
}

function workerPids(): number[] {
  return Object.values(cluster.workers ?? {}).flatMap((worker) =>
    worker?.isConnected() && worker.process.pid !== undefined ? [worker.process.pid] : [],
  );
}

/** The pid of the worker serving each stream, from the workers' stream.open log lines. */
function streamsPerWorker(server: TestCluster): Map<number, number> {
  const counts = new Map<number, number>();
  for (const entry of server.logs.events('stream.open')) {
    const pid = entry.worker as number;
    counts.set(pid, (counts.get(pid) ?? 0) + 1);
  }
  return counts;
}

/** Opens `n` streams and waits until the workers have logged them all. */
async function openStreams(server: TestCluster, n: number): Promise<StreamClient[]> {
  const before = server.logs.events('stream.open').length;
  const clients: StreamClient[] = [];
  for (let i = 0; i < n; i++) clients.push(await openStream(server.streamUrl));
  await waitUntil(
    () => server.logs.events('stream.open').length === before + n,
    'stream.open lines',
  );
  return clients;
}

const ids = (client: StreamClient) => client.messages().map((m) => m.id);

test('every worker gets every row: each stream sees each row once, in seq order', async () => {
  await withCluster(3, async (server) => {
    const clients = await openStreams(server, 12);
    await waitUntil(() => streamsPerWorker(server).size === 3, 'streams on all three workers');
    const inserted = await db.insert(...Array.from({ length: 30 }, (_, i) => `row ${i}`));
    for (const client of clients) await client.waitForIds(inserted);
    // Delivery contract 2: the one order of the table's seqs, on every stream of every worker.
    const order = assertGapFree(await tableRows(db)).filter((row) => inserted.includes(row.id));
    assert.deepEqual(
      order.map((row) => row.id),
      inserted,
    );
    for (const client of clients) assert.deepEqual(placedOf(client.text), order);
    const health = await getHealth(server.url);
    assert.equal(health.status, 200);
    await waitUntil(
      async () => (await getHealth(server.url)).body.streams === 12,
      '12 streams in /healthz',
    );
    for (const client of clients) client.close();
  });
});

test('the primary does not wait for a frozen worker; one that does not ack for 10 s is killed (worker.stuck) and replaced, and its clients resume from the table', {
  timeout: 90_000,
}, async () => {
  await withCluster(2, async (server) => {
    const clients = await openStreams(server, 6);
    await waitUntil(() => streamsPerWorker(server).size === 2, 'streams on both workers');
    const [before] = (await db.insert('before the freeze')) as [string];
    for (const client of clients) await client.waitForIds([before]);
    const [frozen, running] = workerPids() as [number, number];
    const served = streamsPerWorker(server).get(running) ?? 0;
    const during: string[] = [];
    process.kill(frozen, 'SIGSTOP');
    try {
      // (No request to the server while frozen: it could be handed to the frozen worker.)
      for (let i = 0; i < 3; i++) {
        const [id] = (await db.insert(`while frozen ${i}`)) as [string];
        during.push(id);
        // Batch after batch reaches the running worker's streams, long before the frozen worker
        // is given up on: nothing waits for its acknowledgement.
        await waitUntil(
          () => clients.filter((c) => ids(c).includes(id)).length === served,
          `row ${id} on the running worker's streams`,
        );
        assert.equal(server.logs.events('worker.stuck').length, 0, 'delivered before any kill');
      }
      const stuck = await server.logs.waitFor('worker.stuck', 30_000);
      assert.equal(stuck.worker, frozen);
      assert.ok(Number(stuck.batches) >= 1, 'it had batches not acknowledged');
      const exit = await server.logs.waitFor('worker.exit');
      assert.equal(exit.worker, frozen);
      assert.equal(exit.signal, 'SIGKILL');
    } finally {
      try {
        process.kill(frozen, 'SIGCONT');
      } catch {
        // killed already
      }
    }
    // The frozen worker's clients see their streams break; the others stay open, each row once.
    const gone = await waitUntil(() => {
      const ended = clients.filter((c) => c.res.destroyed || c.res.complete);
      return ended.length === clients.length - served && ended;
    }, "the frozen worker's streams to end");
    const open = clients.filter((c) => !gone.includes(c));
    for (const client of open) assert.deepEqual(ids(client), [before, ...during]);
    for (const client of gone) assert.deepEqual(ids(client), [before]);
    await waitUntil(
      () => workerPids().length === 2 && !workerPids().includes(frozen),
      'a replacement',
    );
    // Its clients resume from the last row they saw (delivery contract 3): exactly what they missed.
    const resumed: StreamClient[] = [];
    for (const _ of gone) {
      resumed.push(await openStream(new URL(`/stream?since=${before}`, server.url)));
    }
    for (const client of resumed) await client.waitForIds(during);
    const [after] = (await db.insert('after the replacement')) as [string];
    for (const client of [...open, ...resumed]) await client.waitForIds([after]);
    for (const client of open) assert.deepEqual(ids(client), [before, ...during, after]);
    for (const client of resumed) assert.deepEqual(ids(client), [...during, after]);
    assert.equal(server.logs.events('worker.stuck').length, 1);
    for (const client of [...clients, ...resumed]) client.close();
  });
});

test('a worker that dies is replaced; its clients can reconnect; nothing stalls', async () => {
  await withCluster(2, async (server) => {
    const clients = await openStreams(server, 6);
    await waitUntil(() => streamsPerWorker(server).size === 2, 'streams on both workers');
    const [victim, survivor] = workerPids() as [number, number];
    const survivors = streamsPerWorker(server).get(survivor) ?? 0;
    process.kill(victim, 'SIGKILL');
    const entry = await server.logs.waitFor('worker.exit');
    assert.equal(entry.signal, 'SIGKILL');
    assert.equal(entry.worker, victim, 'worker.exit names the pid, as the worker logs it');
    // The victim's clients see their stream break; the others stay open.
    await waitUntil(
      () => clients.filter((c) => c.res.destroyed || c.res.complete).length === 6 - survivors,
      "the victim's streams to end",
    );
    await waitUntil(
      () => workerPids().length === 2 && !workerPids().includes(victim),
      'a replacement',
    );
    const [id] = (await db.insert('after the crash')) as [string];
    const open = clients.filter((c) => !(c.res.destroyed || c.res.complete));
    assert.equal(open.length, survivors);
    for (const client of open) await client.waitForIds([id]);
    // A client that reconnects lands on some worker and gets the next rows.
    const again = await openStreams(server, 4);
    const [next] = (await db.insert('after reconnect')) as [string];
    for (const client of [...open, ...again]) {
      await client.waitForIds([next]);
      assert.equal(ids(client).filter((x) => x === next).length, 1);
    }
    for (const client of [...clients, ...again]) client.close();
  });
});
