import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type JWTPayload, SignJWT } from 'jose';
import {
  type Browser,
  type BrowserContext,
  chromium,
  type Page,
  type Route,
} from 'playwright-core';
import type { TestApp } from './helpers/app.js';
import { CHROMIUM, withContext } from './helpers/browser.js';
import { createTestDb, type TestDb } from './helpers/db.js';
import { waitUntil } from './helpers/wait.js';

// Subscriber tokens in a real Chromium (issue 10): an EventSource page, served from the server's
// own origin, reads its channel with the rowcast_token cookie or ?access_token=, and when its
// token expires it reconnects with a fresh one and gets the rows it missed exactly once
// (docs/delivery.md 3).

// Every wait: EventSource retries 2 s after a stream ends (the stream's `retry:`), a token is
// checked once a second, and a slow CI machine must not fail the test.
const WITHIN_MS = 20_000;
const SECRET = 'a-browser-test-secret-longer-than-32-bytes';
const SECRET_BYTES = new TextEncoder().encode(SECRET);
const ENV = { SUBSCRIBER_JWT_KEY: SECRET };
const PAGE_PATH = '/auth-page.html';

// The page an application would serve next to rowcast (same origin, so the cookie goes with the
// stream). follow(url) opens an EventSource; followWithTokens(channel) is a page whose token lives
// in its URL: when the stream is refused (its token expired) it asks its backend (/token) for a
// fresh one and resumes after the last row it got (?since=).
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>rowcast auth</title></head><body>
<script>
window.seen = [];
window.opens = 0;
window.failures = 0;
function listen(source, onClosed) {
  window.source = source;
  source.onopen = () => { window.opens++; };
  source.onmessage = (event) => { window.seen.push({ id: event.lastEventId, text: event.data }); };
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) return;
    window.failures++;
    if (onClosed) onClosed();
  };
}
window.follow = (url) => listen(new EventSource(url));
window.followWithTokens = (channel) => {
  const connect = async () => {
    const token = await (await fetch('/token', { cache: 'no-store' })).text();
    const params = new URLSearchParams({ channel, access_token: token });
    const last = window.seen.at(-1);
    if (last !== undefined) params.set('since', last.id);
    listen(new EventSource('/events?' + params), connect);
  };
  return connect();
};
</script></body></html>`;

interface Seen {
  readonly id: string;
  readonly text: string;
}

declare global {
  interface Window {
    seen: Seen[];
    opens: number;
    failures: number;
    follow(url: string): void;
    followWithTokens(channel: string): Promise<void>;
  }
}

let db: TestDb;
let browser: Browser;
before(async () => {
  db = await createTestDb('auth_browser', { withTable: true });
  browser = await chromium.launch(CHROMIUM);
});
after(async () => {
  await browser?.close();
  await db?.drop();
});

// Each test reads a room of its own: a row of an earlier test cannot show up in a later one.
let rooms = 0;
function freshRoom(): string {
  return `room:${++rooms}`;
}

/** Inserts [channel, content] rows in one statement; their ids in order. */
async function insertRows(rows: [string, string][]): Promise<string[]> {
  const result = await db.query<{ insertId: number }>(
    'INSERT INTO msg (channel, content) VALUES ?',
    [rows],
  );
  return rows.map((_, i) => String(result.insertId + i));
}

function insertIn(channel: string, ...contents: string[]): Promise<string[]> {
  return insertRows(contents.map((content) => [channel, content]));
}

const nowS = () => Math.floor(Date.now() / 1000);

function token(claims: JWTPayload = {}): Promise<string> {
  return new SignJWT({ exp: nowS() + 3600, channels: ['room:*'], ...claims })
    .setProtectedHeader({ alg: 'HS256' })
    .sign(SECRET_BYTES);
}

/** Sets the rowcast_token cookie for the server's origin, as the application's login would. */
async function setCookie(context: BrowserContext, app: TestApp, jwt: string): Promise<void> {
  await context.addCookies([{ name: 'rowcast_token', value: jwt, url: app.url.origin }]);
}

/** Opens the test page at the server's origin (served by the test, not by rowcast). */
async function openPage(context: BrowserContext, app: TestApp): Promise<Page> {
  const page = await context.newPage();
  page.setDefaultTimeout(WITHIN_MS);
  const url = new URL(PAGE_PATH, app.url).href;
  await page.route(url, (route) => route.fulfill({ contentType: 'text/html', body: PAGE }));
  await page.goto(url);
  return page;
}

function seen(page: Page): Promise<Seen[]> {
  return page.evaluate(() => window.seen);
}

/** Waits until the page has got the rows with these ids. */
async function waitSeen(page: Page, ids: readonly string[]): Promise<void> {
  await waitUntil(
    async () => {
      const got = new Set((await seen(page)).map((row) => row.id));
      return ids.every((id) => got.has(id));
    },
    `rows ${ids.join(',')} on the page`,
    WITHIN_MS,
  );
}

async function pageValue(page: Page, name: 'opens' | 'failures'): Promise<number> {
  return page.evaluate((key) => window[key], name);
}

/** Waits until the server holds `n` streams in its hub (joined: replay written, if any). */
async function waitStreams(app: TestApp, n: number): Promise<void> {
  await waitUntil(() => app.app.hub.size === n, `${n} streams in the hub`, WITHIN_MS);
}

/** A gate a route handler waits at until the test opens it. */
function gate(): { wait: Promise<void>; open(): void } {
  let open = () => {};
  const wait = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { wait, open };
}

test('an EventSource page reads its channel with the rowcast_token cookie, and not without it', async () => {
  await withContext(browser, db.url, ENV, async (app, context) => {
    const room = freshRoom();
    const page = await openPage(context, app);
    // No cookie yet: refused (401), and EventSource gives up.
    await page.evaluate((url) => window.follow(url), `/events?channel=${room}`);
    await waitUntil(async () => (await pageValue(page, 'failures')) === 1, 'the refusal');
    assert.equal(await pageValue(page, 'opens'), 0);

    await setCookie(context, app, await token());
    await page.evaluate((url) => window.follow(url), `/events?channel=${room}`);
    await waitStreams(app, 1);
    // One statement: a neighbouring room's row first, so it would precede the page's rows.
    const [, a, b] = (await insertRows([
      ['room:other', 'not for this page'],
      [room, 'hello <b>cookie</b>'],
      [room, 'second'],
    ])) as [string, string, string];
    await waitSeen(page, [a, b]);
    assert.deepEqual(await seen(page), [
      { id: a, text: 'hello <b>cookie</b>' },
      { id: b, text: 'second' },
    ]);
    assert.equal(await pageValue(page, 'opens'), 1);
  });
});

test('an EventSource page reads its channel with ?access_token= in its URL', async () => {
  await withContext(browser, db.url, ENV, async (app, context) => {
    const room = freshRoom();
    const page = await openPage(context, app);
    const jwt = await token({ channels: [room] });
    await page.evaluate(
      ({ channel, jwt }) => window.follow(`/events?channel=${channel}&access_token=${jwt}`),
      { channel: room, jwt },
    );
    await waitStreams(app, 1);
    const [, a] = (await insertRows([
      ['room:other', 'not granted, not asked'],
      [room, 'by query'],
    ])) as [string, string];
    await waitSeen(page, [a]);
    assert.deepEqual(await seen(page), [{ id: a, text: 'by query' }]);
    assert.equal(await pageValue(page, 'failures'), 0);
  });
});

test('at expiry, EventSource reconnects with the refreshed cookie and Last-Event-ID: the rows of the gap arrive once', async () => {
  await withContext(browser, db.url, ENV, async (app, context) => {
    const room = freshRoom();
    await setCookie(context, app, await token({ exp: nowS() + 3 }));
    const page = await openPage(context, app);
    // The reconnect is held until the test has written the rows it must catch up on.
    const held = gate();
    const requests: Route[] = [];
    await page.route(
      (url) => url.pathname === '/events',
      async (route) => {
        requests.push(route);
        if (requests.length > 1) await held.wait;
        await route.continue();
      },
    );
    await page.evaluate((url) => window.follow(url), `/events?channel=${room}`);
    await waitStreams(app, 1);
    const before = await insertIn(room, 'before 1', 'before 2');
    await waitSeen(page, before);
    // The application refreshes the cookie; the open stream keeps the token it was opened with.
    const fresh = await token();
    await setCookie(context, app, fresh);

    await app.logs.waitFor('stream.expired', WITHIN_MS);
    await waitUntil(() => requests.length === 2, 'the reconnect', WITHIN_MS);
    const reconnect = await requests[1]?.request().allHeaders();
    assert.equal(reconnect?.cookie, `rowcast_token=${fresh}`, 'the refreshed cookie');
    const meanwhile = await insertIn(room, 'meanwhile 1', 'meanwhile 2');
    await db.waitMarked(meanwhile);
    held.open();

    await waitSeen(page, meanwhile);
    // The server resumed it from the last row the page got (Chromium adds Last-Event-ID past
    // the interception, so the server's log is where it shows).
    const replay = await app.logs.waitFor('stream.replay', WITHIN_MS);
    assert.equal(replay.since, before[1]);
    assert.equal(replay.rows, meanwhile.length);
    await waitStreams(app, 1);
    const live = await insertIn(room, 'live');
    await waitSeen(page, live);
    assert.deepEqual(
      (await seen(page)).map((row) => row.id),
      [...before, ...meanwhile, ...live],
    );
    assert.equal(await pageValue(page, 'opens'), 2);
    assert.equal(await pageValue(page, 'failures'), 0);
    assert.equal(requests.length, 2, 'one reconnect');
  });
});

test('at expiry, a page with ?access_token= fetches a fresh token and resumes: the rows of the gap arrive once', async () => {
  await withContext(browser, db.url, ENV, async (app, context) => {
    const room = freshRoom();
    const page = await openPage(context, app);
    // The application's token endpoint: a short token first, then (once the test has written
    // the rows of the gap) a long one.
    const held = gate();
    let asked = 0;
    await page.route(new URL('/token', app.url).href, async (route) => {
      asked++;
      const jwt = asked === 1 ? await token({ exp: nowS() + 3 }) : await token();
      if (asked > 1) await held.wait;
      await route.fulfill({ contentType: 'text/plain', body: jwt });
    });
    await page.evaluate((channel) => window.followWithTokens(channel), room);
    await waitStreams(app, 1);
    const before = await insertIn(room, 'before');
    await waitSeen(page, before);

    // The stream ends at exp. EventSource's own reconnects carry the same token: served (and
    // ended again within a second) while the server's 5 s clock tolerance lasts, then refused
    // (401), and the page asks for a new one.
    await app.logs.waitFor('stream.expired', WITHIN_MS);
    await waitUntil(() => asked === 2, 'the page to ask for a fresh token', WITHIN_MS);
    assert.equal(app.app.hub.size, 0, 'no stream open while the page waits for its token');
    const meanwhile = await insertIn(room, 'meanwhile 1', 'meanwhile 2');
    await db.waitMarked(meanwhile);
    held.open();

    await waitSeen(page, meanwhile);
    // Resumed (?since=) from the last row the page got.
    const replay = await waitUntil(
      () => app.logs.events('stream.replay').find((entry) => entry.rows === meanwhile.length),
      'the replay of the gap',
      WITHIN_MS,
    );
    assert.equal(replay.since, before[0]);
    await waitStreams(app, 1);
    const live = await insertIn(room, 'live');
    await waitSeen(page, live);
    assert.deepEqual(
      (await seen(page)).map((row) => row.id),
      [...before, ...meanwhile, ...live],
    );
    assert.equal(await pageValue(page, 'failures'), 1, 'one refusal, then the fresh token');
    assert.equal(asked, 2);
  });
});
