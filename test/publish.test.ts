import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startApp, startCluster, type TestApp, withApp } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { withDbProxy } from './helpers/proxy.js';
import { openStream } from './helpers/stream.js';

// POST /messages: publishing over HTTP, every answer it can give.

const TOKEN = 'test-token-0123456789abcdef';
const AUTH = { Authorization: `Bearer ${TOKEN}` };
const JSON_TYPE = { 'Content-Type': 'application/json' };

let db: TestDb;
let app: TestApp;
before(async () => {
  db = await createTestDb('publish');
  // A one-minute interval: a published row that arrives at once was woken up, not polled.
  app = await startApp(db.url, {
    PUBLISH_TOKEN: TOKEN,
    POLL_INTERVAL_MS: '60000',
    MAX_CONTENT_BYTES: '100',
  });
});
after(async () => {
  await app.close();
  await db.drop();
});

async function post(
  body: BodyInit | null,
  headers: Record<string, string>,
  target: TestApp['url'] = app.url,
) {
  const res = await fetch(new URL('/messages', target), { method: 'POST', headers, body });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

async function rowCount(): Promise<number> {
  const [row] = await db.query<{ n: number }[]>('SELECT COUNT(*) AS n FROM msg');
  return Number(row?.n);
}

test('a JSON publish answers 201 with the id, and the row reaches open streams at once', async () => {
  const html = await openStream(app.streamUrl);
  const sse = await openStream(new URL('/events', app.url));
  const answer = await post(JSON.stringify({ content: 'hello <b>world</b>' }), {
    ...AUTH,
    ...JSON_TYPE,
  });
  assert.equal(answer.status, 201);
  assert.equal(answer.headers.get('content-type'), 'application/json');
  const { id } = JSON.parse(answer.text) as { id: number };
  assert.equal(typeof id, 'number');
  await html.waitForIds([String(id)]);
  await sse.waitForIds([String(id)]);
  assert.deepEqual(html.messages(), [{ id: String(id), html: 'hello &lt;b&gt;world&lt;/b&gt;' }]);
  // It went out as any inserted row does: claimed with a seq, which its frame carries.
  const [row] = await db.query<{ seq: unknown }[]>('SELECT seq FROM msg WHERE id = ?', [id]);
  assert.deepEqual(html.rows(), [{ id: String(id), seq: Number(row?.seq) }]);
  html.close();
  sse.close();
});

test('a form publish (content=…) answers 201 too', async () => {
  const client = await openStream(new URL('/stream.ndjson', app.url));
  const answer = await post(new URLSearchParams({ content: 'from a form & more' }), AUTH);
  assert.equal(answer.status, 201);
  const { id } = JSON.parse(answer.text) as { id: number };
  await client.waitForIds([String(id)]);
  assert.match(client.text, /"content":"from a form & more"/);
  client.close();
});

test('without the right bearer token: 401 with WWW-Authenticate, nothing inserted', async () => {
  const before = await rowCount();
  const body = JSON.stringify({ content: 'nope' });
  const attempts: Record<string, string>[] = [
    {},
    { Authorization: 'Bearer wrong-token-0123456789abcdef' },
    { Authorization: `Bearer ${TOKEN}x` },
    { Authorization: `Basic ${Buffer.from(`u:${TOKEN}`).toString('base64')}` },
    { Authorization: TOKEN },
  ];
  for (const headers of attempts) {
    const answer = await post(body, { ...headers, ...JSON_TYPE });
    assert.equal(answer.status, 401, JSON.stringify(headers));
    assert.equal(answer.headers.get('www-authenticate'), 'Bearer realm="rowcast"');
  }
  assert.equal(await rowCount(), before);
});

test('bad bodies get 400 or 415 with a line saying why; nothing inserted', async () => {
  const before = await rowCount();
  const cases: [BodyInit, Record<string, string>, number, RegExp][] = [
    ['content=x', { 'Content-Type': 'text/plain' }, 415, /application\/json/],
    ['--b\r\n\r\n', { 'Content-Type': 'multipart/form-data; boundary=b' }, 415, /form-urlencoded/],
    ['{"content": "x"', JSON_TYPE, 400, /not JSON/],
    ['{"text": "x"}', JSON_TYPE, 400, /"content"/],
    ['{"content": 5}', JSON_TYPE, 400, /string/],
    ['null', JSON_TYPE, 400, /"content"/],
    ['{"content": ""}', JSON_TYPE, 400, /empty/],
    [Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), JSON_TYPE, 400, /UTF-8/],
    ['text=x', { 'Content-Type': 'application/x-www-form-urlencoded' }, 400, /content/],
  ];
  for (const [body, headers, status, why] of cases) {
    const answer = await post(body, { ...AUTH, ...headers });
    assert.equal(answer.status, status, `${headers['Content-Type']} ${String(body)}`);
    assert.match(answer.text, why);
  }
  assert.equal(await rowCount(), before);
});

test('content over MAX_CONTENT_BYTES, or a body far over it, gets 413; nothing inserted', async () => {
  const before = await rowCount();
  // 100 bytes pass, 101 do not (MAX_CONTENT_BYTES=100); é is two bytes.
  const fits = await post(JSON.stringify({ content: 'é'.repeat(50) }), { ...AUTH, ...JSON_TYPE });
  assert.equal(fits.status, 201);
  const over = await post(JSON.stringify({ content: `${'é'.repeat(50)}x` }), {
    ...AUTH,
    ...JSON_TYPE,
  });
  assert.equal(over.status, 413);
  assert.match(over.text, /101 bytes; MAX_CONTENT_BYTES is 100/);
  const huge = await post(JSON.stringify({ content: 'x'.repeat(1_000_000) }), {
    ...AUTH,
    ...JSON_TYPE,
  });
  assert.equal(huge.status, 413);
  assert.equal(huge.headers.get('connection'), 'close');
  assert.equal(await rowCount(), before + 1);
});

test('with PUBLISH_TOKEN unset, POST /messages answers 403 and says how to turn it on', async () => {
  await withApp(db.url, {}, async (plain) => {
    const answer = await post(
      JSON.stringify({ content: 'x' }),
      { ...AUTH, ...JSON_TYPE },
      plain.url,
    );
    assert.equal(answer.status, 403);
    assert.match(answer.text, /PUBLISH_TOKEN/);
    const get = await fetch(new URL('/messages', plain.url));
    assert.equal(get.status, 405);
    assert.equal(get.headers.get('allow'), 'POST');
    await get.body?.cancel();
  });
});

test('while the database is unreachable a publish gets 503 with Retry-After', {
  timeout: 60_000,
}, async () => {
  await withDbProxy(async (proxy) => {
    await withApp(proxy.url(db.name), { PUBLISH_TOKEN: TOKEN }, async (cut) => {
      proxy.cut();
      const answer = await post(
        JSON.stringify({ content: 'x' }),
        { ...AUTH, ...JSON_TYPE },
        cut.url,
      );
      assert.equal(answer.status, 503);
      assert.equal(answer.headers.get('retry-after'), '5');
      await cut.logs.waitFor('publish.failed');
      proxy.restore();
      const later = await post(
        JSON.stringify({ content: 'y' }),
        { ...AUTH, ...JSON_TYPE },
        cut.url,
      );
      assert.equal(later.status, 201);
      // Claimed before this app goes: left at flag = 0 it would reach the next test's streams.
      await db.waitMarked([String((JSON.parse(later.text) as { id: number }).id)], 30_000);
    });
  });
});

test('with WORKERS=2 a publish through any worker reaches the streams of all of them', {
  timeout: 60_000,
}, async () => {
  const cluster = await startCluster(db.url, 2, {
    PUBLISH_TOKEN: TOKEN,
    POLL_INTERVAL_MS: '60000',
  });
  try {
    const clients = await Promise.all(
      Array.from({ length: 4 }, () => openStream(new URL('/events', cluster.url))),
    );
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const answer = await post(
        JSON.stringify({ content: `via worker ${i}` }),
        {
          ...AUTH,
          ...JSON_TYPE,
        },
        cluster.url,
      );
      assert.equal(answer.status, 201);
      ids.push(String((JSON.parse(answer.text) as { id: number }).id));
    }
    for (const client of clients) {
      await client.waitForIds(ids);
      assert.deepEqual(client.ids(), ids);
      client.close();
    }
    const pids = new Set(cluster.logs.events('publish.accepted').map((entry) => entry.pid));
    assert.equal(pids.size, 2, 'publishes were answered by both workers');
  } finally {
    await cluster.close();
  }
});

test('a publish wakes a tick that claims at once: INSERT, then the claim and its tail, no pending check between', {
  timeout: 60_000,
}, async () => {
  await withDbProxy(async (proxy) => {
    await withApp(
      proxy.url(db.name),
      { PUBLISH_TOKEN: TOKEN, POLL_INTERVAL_MS: '60000' },
      async (woken) => {
        await woken.app.tailer.pollOnce(); // after the tick start() ran: the cursor is known
        const stream = await openStream(new URL('/stream.ndjson', woken.url));
        try {
          const from = proxy.queries.length;
          const answer = await post(
            JSON.stringify({ content: 'woken' }),
            { ...AUTH, ...JSON_TYPE },
            woken.url,
          );
          assert.equal(answer.status, 201);
          const { id } = JSON.parse(answer.text) as { id: number };
          await stream.waitForIds([String(id)]);
          const sent = proxy.queries.slice(from).map((sql) => sql.slice(0, 40));
          assert.equal(sent.length, 4, sent.join('\n'));
          assert.match(sent[0] as string, /^INSERT INTO/);
          assert.match(sent[1] as string, /^SET TRANSACTION ISOLATION LEVEL/);
          assert.match(sent[2] as string, /^UPDATE `msg` SET flag = 1/);
          assert.match(sent[3] as string, /^COMMIT;\nSELECT b\.id/);
        } finally {
          stream.close();
        }
      },
    );
  });
});
