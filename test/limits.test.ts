import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type TestApp, withApp } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { connectRaw, openTally, type RawClient, STREAM_REQUEST } from './helpers/raw.js';
import { request as get } from './helpers/request.js';
import { openStream, type StreamClient } from './helpers/stream.js';
import { waitUntil } from './helpers/wait.js';

// Bounded resources (docs/delivery.md 6) and the heartbeat, on real sockets.

let db: TestDb;
before(async () => {
  db = await createTestDb('limits');
});
after(async () => {
  await db.drop();
});

async function healthStreams(app: TestApp): Promise<unknown> {
  const answer = await get(new URL('/healthz', app.url));
  return (JSON.parse(answer.body) as { streams: unknown }).streams;
}

/** Open TCP sockets of this process, both ends of every loopback connection included. */
function tcpSockets(): number {
  return process.getActiveResourcesInfo().filter((name) => name === 'TCPSocketWrap').length;
}

const HEARTBEAT = '<!-- -->\n';
const PREAMBLE_END = '<body>\n';

function afterPreamble(text: string): string {
  const at = text.indexOf(PREAMBLE_END);
  return at === -1 ? '' : text.slice(at + PREAMBLE_END.length);
}

test('an idle stream gets the heartbeat comment every HEARTBEAT_MS and stays open', async () => {
  await withApp(db.url, { HEARTBEAT_MS: '100' }, async (app) => {
    const client = await openStream(app.streamUrl);
    try {
      await client.waitFor(
        (text) => afterPreamble(text).split(HEARTBEAT).length - 1 >= 3,
        'three heartbeats after the preamble',
      );
      assert.match(afterPreamble(client.text), /^(<!-- -->\n)+$/, 'nothing but heartbeats');
      assert.equal(client.res.complete, false);
      assert.equal(app.app.hub.size, 1);
      const [id] = await db.insert('after the heartbeats');
      await client.waitForIds([id as string]);
    } finally {
      client.close();
    }
  });
});

// Ways a client leaves a stream. Each resolves once the client's socket is closed.
const LEAVES: readonly ((app: TestApp) => Promise<void>)[] = [
  async function httpClientDestroysAfterPreamble(app) {
    const client = await openStream(app.streamUrl);
    await client.waitFor((text) => text.includes(PREAMBLE_END), 'the preamble');
    // Not once(): the response also emits 'error' (aborted), which would reject it.
    const gone = new Promise((resolve) => client.res.once('close', resolve));
    client.close();
    await gone;
  },
  async function finAfterPreamble(app) {
    const client = connectRaw(app.url, STREAM_REQUEST);
    try {
      await client.waitFor((text) => text.includes(PREAMBLE_END), 'the preamble');
      client.socket.end();
      // The server closes its side in answer to the client's FIN.
      await client.waitClosed('the server to close after the client FIN');
    } finally {
      client.socket.destroy();
    }
  },
  async function resetAfterPreamble(app) {
    const client = connectRaw(app.url, STREAM_REQUEST);
    await client.waitFor((text) => text.includes(PREAMBLE_END), 'the preamble');
    client.socket.resetAndDestroy();
    await client.waitClosed('the socket to close');
  },
  async function destroyRightAfterRequest(app) {
    const client = connectRaw(app.url, STREAM_REQUEST);
    await client.sent;
    client.socket.destroy();
    await client.waitClosed('the socket to close');
  },
  async function resetAfterRequestLine(app) {
    const client = connectRaw(app.url, 'GET /stream HTTP/1.1\r\n');
    await client.sent;
    client.socket.resetAndDestroy();
    await client.waitClosed('the socket to close');
  },
  async function finAfterRequestLine(app) {
    const client = connectRaw(app.url, 'GET /stream HTTP/1.1\r\n');
    try {
      await client.sent;
      client.socket.end();
      await client.waitClosed('the server to close a half request after the client FIN');
    } finally {
      client.socket.destroy();
    }
  },
];

test('1,000 connects and disconnects of every kind leave no stream and no socket behind', async () => {
  await withApp(db.url, {}, async (app) => {
    const baseline = tcpSockets();
    const cycles = 1000;
    const wave = 50;
    for (let start = 0; start < cycles; start += wave) {
      await Promise.all(
        Array.from({ length: wave }, (_, i) => {
          const leave = LEAVES[(start + i) % LEAVES.length];
          return leave?.(app);
        }),
      );
    }
    await waitUntil(() => app.app.hub.size === 0, 'the hub to hold no stream');
    assert.equal(await healthStreams(app), 0);
    assert.equal(
      app.logs.events('stream.open').length,
      app.logs.events('stream.close').length,
      'every stream that opened was removed',
    );
    await waitUntil(() => tcpSockets() <= baseline, `open TCP sockets back to ${baseline}`);

    const client = await openStream(app.streamUrl);
    try {
      const [id] = await db.insert('after the churn');
      await client.waitForIds([id as string]);
      assert.equal(app.app.hub.size, 1);
    } finally {
      client.close();
    }
  });
});

test('over MAX_STREAMS a new stream gets 503 with Retry-After; the open streams carry on', async () => {
  await withApp(db.url, { MAX_STREAMS: '3' }, async (app) => {
    const open: StreamClient[] = [];
    try {
      for (let i = 0; i < 3; i++) open.push(await openStream(app.streamUrl));
      assert.equal(app.app.hub.size, 3);
      for (let i = 0; i < 2; i++) {
        const refused = await get(app.streamUrl);
        assert.equal(refused.status, 503);
        assert.match(refused.headers['retry-after'] ?? '', /^[1-9]\d*$/);
        assert.match(refused.headers['content-type'] ?? '', /^text\/plain/);
        assert.ok(refused.body.length > 0 && refused.body.length < 200, 'a small body');
      }
      // Logged when the limit is reached, not once per refused client.
      assert.equal(app.logs.events('stream.rejected').length, 1);
      assert.equal(app.app.hub.size, 3);
      const [id] = await db.insert('after the refusals');
      for (const client of open) await client.waitForIds([id as string]);

      const leaving = open.shift() as StreamClient;
      leaving.close();
      await waitUntil(() => app.app.hub.size === 2, 'the closed stream to leave the hub');
      const again = await openStream(app.streamUrl);
      open.push(again);
      assert.equal(again.res.statusCode, 200);
      const [next] = await db.insert('after a stream left');
      for (const client of open) await client.waitForIds([next as string]);
      assert.deepEqual(
        open[0]?.messages().map((m) => m.id),
        [id, next],
      );
    } finally {
      for (const client of open) client.close();
    }
  });
});

test('a client that stops reading is cut off; a reading client gets every row, in order, once', async () => {
  const ROW_BYTES = 200_000;
  const ROWS_PER_TICK = 5;
  const MAX_TICKS = 60; // 60 MB, far beyond loopback socket buffers (about 6 MB here)
  const content = (n: number) => `row ${n} `.padEnd(ROW_BYTES, 'x');
  // No heartbeat during the test: every write to the streams is a batch the test waits for.
  await withApp(db.url, { MAX_BUFFERED_BYTES: '65536', HEARTBEAT_MS: '3600000' }, async (app) => {
    let stalled: RawClient | undefined;
    const reader = await openTally(app.streamUrl);
    try {
      stalled = connectRaw(app.url, STREAM_REQUEST);
      await stalled.waitFor((text) => text.includes(PREAMBLE_END), 'the stalled preamble');
      stalled.socket.pause();
      await waitUntil(() => app.app.hub.size === 2, 'both streams in the hub');

      // Batches go out one at a time, each once the reader has it all, until the stalled stream
      // has been cut and two more batches have followed.
      const ids: string[] = [];
      let afterCut = 0;
      for (let tick = 0; tick < MAX_TICKS && afterCut < 2; tick++) {
        const rows = Array.from({ length: ROWS_PER_TICK }, (_, i) => content(ids.length + i));
        ids.push(...(await db.insert(...rows)));
        await reader.waitForCount(ids.length, 30_000);
        if (app.logs.events('stream.cut').length > 0) afterCut++;
      }

      const cuts = app.logs.events('stream.cut');
      assert.equal(cuts.length, 1, 'the stalled stream is cut once');
      assert.ok(Number(cuts[0]?.buffered) > 65_536);
      assert.equal(app.app.hub.size, 1);

      assert.deepEqual(
        reader.messages.map((m) => m.id),
        ids,
      );
      reader.messages.forEach((m, n) => {
        assert.equal(m.length, ROW_BYTES, `row ${n} whole`);
        assert.ok(m.head.startsWith(`row ${n} x`), `row ${n} content`);
      });

      // The server closed the stalled connection: reading again drains what the kernel held,
      // then the connection ends.
      stalled.socket.resume();
      await stalled.waitClosed('the stalled connection to close', 30_000);
      assert.ok(
        !stalled.text.includes(`data-id="${ids.at(-1)}"`),
        'no row after the cut reached it',
      );
      assert.equal(reader.res.complete, false, 'the reader is still streaming');
    } finally {
      stalled?.socket.destroy();
      reader.close();
    }
  });
});
