import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { startApp, type TestApp, withApp } from './helpers/app.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { withDbProxy } from './helpers/proxy.js';
import { request as requestUrl } from './helpers/request.js';
import { openStream } from './helpers/stream.js';
import { getHealth, tcpSockets, waitForSockets } from './helpers/unstarted.js';
import { waitUntil } from './helpers/wait.js';

// The HTTP surface (routes, methods, headers, health and readiness, shutdown), on real sockets.

let db: TestDb;
let server: TestApp;
before(async () => {
  db = await createTestDb('http');
  server = await startApp(db.url, { PAD_BYTES: '300', HEARTBEAT_MS: '3600000' });
});
after(async () => {
  await server.close();
  await db.drop();
});

function request(path: string, method = 'GET') {
  return requestUrl(new URL(path, server.url), method);
}

/** The seq the claim gave row `id` (docs/delivery.md 1), once it has one. */
function seqOf(id: string): Promise<number> {
  return waitUntil(async () => {
    const [row] = await db.query<{ seq: unknown }[]>('SELECT seq FROM msg WHERE id = ?', [id]);
    return row?.seq === null || row?.seq === undefined ? undefined : Number(row.seq);
  }, `a seq for row ${id}`);
}

/** The last seq claimed from msg, by its counter row. */
async function lastSeq(): Promise<number> {
  const [row] = await db.query<{ next_seq: unknown }[]>(
    "SELECT next_seq FROM rowcast_state WHERE tbl = 'msg'",
  );
  return Number(row?.next_seq) - 1;
}

/** Sends `head` on a raw socket and collects everything the server answers. */
function rawClient(head: string, url: URL = server.url) {
  const socket = net.connect(Number(url.port), url.hostname);
  socket.write(head);
  let received = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    received += chunk;
  });
  // Closed either way: a clean end, or a reset (the server dropping a connection it closed).
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return {
    get received() {
      return received;
    },
    closed,
    socket,
  };
}

/**
 * Writes `line(i)` on `socket` every `everyMs`, `times` times at most or until the socket is
 * gone, as a slow or insistent client would; returns what stops it.
 */
function keepWriting(
  socket: net.Socket,
  everyMs: number,
  times: number,
  line: (i: number) => string,
): () => void {
  let i = 0;
  const timer = setInterval(() => {
    if (socket.destroyed || i >= times) return clearInterval(timer);
    socket.write(line(i++));
  }, everyMs);
  return () => clearInterval(timer);
}

const STREAM_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  'x-accel-buffering': 'no',
  'x-content-type-options': 'nosniff',
};

test('GET /stream answers 200 with the streaming headers, chunked, and an HTML preamble', async (t) => {
  const client = await openStream(server.streamUrl);
  t.after(() => client.close());
  assert.equal(client.res.statusCode, 200);
  for (const [name, value] of Object.entries(STREAM_HEADERS)) {
    assert.equal(client.res.headers[name], value, name);
  }
  assert.equal(client.res.headers['transfer-encoding'], 'chunked');
  assert.equal(client.res.headers['content-length'], undefined);
  await client.waitFor((text) => text.includes('<body>'), 'the preamble');
  assert.match(client.text, /^<!doctype html>\n<html lang="en"><head><meta charset="utf-8">/);
  // PAD_BYTES of padding, once, in the preamble only.
  assert.match(client.text, /<!-- {292}-->\n$/);
  const [id] = await db.insert('first', 'second');
  await client.waitForIds([id as string, String(Number(id) + 1)]);
  assert.equal(client.text.match(/<!--/g)?.length, 1, 'no padding per message');
});

test('a query string does not change the route', async (t) => {
  const client = await openStream(new URL('/stream?room=1', server.url));
  t.after(() => client.close());
  assert.equal(client.res.statusCode, 200);
});

test('HEAD /stream has the same headers and no body', async () => {
  await waitUntil(() => server.app.hub.size === 0, 'streams of earlier tests to close');
  const answer = await request('/stream', 'HEAD');
  assert.equal(answer.status, 200);
  for (const [name, value] of Object.entries(STREAM_HEADERS)) {
    assert.equal(answer.headers[name], value, name);
  }
  assert.equal(answer.body, '');
  assert.equal(server.app.hub.size, 0, 'HEAD opens no stream');
});

test('GET /healthz answers 200 with JSON while polling works, at the last seq', async (t) => {
  const client = await openStream(server.streamUrl);
  t.after(() => client.close());
  const [id] = (await db.insert('for the health check')) as [string];
  await client.waitForIds([id]);
  // The row reached the stream: the cursor is at its seq, the last one claimed.
  const seq = await seqOf(id);
  assert.equal(await lastSeq(), seq);
  const answer = await request('/healthz');
  assert.equal(answer.status, 200);
  assert.equal(answer.headers['content-type'], 'application/json');
  const body = JSON.parse(answer.body);
  assert.deepEqual(Object.keys(body).sort(), [
    'failures',
    'lagRows',
    'lastPollAgeMs',
    'poll',
    'seq',
    'status',
    'streams',
  ]);
  assert.equal(body.status, 'ok');
  assert.equal(body.poll, 'ok');
  assert.equal(typeof body.lastPollAgeMs, 'number');
  assert.equal(body.failures, 0);
  assert.equal(body.seq, seq);
  assert.equal(body.lagRows, 0);
  assert.equal(typeof body.streams, 'number');
});

test('GET /readyz answers 200 with JSON while the tailer works', async () => {
  const answer = await request('/readyz');
  assert.equal(answer.status, 200);
  assert.equal(answer.headers['content-type'], 'application/json');
  const body = JSON.parse(answer.body);
  assert.equal(body.status, 'ready');
  assert.equal(body.poll, 'ok');
  assert.equal(body.seq, await lastSeq());
  assert.equal(typeof body.streams, 'number');
  const head = await request('/readyz', 'HEAD');
  assert.equal(head.status, 200);
  assert.equal(head.body, '');
});

test('GET /readyz answers 503 during shutdown, while the streams take their closing frame', async () => {
  const token = 'readyz-test-token-0123456789';
  const app = await startApp(db.url, { PUBLISH_TOKEN: token });
  const stream = await openStream(app.streamUrl);
  // A connection the shutdown cannot drop as idle: a publish whose body the server waits for
  // (its 100 Continue says the request is in), with a /readyz to follow on the same connection.
  const client = rawClient(
    'POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
      `Authorization: Bearer ${token}\r\nContent-Length: 15\r\nExpect: 100-continue\r\n\r\n`,
    app.url,
  );
  try {
    await waitUntil(() => client.received.startsWith('HTTP/1.1 100 Continue\r\n\r\n'), '100');
    const closing = app.close();
    // The stream got its closing frame: shutdown has begun.
    await stream.ended;
    assert.match(stream.text, /<!-- rowcast: server shutting down -->\n<\/body><\/html>\n$/);
    // An empty content (400, nothing inserted) ends the publish; then the /readyz.
    client.socket.write('{"content": ""}GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n');
    await client.closed;
    const answers = client.received.split(/(?=HTTP\/1\.1 )/);
    assert.equal(answers.length, 3, client.received);
    assert.match(answers[1] as string, /^HTTP\/1\.1 400 /);
    const ready = answers[2] as string;
    assert.match(ready, /^HTTP\/1\.1 503 /);
    assert.match(ready, /\r\nContent-Type: application\/json\r\n/i);
    assert.match(ready, /\r\nConnection: close\r\n/i);
    const body = JSON.parse(ready.slice(ready.indexOf('\r\n\r\n') + 4));
    assert.equal(body.status, 'closing');
    await closing;
  } finally {
    client.socket.destroy();
    stream.close();
    await app.close();
  }
});

test('GET /readyz and /healthz answer 503 while the database is cut, 200 once it is back', {
  timeout: 60_000,
}, async () => {
  const sockets = tcpSockets();
  await withDbProxy(async (proxy) => {
    await withApp(proxy.url(db.name), {}, async (app) => {
      // Ready once the first tick has run.
      await waitUntil(async () => (await getHealth(app.url, '/readyz')).status === 200, 'ready');
      proxy.cut();
      const down = await waitUntil(async () => {
        const ready = await getHealth(app.url, '/readyz');
        return ready.status === 503 && ready;
      }, '/readyz to turn 503');
      assert.equal(down.body.status, 'unavailable');
      assert.equal(down.body.poll, 'failing');
      assert.equal((await getHealth(app.url)).status, 503);
      proxy.restore();
      const up = await waitUntil(
        async () => {
          const ready = await getHealth(app.url, '/readyz');
          return ready.status === 200 && ready;
        },
        '/readyz to turn 200 again',
        30_000,
      );
      assert.equal(up.body.status, 'ready');
    });
    await waitForSockets(sockets); // before the proxy closes (see waitForSockets)
  });
});

test('unknown paths get 404 with a small plain-text body', async () => {
  for (const path of ['/nope', '/stream/extra', '/STREAM', '/events/', '/index.html']) {
    const answer = await request(path);
    assert.equal(answer.status, 404, path);
    assert.equal(answer.headers['content-type'], 'text/plain; charset=utf-8');
    assert.equal(answer.body, 'not found\n');
  }
});

test('other methods get 405 with Allow', async () => {
  for (const [path, method] of [
    ['/stream', 'POST'],
    ['/stream', 'DELETE'],
    ['/healthz', 'PUT'],
  ] as const) {
    const answer = await request(path, method);
    assert.equal(answer.status, 405, `${method} ${path}`);
    assert.equal(answer.headers.allow, 'GET, HEAD');
    assert.equal(answer.body, 'method not allowed\n');
  }
});

test('malformed requests get a 4xx, and the server keeps serving', async () => {
  const garbage = rawClient('HELLO THERE\r\n\r\n');
  await garbage.closed;
  assert.match(garbage.received, /^HTTP\/1\.1 400 /);
  const star = rawClient('OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  await star.closed;
  assert.match(star.received, /^HTTP\/1\.1 400 /);
  const absolute = rawClient(
    `GET http://x/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
  );
  await absolute.closed;
  assert.match(absolute.received, /^HTTP\/1\.1 200 /);
  assert.equal((await request('/healthz')).status, 200);
});

test('an HTTP/1.0 client gets a close-delimited body that still streams', async (t) => {
  const client = rawClient('GET /stream HTTP/1.0\r\n\r\n');
  t.after(() => client.socket.destroy());
  await waitUntil(() => client.received.includes('<body>'), 'the preamble');
  const head = client.received.slice(0, client.received.indexOf('\r\n\r\n'));
  assert.match(head, /^HTTP\/1\.1 200 OK/);
  assert.match(head, /\r\nConnection: close/i);
  assert.doesNotMatch(head, /Transfer-Encoding/i);
  assert.doesNotMatch(head, /Content-Length/i);
  const [id] = (await db.insert('for an old client')) as [string];
  const fragment = `<div class="msg" data-id="${id}" data-seq="${await seqOf(id)}">for an old client</div>\n`;
  await waitUntil(() => client.received.includes(fragment), 'the row on the HTTP/1.0 stream');
  // No chunk-size lines: the fragment follows the preamble as plain bytes.
  assert.doesNotMatch(client.received.slice(head.length + 4), /\r\n[0-9a-f]+\r\n/);
});

test('a disconnecting client leaves the hub at once', async () => {
  await waitUntil(() => server.app.hub.size === 0, 'streams of earlier tests to close');
  const client = await openStream(server.streamUrl);
  await waitUntil(() => server.app.hub.size === 1, 'the stream in the hub');
  client.close();
  await waitUntil(() => server.app.hub.size === 0, 'the stream to leave the hub');
});

test('a stream asked for on a kept-alive connection is served by node:http alike', async (t) => {
  // The front serves only the first request of a connection; later ones reach node:http.
  const client = rawClient('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
  t.after(() => client.socket.destroy());
  await waitUntil(() => client.received.includes('"status":"ok"'), 'the healthz answer');
  client.socket.write('GET /stream HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitUntil(() => client.received.includes('<body>'), 'the preamble');
  const second = client.received.slice(client.received.indexOf('HTTP/1.1 200 OK', 10));
  assert.match(second, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(second, /\r\nContent-Type: text\/html; charset=utf-8\r\n/i);
  assert.match(second, /\r\nTransfer-Encoding: chunked\r\n/i);
  const [id] = (await db.insert('via node:http')) as [string];
  const fragment = `<div class="msg" data-id="${id}" data-seq="${await seqOf(id)}">via node:http</div>\n`;
  await waitUntil(() => client.received.includes(fragment), 'the row on the kept-alive connection');
});

test('GET / serves the demo page as HTML with a restrictive Content-Security-Policy', async () => {
  const answer = await request('/');
  assert.equal(answer.status, 200);
  assert.equal(answer.headers['content-type'], 'text/html; charset=utf-8');
  assert.match(String(answer.headers['content-security-policy']), /default-src 'self'/);
  assert.match(answer.body, /<!doctype html>/i);
  assert.match(answer.body, /\/events/);
});

test('without ALLOW_ORIGIN streams carry no CORS header and OPTIONS is not allowed', async () => {
  const res = await fetch(new URL('/events', server.url), {
    headers: { Origin: 'https://a.example' },
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('access-control-allow-origin'), null);
  await res.body?.cancel();
  const options = await request('/events', 'OPTIONS');
  assert.equal(options.status, 405);
});

test('ALLOW_ORIGIN: listed origins are echoed on every stream route and preflights answer', async () => {
  const app = await startApp(db.url, { ALLOW_ORIGIN: 'https://a.example,http://b.example:8080' });
  try {
    for (const path of ['/stream', '/events', '/stream.ndjson']) {
      for (const [origin, allowed] of [
        ['https://a.example', 'https://a.example'],
        ['http://b.example:8080', 'http://b.example:8080'],
        ['https://evil.example', null],
      ] as const) {
        // Both ways in: GET is served on the bare socket, HEAD by node:http.
        for (const method of ['GET', 'HEAD']) {
          const res = await fetch(new URL(`${path}?since=0`, app.url), {
            method,
            headers: { Origin: origin },
          });
          assert.equal(res.status, 200);
          const what = `${method} ${path} from ${origin}`;
          assert.equal(res.headers.get('access-control-allow-origin'), allowed, what);
          assert.equal(res.headers.get('vary'), 'Origin');
          await res.body?.cancel();
        }
      }
      const preflight = await fetch(new URL(path, app.url), {
        method: 'OPTIONS',
        headers: {
          Origin: 'https://a.example',
          'Access-Control-Request-Method': 'GET',
          'Access-Control-Request-Headers': 'last-event-id',
        },
      });
      assert.equal(preflight.status, 204);
      assert.equal(preflight.headers.get('access-control-allow-origin'), 'https://a.example');
      assert.match(preflight.headers.get('access-control-allow-headers') ?? '', /Last-Event-ID/);
    }
  } finally {
    await app.close();
  }
  const any = await startApp(db.url, { ALLOW_ORIGIN: '*' });
  try {
    const res = await fetch(new URL('/events', any.url), {
      headers: { Origin: 'https://x.example' },
    });
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
    await res.body?.cancel();
  } finally {
    await any.close();
  }
});

test('at shutdown a connection that has not sent its request yet is dropped, not waited for', async () => {
  const app = await startApp(db.url);
  const socket = net.connect(Number(app.url.port), app.url.hostname);
  await once(socket, 'connect');
  socket.write('GET /stre'); // half a request line
  let closed = false;
  socket.on('close', () => {
    closed = true;
  });
  socket.on('error', () => undefined);
  const closing = app.close();
  // The head timeout is 10 s: well before it, the server has let go of the socket.
  await waitUntil(() => closed, 'the half-open connection dropped', 5_000);
  await closing;
});

test('a request head trickling in on a kept-alive connection is cut by the header timeout', {
  timeout: 60_000,
}, async () => {
  // The first request is read by the front; the second one reaches node:http, whose 10 s
  // header timeout must hold there too (slowloris: a header line a second, never the end).
  const client = rawClient('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitUntil(() => client.received.includes('"status"'), 'the first answer');
  client.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
  const stop = keepWriting(client.socket, 1000, 30, (i) => `X-Slow-${i}: 1\r\n`);
  try {
    // The timeout is checked every second: cut after about 11 s, before the 30 lines end.
    await waitUntil(() => client.socket.destroyed, 'the connection cut', 30_000);
  } finally {
    stop();
  }
  assert.match(client.received.slice(client.received.lastIndexOf('HTTP/1.1')), /^HTTP\/1\.1 408 /);
});

test('at shutdown a client asking again and again on a kept-alive connection does not hold the close', {
  timeout: 60_000,
}, async () => {
  const app = await startApp(db.url);
  const client = rawClient('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n', app.url);
  await waitUntil(() => client.received.includes('"status"'), 'the first answer');
  let closed = false;
  const closing = app.close().then(() => {
    closed = true;
  });
  // A browser retrying on the same connection every 200 ms, for 20 s at most.
  const stop = keepWriting(
    client.socket,
    200,
    100,
    () => 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n',
  );
  try {
    await waitUntil(() => closed, 'the close, while the client keeps asking', 10_000);
  } finally {
    stop();
  }
  await client.closed;
  await closing;
});

test('GET /favicon.ico answers 204, so browsers log no error', async () => {
  const answer = await request('/favicon.ico');
  assert.equal(answer.status, 204);
  assert.equal(answer.body, '');
});
