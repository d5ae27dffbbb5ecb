import assert from 'node:assert/strict';
import cluster from 'node:cluster';
import { after, before, test } from 'node:test';
import { startCluster, type TestCluster } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { getHealth } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// WORKERS > 1: one poller in the primary, the sockets in the workers. The primary runs in this
// process, so node:cluster's own `cluster.workers` shows the worker processes.

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

test('every worker gets every row: each stream sees each row once, in order; then marked', async () => {
  await withCluster(3, async (server) => {
    const clients = await openStreams(server, 12);
    await waitUntil(() => streamsPerWorker(server).size === 3, 'streams on all three workers');
    const inserted = await db.insert(...Array.from({ length: 30 }, (_, i) => `row ${i}`));
    for (const client of clients) await client.waitForIds(inserted);
    for (const client of clients) assert.deepEqual(ids(client), inserted);
    await db.waitMarked(inserted);
    const health = await getHealth(server.url);
    assert.equal(health.status, 200);
    await waitUntil(
      async () => (await getHealth(server.url)).body.streams === 12,
      '12 streams in /healthz',
    );
    for (const client of clients) client.close();
  });
});

test('a row is marked only after every worker has written it', async () => {
  await withCluster(2, async (server) => {
    const clients = await openStreams(server, 6);
    await waitUntil(() => streamsPerWorker(server).size === 2, 'streams on both workers');
    const [frozen, running] = workerPids() as [number, number];
    process.kill(frozen, 'SIGSTOP');
    try {
      const [id] = (await db.insert('waits for the frozen worker')) as [string];
      // The running worker's streams get the row; the batch stays unmarked.
      const served = streamsPerWorker(server).get(running) ?? 0;
      await waitUntil(
        () => clients.filter((c) => ids(c).includes(id)).length === served,
        'the row on the running worker',
      );
      // (No request to the server here: it could be handed to the frozen worker.)
      assert.equal((await db.flags()).get(id), 0, 'not marked while a worker has not written it');
    } finally {
      process.kill(frozen, 'SIGCONT');
    }
    await waitUntil(async () => (await db.flags()).get(String(await lastId())) === 1, 'the mark');
    for (const client of clients) {
      await client.waitForIds([String(await lastId())]);
      assert.equal(ids(client).length, 1, 'each stream got the row once');
      client.close();
    }
  });
});

async function lastId(): Promise<number> {
  const [row] = await db.query<{ id: string }[]>('SELECT MAX(id) AS id FROM msg');
  return Number(row?.id);
}

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
    await waitUntil(async () => (await db.flags()).get(next) === 1, 'the mark');
    for (const client of [...clients, ...again]) client.close();
  });
});
