import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { SignJWT } from 'jose';
import mysql from 'mysql2/promise';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { startApp, type TestApp } from './helpers/app.js';
import { CHROMIUM, withContext } from './helpers/browser.js';
import { connectionOptions, createTestDb, type TestDb } from './helpers/db.js';
import { waitUntil } from './helpers/wait.js';

// The demo page at GET / (issue 5), as a user sees it in a real Chromium tab: live messages,
// resume after a restart, the DOM cap, the forever-frame fallback and the publish form; and its
// rooms (issue 10): /?channel=NAME, each room resuming from its own last row.

// Every Playwright wait. A row shows within one 50 ms tick, but an EventSource that lost its
// server retries every 2 s (the stream's `retry:`), and a slow CI machine must not fail the test.
const SHOWN_WITHIN_MS = 15_000;
const TOKEN = 'demo-secret-token';

let db: TestDb;
let browser: Browser;
before(async () => {
  db = await createTestDb('demo');
  browser = await chromium.launch(CHROMIUM);
});
after(async () => {
  await browser?.close();
  await db?.drop();
});

/** Starts a server with a publish token, gives `body` a fresh browser context, closes both. */
async function withDemo(
  env: Record<string, string>,
  body: (app: TestApp, context: BrowserContext) => Promise<void>,
): Promise<void> {
  await withContext(browser, db.url, { PUBLISH_TOKEN: TOKEN, ...env }, body);
}

/** Opens the demo page (`path` may carry a query) and waits until it says it is live. */
async function openDemo(context: BrowserContext, app: TestApp, path = '/'): Promise<Page> {
  const page = await context.newPage();
  page.setDefaultTimeout(SHOWN_WITHIN_MS);
  // The fallback's forever frame never finishes loading, and so neither does the page.
  await page.goto(new URL(path, app.url).href, { waitUntil: 'domcontentloaded' });
  await waitLive(page);
  return page;
}

async function waitLive(page: Page): Promise<void> {
  await page.locator('#state[data-state="live"]').waitFor();
}

/** The list as the reader sees it: each item's row id and text, top to bottom. */
function items(page: Page): Promise<{ id: string | undefined; text: string | null }[]> {
  return page.locator('#messages li').evaluateAll((els) =>
    els.map((el) => ({
      id: (el as HTMLElement).dataset.id,
      text: el.querySelector('.text')?.textContent ?? null,
    })),
  );
}

async function ids(page: Page): Promise<string[]> {
  return (await items(page)).map((item) => item.id as string);
}

/** Waits until the message with this row id is in the list. */
async function shown(page: Page, id: string): Promise<void> {
  await page.locator(`#messages li[data-id="${id}"]`).waitFor();
}

/** Waits until a message with exactly this text is in the list; returns its row id. */
async function shownText(page: Page, text: string): Promise<string> {
  const item = page.locator('#messages li').filter({
    has: page.locator('.text', { hasText: new RegExp(`^${escapeRegExp(text)}$`) }),
  });
  await item.first().waitFor();
  return (await item.first().getAttribute('data-id')) as string;
}

/** Waits until the message box is empty again, as it is after a 201. */
async function inputCleared(page: Page): Promise<void> {
  await page.waitForFunction(
    () => (document.getElementById('content') as HTMLTextAreaElement).value === '',
  );
}

async function rowsWith(content: string): Promise<number> {
  const rows = await db.query<{ n: number }[]>('SELECT COUNT(*) AS n FROM msg WHERE content = ?', [
    content,
  ]);
  return Number(rows[0]?.n);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

test('a message sent through the form shows in two tabs, once in each', async () => {
  await withDemo({}, async (app, context) => {
    const sender = await openDemo(context, app);
    const viewer = await openDemo(context, app);
    assert.equal(await sender.locator('#token-row').isVisible(), true, 'the token is asked for');

    const first = 'hello <b>both</b> & "you"';
    await sender.locator('#token').fill(TOKEN);
    await sender.locator('#content').fill(first);
    await sender.getByRole('button', { name: 'Send' }).click();
    await inputCleared(sender);
    const firstId = await shownText(viewer, first);
    await shown(sender, firstId);

    // The token was kept: the second message goes out with Enter and no question asked.
    assert.equal(await sender.locator('#token-row').isVisible(), false);
    const second = 'second line\nof the second message';
    await sender.locator('#content').fill(second);
    await sender.locator('#content').press('Enter');
    const secondId = await shownText(viewer, second);
    await shown(sender, secondId);

    const expected = [
      { id: firstId, text: first },
      { id: secondId, text: second },
    ];
    assert.deepEqual(await items(sender), expected);
    assert.deepEqual(await items(viewer), expected);
    assert.equal(await viewer.locator('#messages b').count(), 0, 'content is text, not markup');
    assert.equal(await rowsWith(first), 1);
    assert.equal(await rowsWith(second), 1);
  });
});

test('after a server restart the page shows exactly the rows inserted while it was down', async () => {
  const context = await browser.newContext();
  let app = await startApp(db.url, { PUBLISH_TOKEN: TOKEN });
  try {
    const port = app.url.port;
    const page = await openDemo(context, app);
    const before = await db.insert('before 1', 'before 2');
    await shown(page, before[1] as string);

    await app.close();
    await page.locator('#state:not([data-state="live"])').waitFor();
    // One row at a time, as separate publishers would while nobody streams.
    const down: string[] = [];
    for (const content of ['down 1', 'down 2', 'down 3']) down.push(...(await db.insert(content)));
    app = await startApp(db.url, { PUBLISH_TOKEN: TOKEN, PORT: port });

    await shown(page, down[2] as string);
    await waitLive(page);
    const [live] = (await db.insert('after restart')) as [string];
    await shown(page, live);
    assert.deepEqual(await items(page), [
      { id: before[0], text: 'before 1' },
      { id: before[1], text: 'before 2' },
      { id: down[0], text: 'down 1' },
      { id: down[1], text: 'down 2' },
      { id: down[2], text: 'down 3' },
      { id: live, text: 'after restart' },
    ]);
  } finally {
    await context.close();
    await app.close();
  }
});

test('with ?cap=20 the list keeps the newest 20 of 50 messages', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app, '/?cap=20');
    const rows = await db.insert(...Array.from({ length: 50 }, (_, i) => `row ${i + 1}`));
    await shown(page, rows[49] as string);
    assert.deepEqual(await ids(page), rows.slice(30));
    assert.equal(
      await page.locator('#messages li').first().locator('.text').textContent(),
      'row 31',
    );
  });
});

test('without EventSource the page reads a hidden forever frame and reloads it from the last id', async () => {
  await withDemo({}, async (app, context) => {
    await context.addInitScript(() => {
      delete (window as { EventSource?: unknown }).EventSource;
    });
    // Reloaded every 5 rows here, so 12 rows take it through at least two reloads.
    const page = await openDemo(context, app, '/?reload=5');
    assert.equal(await page.evaluate(() => typeof window.EventSource), 'undefined');
    const frame = page.locator('iframe');
    assert.equal(await frame.isHidden(), true);

    const rows: string[] = [];
    for (let i = 1; i <= 12; i++) {
      rows.push(...(await db.insert(`frame row ${i} <i>x</i>`)));
      if (i % 4 === 0) await shown(page, rows[i - 1] as string);
    }
    await shown(page, rows[11] as string);
    assert.match((await frame.getAttribute('src')) ?? '', /^\/stream\?since=\d+$/);
    const [last] = (await db.insert('after the reloads')) as [string];
    await shown(page, last);
    assert.deepEqual(await items(page), [
      ...rows.map((id, i) => ({ id, text: `frame row ${i + 1} <i>x</i>` })),
      { id: last, text: 'after the reloads' },
    ]);
  });
});

test('a wrong token is asked for again and publishes nothing', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app);
    const text = 'sent with a wrong token';
    await page.locator('#token').fill('not-the-token');
    await page.locator('#content').fill(text);
    await page.getByRole('button', { name: 'Send' }).click();

    await page
      .getByRole('alert')
      .filter({ hasText: /wrong publish token/i })
      .waitFor();
    await page.locator('#token').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#token').inputValue(), '');
    assert.equal(await page.locator('#content').inputValue(), text, 'the message is kept');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('rowcast.token')), null);
    assert.equal(await rowsWith(text), 0);

    await page.locator('#token').fill(TOKEN);
    await page.getByRole('button', { name: 'Send' }).click();
    const id = await shownText(page, text);
    assert.equal(await page.getByRole('alert').isVisible(), false);
    assert.deepEqual(await items(page), [{ id, text }]);
    assert.equal(await rowsWith(text), 1);
  });
});

test('a 503 leaves EventSource closed: the page starts over with ?since= after a pause', async () => {
  const context = await browser.newContext();
  let app = await startApp(db.url, { PUBLISH_TOKEN: TOKEN });
  try {
    const port = app.url.port;
    const page = await openDemo(context, app);
    const [first] = (await db.insert('seen before the 503')) as [string];
    await shown(page, first);

    // What an overloaded or stopping server answers; EventSource does not retry after it.
    const refused: string[] = [];
    await page.route('**/events*', (route) => {
      refused.push(new URL(route.request().url()).search);
      return route.fulfill({ status: 503, headers: { 'Retry-After': '5' }, body: 'full\n' });
    });
    await app.close();
    const missed = await db.insert('missed 1', 'missed 2');
    app = await startApp(db.url, { PUBLISH_TOKEN: TOKEN, PORT: port });
    // The page's own retry, not the browser's, asks again: the request carries ?since=.
    await waitUntil(() => refused.includes(`?since=${first}`), 'a retry with ?since=');
    await page.locator('#state:is([data-state="reconnecting"], [data-state="offline"])').waitFor();
    await page.unroute('**/events*');

    await shown(page, missed[1] as string);
    await waitLive(page);
    assert.deepEqual(await items(page), [
      { id: first, text: 'seen before the 503' },
      { id: missed[0], text: 'missed 1' },
      { id: missed[1], text: 'missed 2' },
    ]);
  } finally {
    await context.close();
    await app.close();
  }
});

test('a tab that comes back to the page gets the rows it missed, from sessionStorage', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app);
    const [seen] = (await db.insert('seen')) as [string];
    await shown(page, seen);
    await page.goto('about:blank');
    const missed = await db.insert('missed while away 1', 'missed while away 2');
    await db.waitMarked(missed);

    await page.goto(app.url.href, { waitUntil: 'domcontentloaded' });
    await shown(page, missed[1] as string);
    assert.deepEqual(await items(page), [
      { id: missed[0], text: 'missed while away 1' },
      { id: missed[1], text: 'missed while away 2' },
    ]);
  });
});

test('rows delivered out of id order: the page resumes after the last one it received', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app);
    // A writer whose transaction is still open holds the smaller id; a faster one commits the
    // next id, which is claimed first (docs/delivery.md 2: seq order, not id order).
    const slow = await mysql.createConnection({ ...connectionOptions(), database: db.name });
    let slowId: string;
    try {
      await slow.beginTransaction();
      const [result] = await slow.query('INSERT INTO msg (content) VALUES (?)', ['slow writer']);
      slowId = String((result as { insertId: number }).insertId);
      const [fastId] = (await db.insert('fast writer')) as [string];
      assert.ok(BigInt(fastId) > BigInt(slowId));
      await shown(page, fastId);
      await slow.commit();
      await shown(page, slowId);
      assert.deepEqual(await items(page), [
        { id: fastId, text: 'fast writer' },
        { id: slowId, text: 'slow writer' },
      ]);
    } finally {
      await slow.end();
    }

    await page.goto('about:blank');
    const [away] = (await db.insert('while away')) as [string];
    await db.waitMarked([away]);
    await page.goto(app.url.href, { waitUntil: 'domcontentloaded' });
    await shown(page, away);
    // Resumed after the slow writer's row, the last received, not after the largest id (which
    // would bring the slow writer's row back as if it had been missed).
    assert.deepEqual(await items(page), [{ id: away, text: 'while away' }]);
  });
});

test('a tab back after more than REPLAY_LIMIT rows says older ones are missing, either way in', async () => {
  await withDemo({ REPLAY_LIMIT: '2' }, async (app) => {
    for (const way of ['EventSource', 'forever frame'] as const) {
      // A context of its own each: sessionStorage (the last id) is not shared.
      const tab = await browser.newContext();
      try {
        if (way === 'forever frame') {
          await tab.addInitScript(() => {
            delete (window as { EventSource?: unknown }).EventSource;
          });
        }
        const page = await openDemo(tab, app);
        const [seen] = (await db.insert(`seen (${way})`)) as [string];
        await shown(page, seen);
        assert.equal(await page.locator('#gap').isVisible(), false, `${way}: no gap while live`);
        await page.goto('about:blank');
        const missed = await db.insert(...[1, 2, 3, 4, 5].map((n) => `missed ${n} (${way})`));
        await db.waitMarked(missed);

        await page.goto(app.url.href, { waitUntil: 'domcontentloaded' });
        await shown(page, missed[4] as string);
        // docs/delivery.md 4: the newest REPLAY_LIMIT rows, after the word that some are missing.
        await page.locator('#gap[data-reason="limit"]').waitFor();
        assert.match((await page.locator('#gap').textContent()) ?? '', /older ones are not shown/);
        assert.deepEqual(await items(page), [
          { id: missed[3], text: `missed 4 (${way})` },
          { id: missed[4], text: `missed 5 (${way})` },
        ]);
        const [live] = (await db.insert(`live (${way})`)) as [string];
        await shown(page, live);
        assert.deepEqual((await ids(page)).slice(-1), [live], way);
      } finally {
        await tab.close();
      }
    }
  });
});

test('the list follows new messages only while the reader is at the bottom', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app);
    const rows = await db.insert(...Array.from({ length: 40 }, (_, i) => `line ${i + 1}`));
    await shown(page, rows[39] as string);
    assert.equal(await inView(page, rows[39] as string), true, 'followed to the newest');

    await page.locator('#log').evaluate((log) => {
      log.scrollTop = 0;
    });
    const [late] = (await db.insert('while scrolled up')) as [string];
    await shown(page, late);
    await page.getByRole('button', { name: /new messages/i }).waitFor();
    assert.equal(await inView(page, rows[0] as string), true, 'the reader keeps their place');
    assert.equal(await inView(page, late), false);

    await page.getByRole('button', { name: /new messages/i }).click();
    await waitUntil(() => inView(page, late), 'the newest message in view');
    await page.getByRole('button', { name: /new messages/i }).waitFor({ state: 'hidden' });
  });
});

/** Whether the whole item is inside the visible part of the list. */
function inView(page: Page, id: string): Promise<boolean> {
  return page.evaluate((id) => {
    const log = document.getElementById('log') as HTMLElement;
    const item = document.querySelector(`#messages li[data-id="${id}"]`) as HTMLElement;
    const box = item.getBoundingClientRect();
    const view = log.getBoundingClientRect();
    return box.top >= view.top && box.bottom <= view.bottom;
  }, id);
}

// ---- rooms (issue 10) ----

/** Inserts rows into `msg`, each [channel, content], in one statement; returns their ids in order. */
async function insertIn(...rows: [channel: string, content: string][]): Promise<string[]> {
  const result = await db.query<{ insertId: number }>(
    'INSERT INTO msg (channel, content) VALUES ?',
    [rows],
  );
  return rows.map((_, i) => String(result.insertId + i));
}

async function channelOf(id: string): Promise<string | undefined> {
  const rows = await db.query<{ channel: string }[]>('SELECT channel FROM msg WHERE id = ?', [id]);
  return rows[0]?.channel;
}

/** Sends `text` through the page's form (giving the token when it is asked for); waits for the 201. */
async function send(page: Page, text: string): Promise<void> {
  if (await page.locator('#token-row').isVisible()) await page.locator('#token').fill(TOKEN);
  await page.locator('#content').fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
  await inputCleared(page);
}

/** Switches the tab to room `name` with the page's room control and waits until it is live. */
async function openRoom(page: Page, name: string): Promise<void> {
  await page.locator('#room-name').fill(name);
  await page.getByRole('button', { name: 'Open room' }).click();
  await page.waitForURL((url) => url.searchParams.get('channel') === name, {
    waitUntil: 'domcontentloaded',
  });
  await waitLive(page);
}

/** Records the URL of every EventSource the pages of `context` open, in `window.streams`. */
async function recordStreams(context: BrowserContext): Promise<void> {
  await context.addInitScript(() => {
    const Native = window.EventSource;
    const streams: string[] = [];
    (window as unknown as { streams: string[] }).streams = streams;
    window.EventSource = class extends Native {
      constructor(url: string | URL, init?: EventSourceInit) {
        super(url, init);
        streams.push(String(url));
      }
    };
  });
}

function streams(page: Page): Promise<string[]> {
  return page.evaluate(() => (window as unknown as { streams: string[] }).streams);
}

test('rooms: a message sent in room A shows in A’s tab only, once; the all-messages tab shows both', async () => {
  await withDemo({}, async (app, context) => {
    await recordStreams(context);
    const roomA = await openDemo(context, app, '/?channel=room-a');
    const roomB = await openDemo(context, app, '/?channel=room-b');
    const all = await openDemo(context, app);
    assert.equal(await roomA.locator('#room').textContent(), 'Room room-a');
    assert.equal(await roomB.locator('#room').textContent(), 'Room room-b');
    assert.equal(await all.locator('#room').textContent(), 'All messages');
    assert.deepEqual(await streams(roomA), ['/events?channel=room-a']);
    assert.deepEqual(await streams(all), ['/events']);

    await send(roomA, 'for room A');
    const forA = await shownText(roomA, 'for room A');
    await shown(all, forA);
    await send(roomB, 'for room B');
    const forB = await shownText(roomB, 'for room B');
    await shown(all, forB);
    // Rows reach every tab in delivery order: once a tab shows a later row of its own room, it
    // would have shown the other room's earlier row already, had it been sent to it.
    await send(roomA, 'room A again');
    const againA = await shownText(roomA, 'room A again');
    const [againB] = (await insertIn(['room-b', 'room B again'])) as [string];
    await shown(roomB, againB);
    await shown(all, againB);

    assert.deepEqual(await items(roomA), [
      { id: forA, text: 'for room A' },
      { id: againA, text: 'room A again' },
    ]);
    assert.deepEqual(await items(roomB), [
      { id: forB, text: 'for room B' },
      { id: againB, text: 'room B again' },
    ]);
    assert.deepEqual(await ids(all), [forA, forB, againA, againB]);
    assert.equal(await channelOf(forA), 'room-a', 'the form publishes into its room');
    assert.equal(await channelOf(forB), 'room-b');

    // The all-messages tab publishes into no room: its row shows there, in neither room.
    await send(all, 'for nobody in particular');
    const general = await shownText(all, 'for nobody in particular');
    assert.equal(await channelOf(general), '');
    const [lastA, lastB] = (await insertIn(['room-a', 'last A'], ['room-b', 'last B'])) as [
      string,
      string,
    ];
    await shown(roomA, lastA);
    await shown(roomB, lastB);
    assert.deepEqual(await ids(roomA), [forA, againA, lastA]);
    assert.deepEqual(await ids(roomB), [forB, againB, lastB]);
  });
});

test('switching a tab from room A to B and back resumes each room with exactly the rows it missed', async () => {
  await withDemo({}, async (app, context) => {
    const page = await openDemo(context, app, '/?channel=switch-a');
    const [a1] = (await insertIn(['switch-a', 'a1'])) as [string];
    await shown(page, a1);

    await openRoom(page, 'switch-b');
    assert.equal(await page.locator('#room').textContent(), 'Room switch-b');
    const [a2, b1, a3] = (await insertIn(
      ['switch-a', 'a2'],
      ['switch-b', 'b1'],
      ['switch-a', 'a3'],
    )) as [string, string, string];
    await shown(page, b1);
    // Delivered (and so missed by room A's tab) while the tab was in room B.
    await db.waitMarked([a2, b1, a3]);
    assert.deepEqual(await items(page), [{ id: b1, text: 'b1' }]);

    await openRoom(page, 'switch-a');
    await shown(page, a3);
    const [b2, a4] = (await insertIn(['switch-b', 'b2'], ['switch-a', 'a4'])) as [string, string];
    await shown(page, a4);
    // Not a1 again, nor b1; nothing of room A lost.
    assert.deepEqual(await items(page), [
      { id: a2, text: 'a2' },
      { id: a3, text: 'a3' },
      { id: a4, text: 'a4' },
    ]);
    assert.equal(await page.locator('#gap').isVisible(), false, 'an exact resume');

    // Room B resumes after b1, its own last row, not after room A's a4.
    await openRoom(page, 'switch-b');
    await shown(page, b2);
    const [b3] = (await insertIn(['switch-b', 'b3'])) as [string];
    await shown(page, b3);
    assert.deepEqual(await items(page), [
      { id: b2, text: 'b2' },
      { id: b3, text: 'b3' },
    ]);

    // The link back to every row: live rows of any room.
    await page.getByRole('link', { name: 'All messages' }).click();
    await page.waitForURL((url) => !url.searchParams.has('channel'), {
      waitUntil: 'domcontentloaded',
    });
    await waitLive(page);
    assert.equal(await page.locator('#room').textContent(), 'All messages');
    const anyRoom = await insertIn(['switch-a', 'a5'], ['switch-b', 'b4'], ['', 'no room']);
    await shown(page, anyRoom[2] as string);
    assert.deepEqual(await ids(page), anyRoom);
  });
});

test('a room without EventSource: the forever frame asks for the room and shows its rows only', async () => {
  await withDemo({}, async (app, context) => {
    await context.addInitScript(() => {
      delete (window as { EventSource?: unknown }).EventSource;
    });
    // Reloaded every 2 rows, so the room's 5 rows take it through reloads with ?since=.
    const page = await openDemo(context, app, '/?channel=frame-room&reload=2');
    const rows = await insertIn(
      ['frame-room', 'f1'],
      ['elsewhere', 'x1'],
      ['frame-room', 'f2'],
      ['frame-room', 'f3'],
      ['', 'x2'],
      ['frame-room', 'f4'],
      ['frame-room-2', 'x3'],
      ['frame-room', 'f5'],
    );
    const mine = rows.filter((_, i) => ![1, 4, 6].includes(i));
    await shown(page, mine[4] as string);
    assert.match(
      (await page.locator('iframe').getAttribute('src')) ?? '',
      /^\/stream\?channel=frame-room&since=\d+$/,
    );
    const [other, last] = (await insertIn(['elsewhere', 'x4'], ['frame-room', 'f6'])) as [
      string,
      string,
    ];
    await shown(page, last);
    assert.deepEqual(await ids(page), [...mine, last]);
    assert.equal(await page.locator(`#messages li[data-id="${other}"]`).count(), 0);
  });
});

test('a room name that is not a channel name shows a message, and no stream', async () => {
  await withDemo({}, async (app, context) => {
    await recordStreams(context);
    for (const query of [
      `?channel=${encodeURIComponent('bad room')}`,
      `?channel=${encodeURIComponent('news*')}`,
      '?channel=',
      `?channel=${'x'.repeat(192)}`,
      '?channel=one&channel=two',
    ]) {
      const page = await context.newPage();
      page.setDefaultTimeout(SHOWN_WITHIN_MS);
      await page.goto(new URL(`/${query}`, app.url).href, { waitUntil: 'domcontentloaded' });
      const notice = page
        .getByRole('alert')
        .filter({ hasText: /not a room name|one room at a time/ });
      await notice.waitFor();
      await page.locator('#state[data-state="stopped"]').waitFor();
      assert.deepEqual(await streams(page), [], `${query}: no EventSource`);
      assert.equal(await page.locator('iframe').count(), 0, `${query}: no frame`);
      assert.equal(await page.getByRole('button', { name: 'Send' }).isDisabled(), true, query);
      assert.equal(await page.locator('#empty').isVisible(), false, query);
      await page.close();
    }

    const page = await context.newPage();
    page.setDefaultTimeout(SHOWN_WITHIN_MS);
    await page.goto(new URL('/?channel=bad%20room', app.url).href, {
      waitUntil: 'domcontentloaded',
    });
    assert.match(
      (await page.getByRole('alert').textContent()) ?? '',
      /“bad room” is not a room name/,
    );
    // The way out: the link to every row.
    await page.getByRole('link', { name: 'All messages' }).click();
    await page.waitForURL((url) => !url.searchParams.has('channel'), {
      waitUntil: 'domcontentloaded',
    });
    await waitLive(page);
    const [row] = (await db.insert('after a bad room')) as [string];
    await shown(page, row);
  });
});

test('with subscriber authorization the page passes ?access_token= of its URL on to the stream', async () => {
  const key = 'a-subscriber-key-of-at-least-32-bytes!!';
  await withDemo({ SUBSCRIBER_JWT_KEY: key }, async (app, context) => {
    const token = await new SignJWT({ channels: ['private-room'] })
      .setProtectedHeader({ alg: 'HS256' })
      .setExpirationTime('10m')
      .sign(new TextEncoder().encode(key));
    // Without a token the stream is refused (401): the page keeps retrying.
    const refused = await context.newPage();
    refused.setDefaultTimeout(SHOWN_WITHIN_MS);
    await refused.goto(new URL('/?channel=private-room', app.url).href, {
      waitUntil: 'domcontentloaded',
    });
    await refused
      .locator('#state:is([data-state="reconnecting"], [data-state="offline"])')
      .waitFor();
    await refused.close();

    const page = await openDemo(context, app, `/?channel=private-room&access_token=${token}`);
    const [row] = (await insertIn(['private-room', 'for the token holder'])) as [string];
    await shown(page, row);
    assert.deepEqual(await items(page), [{ id: row, text: 'for the token holder' }]);
  });
});
